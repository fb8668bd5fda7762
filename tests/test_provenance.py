"""Every committed result records the commit and CPU it came from (``host.provenance``), or is on the list below of
those made before results recorded it: a ratchet. A new result without its provenance fails here, and so does a
listed one that has since been rerun with it (take it off the list)."""

from __future__ import annotations

import glob
import os
import re

import pytest

from dcjax import checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")

_BEFORE = "made before its launcher recorded provenance"
_REFERENCE = "the PyTorch reference harness's output (not dcjax's); the README beside it names the machine"
# path (from the repository root): why it has no provenance. Shrinks as results are rerun at the current code.
UNRECORDED = {
    "docs/benchmarks/2026-12-03/reference/dc_ipc10_run1.json": _REFERENCE,
    "docs/benchmarks/2026-12-03/reference/dm_ipc10.json": _REFERENCE,
    "docs/benchmarks/2026-12-04/reference/dc_ipc10_run1.json": _REFERENCE,
    "docs/benchmarks/2026-12-04/reference/dm_ipc10.json": _REFERENCE,
    "docs/benchmarks/2026-12-08-issue26/reference/dm_ipc10_p1.json": _REFERENCE,
    "docs/benchmarks/2026-12-08-issue26/reference/dm_ipc10_p2.json": _REFERENCE,
    "docs/benchmarks/2026-12-08-issue26/reference/dm_ipc10_p3.json": _REFERENCE,
    "docs/results/dm_cpu_older.json": _BEFORE + " (kept as the baseline of paired comparisons)",
    "docs/results/dsa_cpu_older.json": _BEFORE + " (kept as the baseline of paired comparisons)",
}


def _results() -> list[str]:
    """Every committed JSON result under docs/ but a run's config (its input) and a study's aggregate (whose rows
    are results of their own, each checked here)."""
    found = []
    for path in sorted(glob.glob(os.path.join(DOCS, "**", "*.json"), recursive=True)):
        if os.path.basename(path) == "config.json" or "rows" in checkpoint.read_json(path):
            continue
        found.append(os.path.relpath(path, ROOT))
    return found


RESULTS = _results()


def _provenance(path: str) -> dict | list | None:
    """A result's ``provenance`` record, or a benchmark's process records (each names the commit it imported,
    ``timing.library``, and its CPU): None where it has neither."""
    data = checkpoint.read_json(os.path.join(ROOT, path))
    processes = [r for r in data.get("records", []) if isinstance(r, dict) and r.get("record") == "process"]
    return data.get("provenance") or processes or None


def _names_commit_and_cpu(provenance: dict | list) -> bool:
    if isinstance(provenance, dict):
        return bool(provenance.get("commit") and provenance.get("cpu"))
    return all(re.search(r" @ [0-9a-f]{7,}", p.get("library", "")) and p.get("cpu") for p in provenance)


def test_the_committed_results_are_found():
    assert len(RESULTS) >= 30 and set(UNRECORDED) <= set(RESULTS), sorted(set(UNRECORDED) - set(RESULTS))


@pytest.mark.parametrize("path", [p for p in RESULTS if p not in UNRECORDED])
def test_a_result_names_its_commit_and_cpu(path):
    provenance = _provenance(path)
    assert provenance and _names_commit_and_cpu(provenance), f"{path}: no commit and CPU in {provenance}"


@pytest.mark.parametrize("path", sorted(UNRECORDED))
def test_a_listed_result_still_lacks_it(path):
    assert not _provenance(path), f"{path} records its provenance now: take it off UNRECORDED"


def test_the_check_can_fail():
    assert _names_commit_and_cpu({"commit": "3b0cbac", "cpu": "AMD EPYC (avx2+fma)"})
    assert not _names_commit_and_cpu({"commit": None, "cpu": "AMD EPYC (avx2+fma)"})
    assert not _names_commit_and_cpu([{"library": "dcjax from /x @ unknown commit", "cpu": "CPU x"}])
    assert not _names_commit_and_cpu([{"library": "dcjax from /x @ 3b0cbac", "cpu": ""}])
