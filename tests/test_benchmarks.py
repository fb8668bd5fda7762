"""The profiling benchmarks run at tiny shapes and print complete tables (never timing assertions: only that every
part is measured, and a DC prediction is checked against a whole iteration)."""

import json
import math

import launch_flags
import pytest

ROOT = launch_flags.ROOT


def _run(script: str, *flags: str, timeout: float = 900):
    """benchmarks/``script`` run as ``python benchmarks/script flags``, on the CPU, forked by the launcher server
    (its imports are the launchers'), its output captured."""
    return launch_flags.launch([f"benchmarks/{script}", *flags], timeout=timeout)


def _rows(script: str, *flags: str) -> list[dict]:
    """The JSON list of rows that ``script`` prints (its table's numbers)."""
    out = _run(script, *flags)
    assert out.returncode == 0, out.stderr[-3000:]
    lists = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("[{")]
    assert len(lists) == 1, out.stdout
    return lists[0]


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.mark.slow
def test_dc_profile_measures_every_part_and_checks_its_prediction():
    rows = {
        r["part"]: r
        for r in _rows("dc_profile.py", "--width=4", "--depth=1", "--ipc=1", "--batch_real=4", "--check_outer=2")
    }
    assert len(rows) == 6, sorted(rows)
    measured = rows["measured iteration (2 outer)"]
    assert _positive(measured["s per iteration"]) and _positive(measured["predicted from the parts"])
    predicted = rows["predicted iteration (1 outer)"]
    assert predicted["share of iteration"] == 1.0 and _positive(predicted["GFLOP/s"])
    assert rows["inner loop (1 SGD epochs)"]["calls"] == 0  # ipc 1: one outer step, no inner loop after it.


@pytest.mark.slow
def test_dm_profile_measures_every_part_beside_the_whole_iteration():
    rows = {
        r["part"]: r
        for r in _rows("dm_profile.py", "--width=4", "--depth=1", "--ipc=1", "--batch_real=4", "--repeats=1")
    }
    assert set(rows) >= {"real: DSA + embed (forward)", "synthetic: DSA + embed + backward", "whole iteration"}
    assert all(_positive(r["s"]) for r in rows.values())
    assert rows["whole iteration"]["share of iteration"] == 1.0


@pytest.mark.slow
def test_condense_step_gives_each_rows_spread_over_fresh_processes_under_an_allocator_setting():
    rows = _rows("condense_step.py", "--configs=4:1", "--methods=dm", "--repeats=1", "--processes=2", "--malloc=keep")
    assert len(rows) == 1
    row = rows[0]
    assert row["malloc"] == "keep" and row["processes"] == 2 and len(row["process s"]) == 2
    low, high = min(row["process s"]), max(row["process s"])
    assert low <= row["s/iteration"] <= high and row["process spread"] == f"[{low:.3g}, {high:.3g}]"
    assert _positive(row["GFLOP/s"]) and row["minor faults / iteration"] >= 0


def test_condense_step_refuses_an_unknown_allocator_setting():
    out = _run("condense_step.py", "--malloc=default,tcmalloc", timeout=120)
    assert out.returncode != 0 and "--malloc" in out.stderr and "tcmalloc" in out.stderr, out.stderr[-2000:]


POSTER_PARTS = ["dc", "dsa", "dm", "train_epoch", "dpsgd_step", "score"]


@pytest.mark.slow
# Only the before-and-after case: it runs every path of the single-side case too (one side is "after"), and each
# case costs ~2 minutes of compilation on 2 cores.
@pytest.mark.parametrize("before", [True], ids=["before and after"])
def test_poster_parts_measures_every_part_on_each_side_and_predicts_the_tier(tmp_path, before):
    out = tmp_path / "parts.json"
    flags = ["--tiny", "--processes=1", "--repeats=1", f"--out={out}"] + ([f"--before={ROOT}"] if before else [])
    run = _run("poster_parts.py", *flags)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(out.read_text())
    sides = ["before", "after"] if before else ["after"]
    assert list(report["sides"]) == sides
    assert [r["side"] for r in report["records"] if r["record"] == "process"] == sides  # Alternating, before first.
    assert [r["part"] for r in report["parts"]] == POSTER_PARTS
    printed = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("[{")]
    assert printed == [report["parts"]]
    for row in report["parts"]:
        assert f"| {row['part']} |" in run.stdout  # Every part has its line in the table.
        assert (row["speedup"] is not None) == before
        for side in sides:
            summary = row[side]
            assert summary["seconds"]["n"] == 1 and _positive(summary["seconds"]["median"]), row
            assert _positive(summary["flops"]) and _positive(summary["matmul_fraction"]["median"]), row
    for side in sides:
        prediction = report["prediction"][side]
        assert prediction["complete"] and _positive(prediction["total_hours"])
        assert set(prediction["kinds"]) == {"original", "dc", "dsa", "dm", "dpsgd"}
    assert "| total |" in run.stdout
