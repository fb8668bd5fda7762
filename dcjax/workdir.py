"""Run directories: refuse to clobber finished results, resume unfinished ones.

A workdir holds ``config.json`` (the exact settings) and, once the run is complete,
``results.json``. Rules:

* finished (results.json present): error unless ``overwrite``;
* unfinished with the same config: resume;
* unfinished with a different config: error unless ``overwrite`` (resuming would mix runs);
* ``overwrite``: the directory's contents are deleted first;
* one run at a time: ``hold`` locks the workdir (``.lock``, an flock the kernel drops when its process dies, so
  a killed run never blocks the next; the file holds the PID for the message); ``check_usable`` and ``precheck``
  run before any data loads;
* a run made of self-checking parts (``parts_checked``, the privacy study's rows) whose
  settings changed resumes even when finished: its finished parts that still match are
  reused, and the old results.json is kept as ``results.previous.json``.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import socket
from typing import Any

from dcjax import checkpoint
from dcjax import errors

CONFIG = "config.json"
LOCK = ".lock"
RESULTS = "results.json"
PREVIOUS_RESULTS = "results.previous.json"

# Settings added after results were first recorded, with the value that reproduces the earlier behaviour exactly
# (condensation method and DSA ops, DP-SGD in training, the privacy study's DP and DM rows' settings, the attack's
# population and RMIA settings, the DP rows' own batch size and epochs, the matmul precision, a DP-SGD training's stop
# at a checkpoint, the study's fixed-noise DP rows and their checkpoints, the study's ladder, Shokri-from-the-bank's
# sample). A recorded config that lacks one of them still matches a new config holding exactly that value, so adding
# a setting does not orphan finished runs; any other value differs.
ADDED_SETTINGS: dict[str, Any] = {
    "method": "dc",
    "dsa_strategy": "color_crop_cutout_scale_rotate",
    "dp": None,
    "dp_delta": 1e-5,
    "dp_clip": 1.0,
    "dp_lr": None,
    "dm_iterations": 20000,
    "num_population": 0,
    # RMIA's tie-break is the one exception to "reproduces exactly": it only changes how an export is scored,
    # and results of an older schema (as every run before it) are re-scored from their export, bank kept.
    "rmia": {"a": 0.3, "gamma": 1.0, "online": True, "tie_break": True},
    "tie_break": True,
    "dp_batch_size": None,
    "dp_epochs": None,
    "precision": "fp32",
    "stop_epochs": None,
    "dp_noise": [],
    "dp_checkpoints": [],
    "ladder": [],  # The privacy study's ladder (as JSON): none, one point per row.
    "shokri_sample": 2000,
}


class WorkdirError(errors.UserError):
    """A one-line, user-facing problem with the run directory."""


def prepare(workdir: str, config: dict, overwrite: bool, parts_checked: bool = False) -> bool:
    """Makes ``workdir`` ready for a run with ``config``; returns True when resuming.

    ``parts_checked``: the run is made of sub-runs in sub-directories that each check their
    own config (the privacy study's rows), so a run whose settings changed, finished or not,
    keeps its parts that still match; config.json is updated to the new settings.
    """
    check_usable(workdir)
    if overwrite and os.path.isdir(workdir):
        _clear(workdir)
    config_path = os.path.join(workdir, CONFIG)
    resuming = os.path.exists(config_path)
    changed = resuming and not config_matches(workdir, config)
    if os.path.exists(os.path.join(workdir, RESULTS)):
        if not (changed and parts_checked):
            raise WorkdirError(
                f"{workdir} already holds finished results; pass --overwrite to "
                "replace them or choose another --workdir"
            )
        os.replace(os.path.join(workdir, RESULTS), os.path.join(workdir, PREVIOUS_RESULTS))
    if changed and parts_checked:
        checkpoint.write_json(config_path, config)
    elif changed:
        raise WorkdirError(
            f"{workdir} holds an unfinished run with different settings ({config_path} "
            f"differs at {first_difference(config, read_config(workdir))}); pass "
            "--overwrite to discard it or choose another --workdir"
        )
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as e:
        raise errors.write_error(workdir, e) from None
    if not resuming:
        checkpoint.write_json(config_path, config)
    return resuming


def _clear(workdir: str) -> None:
    """Deletes everything in ``workdir`` but its lock (held by this run: deleting it would let a second run in)."""
    for name in os.listdir(workdir):
        entry = os.path.join(workdir, name)
        if name == LOCK:
            continue
        if os.path.isdir(entry) and not os.path.islink(entry):
            shutil.rmtree(entry)
        else:
            os.remove(entry)


def check_usable(workdir: str) -> None:
    """What needs no data: ``workdir`` is named, is not a file, and it (or the directory to create it in) is
    writable. WorkdirError or WriteError, one line."""
    if not workdir:
        raise WorkdirError("--workdir must be set")
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise WorkdirError(f"--workdir {workdir} exists and is not a directory")
    existing = os.path.abspath(workdir)
    while not os.path.isdir(existing):  # The nearest existing ancestor is where the first write lands.
        if os.path.exists(existing):
            raise WorkdirError(f"--workdir {workdir}: {existing} is a file, so the directory cannot be created")
        existing = os.path.dirname(existing)
    if not os.access(existing, os.W_OK | os.X_OK):
        code = errno.EROFS if _read_only(existing) else errno.EACCES
        raise errors.write_error(workdir, PermissionError(code, os.strerror(code), existing))


def _read_only(path: str) -> bool:
    """Whether ``path`` lies on a file system mounted read-only."""
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def precheck(workdir: str, overwrite: bool, config: dict | None = None, parts_checked: bool = False) -> None:
    """`prepare`'s refusals that need no data, made before the data loads; writes nothing.

    Refuses finished results without ``overwrite`` (unless ``parts_checked``) and, given ``config``, an unfinished
    run with other settings.
    """
    check_usable(workdir)
    if overwrite or parts_checked:
        return
    if os.path.exists(os.path.join(workdir, RESULTS)):
        raise WorkdirError(
            f"{workdir} already holds finished results; pass --overwrite to replace them or choose another --workdir"
        )
    if config is not None and os.path.exists(os.path.join(workdir, CONFIG)) and not config_matches(workdir, config):
        raise WorkdirError(
            f"{workdir} holds an unfinished run with different settings ({os.path.join(workdir, CONFIG)} "
            f"differs at {first_difference(config, read_config(workdir))}); pass "
            "--overwrite to discard it or choose another --workdir"
        )


class WorkdirBusy(WorkdirError):
    """Another live process holds the workdir's lock."""


_held: dict[str, tuple[int, bool]] = {}  # Absolute workdir -> (lock file descriptor, whether we created the dir).


def hold(workdir: str) -> None:
    """Locks ``workdir`` for this process (creating it if needed) or raises WorkdirBusy naming the holder's PID.

    The lock is an ``flock`` on ``<workdir>/.lock``: the kernel drops it when the holder exits or is killed, so a
    lock file left by a killed run is simply taken over (no stale lock can block). `release` undoes it all,
    including the directory if this call created it and the run wrote nothing.
    """
    check_usable(workdir)
    key = os.path.abspath(workdir)
    if key in _held:
        return
    created = not os.path.isdir(key)
    try:
        os.makedirs(key, exist_ok=True)
        fd = _lock(workdir, os.path.join(key, LOCK))
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
    except OSError as e:
        if created:
            _remove_if_empty(key)
        if errors.is_environment(e):
            raise errors.write_error(workdir, e) from None
        raise
    _held[key] = (fd, created)


def _lock(workdir: str, path: str) -> int:
    """An open, flocked descriptor of the lock file ``path``; WorkdirBusy when another process holds it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").split() or ["unknown"]
            os.close(fd)
            where = f" on {holder[1]}" if len(holder) > 1 and holder[1] != socket.gethostname() else ""
            raise WorkdirBusy(
                f"{workdir} is in use by another run (PID {holder[0]}{where}); wait for it to finish or stop it, "
                "or choose another --workdir"
            ) from None
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)  # The holder released (and unlinked) it while we were locking: lock the new file instead.


def release(workdir: str | None = None) -> None:
    """Unlocks ``workdir`` (None: every workdir this process holds); removes a directory `hold` created if the
    run left nothing in it, so a refused run leaves nothing behind."""
    for key in [os.path.abspath(workdir)] if workdir else list(_held):
        fd, created = _held.pop(key, (None, False))
        if fd is None:
            continue
        try:
            os.remove(os.path.join(key, LOCK))  # Still holding the flock: no other run can be between.
        except OSError:
            pass
        os.close(fd)
        if created:
            _remove_if_empty(key)


def _remove_if_empty(directory: str) -> None:
    try:
        os.rmdir(directory)
    except OSError:
        pass


def read_config(workdir: str):
    """``workdir``'s config.json as recorded; WorkdirError (one line, naming the file) if it does not parse."""
    config_path = os.path.join(workdir, CONFIG)
    try:
        return checkpoint.read_json(config_path)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        detail = " ".join(str(e).split())
        raise WorkdirError(
            f"{config_path} is not readable JSON ({type(e).__name__}: {detail}); restore it, "
            "pass --overwrite to discard the run, or choose another --workdir"
        ) from None


def config_matches(workdir: str, config: dict) -> bool:
    """Whether ``workdir``'s config.json records ``config`` (compared as JSON, up to ``ADDED_SETTINGS``)."""
    recorded = read_config(workdir)
    return recorded == _without_added_defaults(as_json(config), recorded)


def first_difference(config: dict, recorded) -> str:
    """The first setting (dotted key, e.g. 'condense.ipc') where ``config`` and the ``recorded`` JSON differ."""
    ours, theirs = _without_added_defaults(as_json(config), recorded), recorded
    key = ""
    while isinstance(ours, dict) and isinstance(theirs, dict):
        names = sorted(set(ours) | set(theirs))
        name = next((n for n in names if ours.get(n, KeyError) != theirs.get(n, KeyError)), None)
        if name is None:
            break
        key, ours, theirs = f"{key}.{name}" if key else name, ours.get(name), theirs.get(name)
    return key or "the top level"


def _without_added_defaults(config, recorded):
    """``config`` minus the ADDED_SETTINGS keys that ``recorded`` lacks and ``config`` holds at their old value."""
    if not (isinstance(config, dict) and isinstance(recorded, dict)):
        return config
    return {
        key: _without_added_defaults(value, recorded.get(key))
        for key, value in config.items()
        if key in recorded or key not in ADDED_SETTINGS or value != ADDED_SETTINGS[key]
    }


def as_json(config: dict) -> dict:
    """The config as it reads back from JSON (tuples become lists, etc.)."""
    return json.loads(checkpoint.to_json(config))


def check_inputs(config, fns, *splits) -> None:
    """Refuses a run whose network or data is not the one its config (and so config.json) names.

    ``config`` has ``.model`` (a ``ModelConfig``) and ``.dataset`` (a TFDS name); ``fns`` must have been built from
    ``config.model`` (``models.make_model`` records it as ``fns.config``) and every split must carry ``config.dataset``
    as its name. Without this check a caller could pass another network or dataset and the recorded settings would
    describe a run that never happened.
    """
    if fns.config != config.model:
        raise ValueError(f"the network was built from {fns.config}, but the run's config records {config.model}")
    for split in splits:
        if split.name != config.dataset:
            raise ValueError(f"the data is {split.name!r}, but the run's config records dataset={config.dataset!r}")


def path(workdir: str, name: str) -> str:
    return os.path.join(workdir, name)
