"""Workdir rules: finished results are never clobbered; changed settings never mix silently."""

import json
import os
import subprocess
import sys

import pytest

from dcjax import errors, workdir


def test_a_changed_config_is_refused_unless_the_parts_check_themselves(tmp_path):
    path = str(tmp_path / "run")
    assert workdir.prepare(path, {"a": 1}, overwrite=False) is False
    assert workdir.prepare(path, {"a": 1}, overwrite=False) is True  # Same settings: resume.
    with pytest.raises(workdir.WorkdirError, match="different settings"):
        workdir.prepare(path, {"a": 2}, overwrite=False)
    # A run of self-checking parts (the privacy study) resumes and records the new settings.
    assert workdir.prepare(path, {"a": 2}, overwrite=False, parts_checked=True) is True
    assert json.loads((tmp_path / "run" / "config.json").read_text()) == {"a": 2}


def test_finished_results_need_overwrite_even_for_self_checking_runs(tmp_path):
    path = str(tmp_path / "run")
    workdir.prepare(path, {"a": 1}, overwrite=False)
    (tmp_path / "run" / "results.json").write_text("{}")
    with pytest.raises(workdir.WorkdirError, match="overwrite"):
        workdir.prepare(path, {"a": 1}, overwrite=False, parts_checked=True)
    assert workdir.prepare(path, {"a": 1}, overwrite=True) is False
    assert not (tmp_path / "run" / "results.json").exists()


def test_settings_added_later_match_only_at_their_old_value(tmp_path):
    path = str(tmp_path / "run")
    recorded = {"seed": 0, "condense": {"ipc": 10}, "train": {"epochs": 3}}
    workdir.prepare(path, recorded, overwrite=False)
    # A newer version records the method and DP settings; at the values that reproduce the old runs it matches.
    same = {
        "seed": 0,
        "condense": {"ipc": 10, "method": "dc", "dsa_strategy": "color_crop_cutout_scale_rotate"},
        "train": {"epochs": 3, "dp": None},
    }
    assert workdir.config_matches(path, same)
    for changed in (
        {**same, "condense": {"ipc": 10, "method": "dsa"}},
        {**same, "train": {"epochs": 3, "dp": {"l2_clip": 1.0}}},
        {**same, "condense": {"ipc": 10, "novel": 1}},
        {**same, "condense": {"ipc": 20, "method": "dc"}},
    ):
        assert not workdir.config_matches(path, changed), changed


def test_a_finished_run_of_self_checking_parts_reopens_when_its_settings_change(tmp_path):
    """The privacy study: adding rows to a finished study keeps its finished rows."""
    path = str(tmp_path / "run")
    workdir.prepare(path, {"rows": ["a"]}, overwrite=False, parts_checked=True)
    (tmp_path / "run" / "results.json").write_text('{"rows": ["a"]}')
    assert workdir.prepare(path, {"rows": ["a", "b"]}, overwrite=False, parts_checked=True) is True
    assert not (tmp_path / "run" / "results.json").exists()
    assert json.loads((tmp_path / "run" / workdir.PREVIOUS_RESULTS).read_text()) == {"rows": ["a"]}
    assert json.loads((tmp_path / "run" / "config.json").read_text()) == {"rows": ["a", "b"]}
    (tmp_path / "run" / "results.json").write_text("{}")
    with pytest.raises(workdir.WorkdirError, match="finished results"):  # Plain runs never reopen.
        workdir.prepare(path, {"rows": ["c"]}, overwrite=False)


# ------------------------------------------------------------------ one writer per workdir (issue 27, item 3)

_HOLD = """
import sys, time
from dcjax import workdir
workdir.hold(sys.argv[1])
print("held", flush=True)
time.sleep(60)
"""


def _holder(path):
    """A second process holding ``path``'s lock (as a second launcher would), once it says so."""
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, path], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_run_is_refused_naming_the_workdir_and_the_holders_pid(tmp_path):
    path = str(tmp_path / "run")
    holder = _holder(path)
    try:
        with pytest.raises(workdir.WorkdirBusy) as info:
            workdir.hold(path)
        message = str(info.value)
        assert path in message and f"PID {holder.pid}" in message and "\n" not in message, message
        assert isinstance(info.value, errors.UserError)
    finally:
        holder.kill()
        holder.wait()
    # The kernel dropped the killed holder's flock: its lock file is stale and blocks nothing.
    assert (tmp_path / "run" / workdir.LOCK).exists()
    workdir.hold(path)
    workdir.release(path)
    assert os.listdir(tmp_path / "run") == []  # The lock file goes with the lock.


def test_hold_and_release_leave_a_new_workdir_as_they_found_it(tmp_path):
    path = str(tmp_path / "new")
    workdir.hold(path)
    assert (tmp_path / "new" / workdir.LOCK).read_text().split()[0] == str(os.getpid())
    workdir.prepare(path, {"a": 1}, overwrite=False)
    workdir.prepare(path, {"a": 1}, overwrite=True)  # --overwrite clears the run but keeps the lock.
    assert (tmp_path / "new" / workdir.LOCK).exists()
    workdir.release()
    assert sorted(os.listdir(tmp_path / "new")) == ["config.json"]  # The run's files stay; the lock goes.


def test_workdir_checks_that_need_no_data(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    with pytest.raises(workdir.WorkdirError, match="exists and is not a directory"):
        workdir.check_usable(str(tmp_path / "file"))
    with pytest.raises(workdir.WorkdirError, match="is a file"):
        workdir.check_usable(str(tmp_path / "file" / "run"))
    monkeypatch.setattr(os, "access", lambda *a, **k: False)  # As a read-only directory (tests may run as root).
    with pytest.raises(errors.WriteError) as info:
        workdir.check_usable(str(tmp_path / "a" / "run"))
    assert str(info.value).startswith(f"cannot write {tmp_path}: permission denied (EACCES)"), str(info.value)
    monkeypatch.undo()
    path = str(tmp_path / "run")
    workdir.prepare(path, {"a": 1}, overwrite=False)
    workdir.precheck(path, False, {"a": 1})  # Same settings: fine.
    with pytest.raises(workdir.WorkdirError, match="differs at a"):
        workdir.precheck(path, False, {"a": 2})
    (tmp_path / "run" / "results.json").write_text("{}")
    with pytest.raises(workdir.WorkdirError, match="finished results"):
        workdir.precheck(path, False)
    workdir.precheck(path, True)  # --overwrite
    assert sorted(os.listdir(tmp_path / "run")) == ["config.json", "results.json"]  # Nothing written.
