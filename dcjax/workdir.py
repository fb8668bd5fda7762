"""Run directories: refuse to clobber finished results, resume unfinished ones.

A workdir holds ``config.json`` (the exact settings) and, once the run is complete,
``results.json``. Rules:

* finished (results.json present): error unless ``overwrite``;
* unfinished with the same config: resume;
* unfinished with a different config: error unless ``overwrite`` (resuming would mix runs);
* ``overwrite``: the directory's contents are deleted first;
* a run made of self-checking parts (``parts_checked``, the privacy study's rows) whose
  settings changed resumes even when finished: its finished parts that still match are
  reused, and the old results.json is kept as ``results.previous.json``.
"""

from __future__ import annotations

import json
import os
import shutil

from dcjax import checkpoint

CONFIG = "config.json"
RESULTS = "results.json"
PREVIOUS_RESULTS = "results.previous.json"

# Settings added after results were first recorded, with the value that reproduces the earlier behaviour exactly
# (condensation method and DSA ops, DP-SGD in training, the privacy study's DP and DM rows' settings, the attack's
# population and RMIA settings, the DP rows' own batch size and epochs, the matmul precision). A recorded config that
# lacks one of them still matches a new config holding exactly that value, so adding a setting does not orphan
# finished runs; any other value differs.
ADDED_SETTINGS = {
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
}


class WorkdirError(Exception):
    """A one-line, user-facing problem with the run directory."""


def prepare(workdir: str, config: dict, overwrite: bool, parts_checked: bool = False) -> bool:
    """Makes ``workdir`` ready for a run with ``config``; returns True when resuming.

    ``parts_checked``: the run is made of sub-runs in sub-directories that each check their
    own config (the privacy study's rows), so a run whose settings changed, finished or not,
    keeps its parts that still match; config.json is updated to the new settings.
    """
    if not workdir:
        raise WorkdirError("--workdir must be set")
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise WorkdirError(f"--workdir {workdir} exists and is not a directory")
    if overwrite and os.path.isdir(workdir):
        shutil.rmtree(workdir)
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
    os.makedirs(workdir, exist_ok=True)
    if not resuming:
        checkpoint.write_json(config_path, config)
    return resuming


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
