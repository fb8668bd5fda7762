"""benchmarks/accelerator_check.py: the table and budget logic in-process, the whole script at --tiny on CPU."""

import json
import math
import os
import sys

import jax
import launch_flags
import numpy as np
import pytest

sys.path.insert(0, os.path.join(launch_flags.ROOT, "benchmarks"))

import accelerator_check as ac  # noqa: E402  (defines no flags at import)


class FakeClock:
    """A clock the fake measurements advance, so budget decisions are deterministic."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _fake(clock, seconds, cost):
    def measure(ctx):
        clock.now += cost
        return {
            "setting": "fake",
            "unit": "s",
            "compile_s": None,
            "first_s": 2 * seconds,
            "seconds": seconds,
            "timed": 1,
            "xla_gib": None,
        }

    return measure


def _context(clock, deadline):
    return ac.Context(ac.TINY, jax.random.key(0), deadline, clock)


def test_budget_skips_the_rest_and_errors_become_rows(tmp_path):
    clock = FakeClock()

    def boom(ctx):
        raise RuntimeError("out of memory")

    fns = {
        "bank_loop": _fake(clock, 4.0, 6.0),
        "bank_vmap": _fake(clock, 1.0, 6.0),
        "precision": boom,
        "dc_iteration": _fake(clock, 1.0, 1.0),
    }
    env = ac.environment("float32")
    report = ac.run_check(
        ["bank_loop", "precision", "bank_vmap", "dc_iteration"], fns, _context(clock, 10.0), env, str(tmp_path)
    )
    status = {r["measurement"]: r["status"] for r in report["rows"]}
    # Starts: bank_loop at 0, precision and bank_vmap at 6 (< 10; the failure costs no time), dc_iteration at 12.
    assert status == {
        "environment": "ok",
        "bank_loop": "ok",
        "precision": "error: RuntimeError: out of memory",
        "bank_vmap": "ok",
        "dc_iteration": "skipped: budget",
    }
    rows = {r["measurement"]: r for r in report["rows"]}
    assert rows["bank_vmap"]["vs_baseline"] == pytest.approx(4.0)
    assert rows["bank_loop"]["vs_baseline"] == 1.0
    assert not report["complete"]
    written = json.loads((tmp_path / "accelerator_check.json").read_text())
    assert [r["measurement"] for r in written["rows"]] == [r["measurement"] for r in report["rows"]]
    md = (tmp_path / "accelerator_check.md").read_text()
    assert "INCOMPLETE" in md and "skipped: budget" in md and md.count("\n| ") == 6  # header + 5 rows
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp")]  # atomic writes left no temp file


def test_ratios_need_both_rows_and_scale_by_models():
    rows = [
        {"measurement": "pipelines_one", "status": "ok", "seconds": 1.0},
        {"measurement": "pipelines_all", "status": "ok", "seconds": 2.0},
        {"measurement": "bank_vmap", "status": "ok", "seconds": 1.0},
        {"measurement": "bank_loop", "status": "skipped: budget"},
    ]
    ac.add_ratios(rows, models=16)
    assert rows[1]["vs_baseline"] == pytest.approx(8.0)  # 16 pipelines in 2 s vs 16 x 1 s one by one.
    assert "vs_baseline" not in rows[2]


def test_cells_say_na_and_mark_a_cumulative_peak():
    row = {"measurement": "x", "status": "ok", "seconds": 0.5, "compile_s": None, "peak_gib": 3.0, "peak_is_own": False}
    assert ac._fmt(row, "compile s") == "n/a"
    assert ac._fmt(row, "median s") == "0.5"
    assert ac._fmt(row, "peak device GiB") == "<=3"
    assert ac._fmt({**row, "peak_is_own": True}, "peak device GiB") == "3"
    assert ac._fmt({**row, "peak_gib": None}, "peak device GiB") == "n/a"


def test_timed_calls_stop_after_one_timed_call_once_the_budget_is_spent():
    clock = FakeClock()
    calls = []

    def call(t):
        calls.append(t)
        clock.now += 5.0
        return jax.numpy.zeros(())

    first, times = ac.timed_calls(call, ac.Context(ac.Scale(repeats=3), jax.random.key(0), 7.0, clock))
    assert calls == [0, 1] and first == 5.0 and times == [5.0]


def test_half_per_class_keeps_exactly_half_of_every_class():
    labels = np.repeat(np.arange(3), 8)
    keep = ac.half_per_class(jax.random.key(0), 4, labels)
    for c in range(3):
        assert (keep[:, labels == c].sum(axis=1) == 4).all()
    assert len({tuple(k) for k in keep}) > 1  # Models get different halves.


def _positive(value):
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.mark.slow
def test_tiny_run_on_cpu_records_every_row(tmp_path):
    # On the CPU (launch_flags' environment), forked by the launcher server. No budget: a loaded CPU may take minutes
    # even at --tiny, and a skipped row would fail the check.
    flags = ["--tiny", "--precision=tensorfloat32", "--budget_s=1e9", f"--out={tmp_path}"]
    out = launch_flags.launch(["benchmarks/accelerator_check.py", *flags], timeout=1500)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads((tmp_path / "accelerator_check.json").read_text())
    rows = {r["measurement"]: r for r in report["rows"]}
    assert set(rows) == {"environment", *ac.MEASUREMENTS}, sorted(rows)
    assert report["complete"], {name: row["status"] for name, row in rows.items()}
    for name in ac.MEASUREMENTS:
        row = rows[name]
        assert row["status"] == "ok", row
        assert _positive(row["seconds"]) and _positive(row["first_s"]) and row["timed"] >= 1, row
        for key in ("compile_s", "xla_gib"):
            assert row[key] is None or _positive(row[key]), row
    for name in ("dm_iteration", "dc_iteration", "dsa_iteration", "precision"):
        assert _positive(rows[name]["compile_s"])
    assert _positive(rows["bank_vmap"]["vs_baseline"]) and _positive(rows["pipelines_all"]["vs_baseline"])
    assert rows["precision"]["precision"] == "tensorfloat32" == report["environment"]["precision"]
    assert report["scale"]["width"] == 8 and report["scale"]["models"] == 4
    md = (tmp_path / "accelerator_check.md").read_text()
    assert all(name in md for name in ac.MEASUREMENTS) and "| measurement |" in out.stdout
