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


def prepare(workdir: str, config: dict, overwrite: bool, parts_checked: bool = False) -> bool:
    """Makes ``workdir`` ready for a run with ``config``; returns True when resuming.

    ``parts_checked``: the run is made of sub-runs in sub-directories that each check their
    own config (the privacy study's rows), so an unfinished run whose settings changed keeps
    its finished parts that still match; config.json is updated to the new settings.
    """
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
    changed = resuming and not config_matches(workdir, config)
    if changed and parts_checked:
        checkpoint.write_json(config_path, config)
    elif changed:
        raise WorkdirError(f"{workdir} holds an unfinished run with different settings; pass "
                           "--overwrite to discard it or choose another --workdir")
    os.makedirs(workdir, exist_ok=True)
    if not resuming:
        checkpoint.write_json(config_path, config)
    return resuming


def config_matches(workdir: str, config: dict) -> bool:
    """Whether ``workdir``'s config.json records exactly ``config`` (compared as JSON)."""
    return checkpoint.read_json(os.path.join(workdir, CONFIG)) == _roundtrip(config)


def _roundtrip(config: dict) -> dict:
    """The config as it reads back from JSON (tuples become lists, etc.)."""
    return json.loads(checkpoint.to_json(config))


def path(workdir: str, name: str) -> str:
    return os.path.join(workdir, name)
