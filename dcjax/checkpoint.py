"""Artifacts on disk: atomic writes for every file, Orbax for resumable state.

Every artifact is written to a temporary file in the same directory and renamed into
place, so a run killed mid-write leaves either the old file or the new one, never half.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Writes ``data`` to ``path`` via a temp file + rename in the same directory."""
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
    (np.savez_compressed if compressed else np.savez)(buffer, **{k: np.asarray(v) for k, v in arrays.items()})
    atomic_write_bytes(path, buffer.getvalue())


class Checkpointer:
    """Keeps the latest few Orbax checkpoints of a pytree under ``directory``.

    Saves are synchronous: a checkpoint reported as saved is complete on disk, which is
    what a resume after a kill needs.
    """

    def __init__(self, directory: str, max_to_keep: int = 2):
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                               enable_async_checkpointing=False)
        self._manager = ocp.CheckpointManager(os.path.abspath(directory), options=options)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, tree: Any) -> None:
        self._manager.save(step, args=ocp.args.StandardSave(tree), force=True)
        self._manager.wait_until_finished()

    def restore(self, step: int, like: Any) -> Any:
        """Restores into the structure (and dtypes/shapes) of ``like``."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))

    def close(self) -> None:
        self._manager.close()
