"""The schema of what the reports read (dcjax.privacy.results_schema): every committed result fits it and
regenerates its RESULTS.md byte for byte; a missing required field raises naming it, an optional one is a dash."""

from __future__ import annotations

import copy
import glob
import os
import re

import pytest

from dcjax import checkpoint
from dcjax.privacy import attack_run, results_schema, study, study_report, tables

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
COMMITTED = sorted(
    os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(DOCS, "**", "results.json"), recursive=True)
)
# The DP-SGD tuning sweeps (experiments/dp_tune.py) are no attack run or study: their own table reads their records
# (test_dpsgd.py regenerates it).
REPORTED = [p for p in COMMITTED if not p.startswith(os.path.join("docs", "dp_tuning_"))]
STUDIES = [p for p in REPORTED if "rows" in checkpoint.read_json(os.path.join(ROOT, p))]
RUNS = [p for p in REPORTED if p not in STUDIES]


def test_the_committed_results_are_found():
    assert len(STUDIES) >= 2 and len(RUNS) >= 12, (STUDIES, RUNS)


@pytest.mark.parametrize("path", REPORTED)
def test_every_committed_result_fits_the_schema(path):
    read = results_schema.read_study if path in STUDIES else results_schema.read_run
    read(os.path.join(ROOT, path))


@pytest.mark.parametrize("path", RUNS)
def test_every_committed_attack_run_document_regenerates_unchanged(path):
    workdir = os.path.dirname(path)  # Relative, as the committed command names it.
    results = results_schema.read_run(os.path.join(ROOT, path))
    with open(os.path.join(ROOT, workdir, "RESULTS.md"), encoding="utf-8") as f:
        committed = f.read()
    assert tables.run_document(results, attack_run.report_command(workdir)) == committed


@pytest.mark.parametrize("path", STUDIES)
def test_every_committed_study_document_regenerates_unchanged(path):
    """RESULTS.md from results.json alone (no re-attack): figures as ``study.write_report`` names them, the
    conclusion the committed regenerate command names."""
    workdir = os.path.join(ROOT, os.path.dirname(path))
    results = results_schema.read_study(os.path.join(ROOT, path))
    # The conclusion the document was written with: the regenerate command's, or the run's for a study a run wrote.
    conclusion = re.search(r"--conclusion=(\S+)", results.get("report_command") or results["command"])
    text = open(os.path.join(ROOT, conclusion.group(1)), encoding="utf-8").read() if conclusion else ""
    figures = study.figure_captions(results, study.released_sets(workdir, results))
    with open(os.path.join(workdir, "RESULTS.md"), encoding="utf-8") as f:
        assert study_report.document(results, figures, text) == f.read()


def _required_paths(spec: results_schema.Spec, value, path: tuple = ()):
    """Every (path, spec) of a required field present in ``value``, descending records, maps and lists (their
    first entry); paths are tuples of keys and list indices."""
    if isinstance(spec, results_schema.Nullable | results_schema.Optional | results_schema.Skippable):
        if value is not None and not (isinstance(value, dict) and "skipped" in value):
            yield from _required_paths(spec.spec, value, path)
    elif isinstance(spec, results_schema.Record) and isinstance(value, dict):
        for key, field in spec.fields.items():
            if key in value:
                if not isinstance(field, results_schema.Optional):
                    yield path + (key,), field
                yield from _required_paths(field, value[key], path + (key,))
    elif isinstance(spec, results_schema.MapOf) and isinstance(value, dict) and value:
        key = next(iter(value))
        yield from _required_paths(spec.spec, value[key], path + (key,))
    elif isinstance(spec, results_schema.ListOf | results_schema.Rows) and isinstance(value, list) and value:
        yield from _required_paths(spec.spec, value[0], path + (0,))


def _parent(tree, path: tuple):
    for step in path[:-1]:
        tree = tree[step]
    return tree


@pytest.mark.parametrize(
    "path, spec, check",
    [
        ("docs/privacy_study_poster_cpu/results.json", results_schema.STUDY, results_schema.check_study),
        ("docs/privacy_study_cpu/results.json", results_schema.STUDY, results_schema.check_study),
        ("docs/privacy_study_cpu/dc_real/results.json", results_schema.RUN, results_schema.check_run),
    ],
)
def test_deleting_any_required_field_raises_naming_it_and_the_file(path, spec, check):
    results = checkpoint.read_json(os.path.join(ROOT, path))
    required = list(_required_paths(spec, results))
    assert len(required) > 60  # Descends every level: rows, headlines, summaries, audits.
    for field, _ in required:
        parent = _parent(results, field)
        value = parent.pop(field[-1])
        with pytest.raises(results_schema.SchemaError) as raised:
            check(results, path)
        parent[field[-1]] = value
        assert raised.value.source == path and "missing" in raised.value.problem
        # The reported path ends with the field (a row is named "rows[i] (name)", other keys are dotted or quoted).
        assert re.search(rf"(\.|^|\[\"){re.escape(str(field[-1]))}\"?\]?$", raised.value.field), raised.value.field
    check(results, path)  # Restored.


