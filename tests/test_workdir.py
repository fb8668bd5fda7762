"""Workdir rules: finished results are never clobbered; changed settings never mix silently."""

import json

import pytest

from dcjax import workdir


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
