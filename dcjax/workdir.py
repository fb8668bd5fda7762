"""Run directories: refuse to clobber finished results, resume unfinished ones.

A workdir holds ``config.json`` (the exact settings) and, once the run is complete,
``results.json``. Rules:

* finished (results.json present): error unless ``overwrite``;
* unfinished with the same config: resume;
* unfinished with a different config: error unless ``overwrite`` (resuming would mix runs);
* ``overwrite``: the directory's contents are deleted first.
"""

from __future__ import annotations

import json
import os
import shutil

from dcjax import checkpoint

CONFIG = "config.json"
RESULTS = "results.json"


class WorkdirError(Exception):
    """A one-line, user-facing problem with the run directory."""


def prepare(workdir: str, config: dict, overwrite: bool) -> bool:
    """Makes ``workdir`` ready for a run with ``config``; returns True when resuming."""
    if not workdir:
        raise WorkdirError("--workdir must be set")
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise WorkdirError(f"--workdir {workdir} exists and is not a directory")
    if overwrite and os.path.isdir(workdir):
        shutil.rmtree(workdir)
    config_path = os.path.join(workdir, CONFIG)
    if os.path.exists(os.path.join(workdir, RESULTS)):
        raise WorkdirError(f"{workdir} already holds finished results; pass --overwrite to "
                           "replace them or choose another --workdir")
    resuming = os.path.exists(config_path)
    if resuming and checkpoint.read_json(config_path) != _roundtrip(config):
        raise WorkdirError(f"{workdir} holds an unfinished run with different settings; pass "
                           "--overwrite to discard it or choose another --workdir")
    os.makedirs(workdir, exist_ok=True)
    if not resuming:
        checkpoint.write_json(config_path, config)
    return resuming


def _roundtrip(config: dict) -> dict:
    """The config as it reads back from JSON (tuples become lists, etc.)."""
    return json.loads(checkpoint.to_json(config))


def path(workdir: str, name: str) -> str:
    return os.path.join(workdir, name)