def test_a_mistyped_or_null_required_field_raises():
    results = checkpoint.read_json(os.path.join(DOCS, "privacy_study_cpu", "results.json"))
    broken = copy.deepcopy(results)
    broken["rows"][2]["utility"]["test_accuracy_mean"] = "0.9"
    with pytest.raises(results_schema.SchemaError, match=re.escape("rows[2] (dc_noise).utility.test_accuracy_mean")):
        results_schema.check_study(broken)
    broken = copy.deepcopy(results)
    broken["rows"][0]["null_test"]["passed"] = 1  # An integer is no boolean.
    with pytest.raises(results_schema.SchemaError, match="must be a boolean, got int"):
        results_schema.check_study(broken)
    broken = copy.deepcopy(results)
    broken["rows"][0]["headline"]["model"]["attack"] = None  # Not nullable.
    with pytest.raises(
        results_schema.SchemaError, match=re.escape("headline.model.attack: must be a string, got null")
    ):
        study_report.results_document(broken, {})


def test_the_headline_attacks_canaries_and_audits_must_be_there():
    results = checkpoint.read_json(os.path.join(DOCS, "privacy_study_cpu", "original", "results.json"))
    attack = results["headline"]["model"]["attack"]
    for section in ("canary_detection", "empirical_epsilon"):
        broken = copy.deepcopy(results)
        del broken[section][attack]
        with pytest.raises(results_schema.SchemaError, match=re.escape(f"{section}.{attack}: missing")):
            tables.run_document(broken, "cmd")
    broken = copy.deepcopy(results)
    del broken["empirical_epsilon"][attack]["canaries"]  # The run has canaries.
    with pytest.raises(results_schema.SchemaError, match=re.escape(f"empirical_epsilon.{attack}.canaries: missing")):
        results_schema.check_run(broken)
    broken = copy.deepcopy(results)
    broken["schema"] = 2
    with pytest.raises(results_schema.SchemaError, match="schema: is 2; the report reads 3"):
        results_schema.check_run(broken)


def test_an_optional_field_missing_renders_a_dash():
    results = checkpoint.read_json(os.path.join(DOCS, "privacy_study_cpu", "results.json"))
    dp_row = next(i for i, row in enumerate(results["rows"]) if "dp" in row)
    line = _line(tables.markdown_table(results), dp_row)
    assert line[0].startswith(results["rows"][dp_row]["name"] + " (ε=") and line[11] != "–"
    del results["rows"][dp_row]["dp"]  # Optional: DP-SGD rows only.
    line = _line(tables.markdown_table(results), dp_row)
    assert line[0] == results["rows"][dp_row]["name"] and line[11] == "–"
    results["rows"][0]["shokri_accuracy"] = None  # Nullable: an export without Shokri's inputs.
    assert _line(tables.markdown_table(results), 0)[8] == "–"
    without = {k: v for k, v in results.items() if k != "report_command"}  # Optional: a study never regenerated.
    assert "Tables regenerated" in study_report.results_document(results, {})
    assert "Tables regenerated" not in study_report.results_document(without, {})


def test_a_study_needs_its_header_before_it_runs_and_the_poster_protocol_every_other_row():
    with pytest.raises(results_schema.SchemaError, match=re.escape("the study's about: machine: missing")):
        results_schema.check_about({"tier": "cpu", "command": "python x"})
    results_schema.check_about({"tier": "cpu", "command": "python x", "machine": "2 cores", "conclusion": "."})
    results = checkpoint.read_json(os.path.join(DOCS, "privacy_study_poster_cpu", "results.json"))
    del results["poster_protocol"]["subset"]
    with pytest.raises(results_schema.SchemaError, match=re.escape("poster_protocol.subset: missing")):
        study_report.poster_section(results)


def _line(table: str, row: int) -> list[str]:
    return [c.strip() for c in table.strip().split("\n")[2 + row].strip("|").split("|")]
