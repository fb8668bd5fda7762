"""Artifacts on disk: atomic writes for every file, Orbax for resumable state.

Every artifact is written to a temporary file in the same directory and renamed into
place, so a run killed mid-write leaves either the old file or the new one, never half.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from dcjax import errors
from dcjax import interrupt


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Writes ``data`` to ``path`` via a temp file + rename in the same directory.

    A full disk or a read-only directory raises ``errors.WriteError`` (one line: the path and what the errno
    means), with no temporary file left; a Ctrl-C waits for the rename (``interrupt.critical``).
    """
    with interrupt.critical():
        try:
            _write_and_rename(path, data)
        except OSError as e:
            if errors.is_environment(e):
                raise errors.write_error(path, e) from None
            raise


def _write_and_rename(path: str, data: bytes) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-" + os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates 0600; a result file should get the usual permissions (umask).
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _to_jsonable(obj: Any):
    if isinstance(obj, (np.ndarray, jax.Array)):
        return np.asarray(obj).tolist()
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def to_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, default=_to_jsonable)


def write_json(path: str, obj: Any) -> None:
    atomic_write_bytes(path, (to_json(obj) + "\n").encode())


def read_json(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


def write_jsonl(path: str, records: list[dict]) -> None:
    """Rewrites a whole JSON-lines file atomically (records are few: one per iteration)."""
    lines = "".join(json.dumps(r, sort_keys=True, default=_to_jsonable) + "\n" for r in records)
    atomic_write_bytes(path, lines.encode())


def read_jsonl(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def write_npz(path: str, compressed: bool = False, **arrays) -> None:
    """Writes arrays as one .npz atomically (``compressed``: zip-deflated, for exports kept in git)."""
    buffer = io.BytesIO()
    save: Any = np.savez_compressed if compressed else np.savez
    save(buffer, **{k: np.asarray(v) for k, v in arrays.items()})
    atomic_write_bytes(path, buffer.getvalue())


UNREADABLE_SUFFIX = ".unreadable"  # Not a step name, so Orbax no longer sees the directory.


class CheckpointError(errors.UserError, ValueError):
    """A checkpoint that cannot be read back; the one-line message says what to do."""


def _reason(error: Exception) -> str:
    """The first line of an Orbax/TensorStore error (they append multi-line specs), shortened."""
    lines = str(error).strip().splitlines() or [type(error).__name__]
    line = lines[0]
    return line if len(line) <= 160 else line[:157] + "..."


def _environment_cause(error: BaseException) -> OSError | None:
    """The disk-or-permission OSError behind ``error`` (itself, a chained cause, or one named by its message)."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and errors.is_environment(seen):
            return seen
        seen = seen.__cause__ or seen.__context__
    text = str(error)
    for code in sorted(errors.ENVIRONMENT_ERRNOS):
        if os.strerror(code) in text:
            return OSError(code, os.strerror(code))
    return None


class Checkpointer:
    """Keeps the latest few Orbax checkpoints of a pytree under ``directory``.

    Saves are synchronous: a checkpoint reported as saved is complete on disk, which is
    what a resume after a kill needs. Orbax writes each step to a temporary directory and
    renames it into place, so a kill mid-save leaves only that temporary directory, which
    the next Checkpointer on the directory deletes (it is never a step).
    """

    def __init__(self, directory: str, max_to_keep: int = 2):
        self._options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, enable_async_checkpointing=False, cleanup_tmp_directories=True
        )
        self._directory = os.path.abspath(directory)
        self._manager = ocp.CheckpointManager(self._directory, options=self._options)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def step_directory(self, step: int) -> str:
        return os.path.join(self._directory, str(step))

    def save(self, step: int, tree: Any) -> None:
        """Saves ``step`` whole; a Ctrl-C waits for it. A full disk or a read-only directory raises
        ``errors.WriteError`` naming the directory (Orbax leaves only its temporary directory, removed on the
        next start), and the run resumes from the previous step once the cause is fixed."""
        with interrupt.critical():
            try:
                self._manager.save(step, args=ocp.args.StandardSave(tree), force=True)
                self._manager.wait_until_finished()
            except Exception as e:  # Orbax and TensorStore wrap the OSError, or only keep its words.
                cause = _environment_cause(e)
                if cause is None:
                    raise
                raise errors.write_error(self.step_directory(step), cause) from e

    def restore(self, step: int, like: Any) -> Any:
        """Restores into the structure (and dtypes/shapes) of ``like``."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))

    def restore_latest(self, like: Any) -> tuple[int | None, Any]:
        """(step, tree) of the newest checkpoint that reads back; (None, None) if there is none.

        A newer checkpoint that does not read back (files deleted or truncated by a crash, a
        full disk or an interrupted copy) is renamed ``<step>.unreadable``, with a warning, and
        the previous one is used: for a run whose state is a function of its step (every
        resumable run here) that costs only the iterations in between. When no checkpoint
        reads back nothing is renamed and CheckpointError says what to do.
        """
        failures = []
        for step in sorted(self._manager.all_steps(), reverse=True):
            try:
                tree = self.restore(step, like)
            except Exception as e:  # Orbax and TensorStore raise many types for one cause: bad files.
                failures.append((step, _reason(e)))
                # A failed restore can leave the manager with a wrong idea of the items on
                # disk (a step missing its item looks like a multi-item one); start afresh.
                self._manager.close()
                self._manager = ocp.CheckpointManager(self._directory, options=self._options)
                continue
            for bad, reason in failures:
                self._set_aside(bad, reason, step)
            return step, tree
        if failures:
            bad, reason = failures[0]
            raise CheckpointError(
                f"checkpoint {self.step_directory(bad)} is unreadable ({reason}) and no older one "
                f"reads back; delete {self._directory} to start the run over, or pass --overwrite"
            )
        return None, None

    def _set_aside(self, step: int, reason: str, fallback: int) -> None:
        """Moves an unreadable step out of Orbax's sight (kept for inspection) and forgets it."""
        path = self.step_directory(step)
        logging.warning(
            "checkpoint %s is unreadable (%s); resuming from step %d instead and keeping it as %s",
            path,
            reason,
            fallback,
            path + UNREADABLE_SUFFIX,
        )
        if jax.process_index() == 0:  # One process renames; on a shared disk the others see it.
            if os.path.isdir(path + UNREADABLE_SUFFIX):
                shutil.rmtree(path + UNREADABLE_SUFFIX)  # An older unreadable copy of the same step.
            os.replace(path, path + UNREADABLE_SUFFIX)
        self._manager.reload()

    def close(self) -> None:
        self._manager.close()
