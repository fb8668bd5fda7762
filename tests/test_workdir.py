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
