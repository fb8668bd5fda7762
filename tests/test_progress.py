"""Progress reporting (dcjax.progress): ETA math, rate limiting, and no effect on any output bit."""

import contextlib
import logging

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import helpers

from dcjax import condense
from dcjax import data
from dcjax import dpsgd
from dcjax import engine
from dcjax import progress
from dcjax import train

K = 4


class FakeClock:
    """A clock that only moves when told to."""

    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


@pytest.fixture
def every_tick_logs(monkeypatch, caplog):
    """Ticks on (conftest.py turns them off for the rest of the suite), interval 0 (every tick logs) and absl INFO
    records captured."""
    monkeypatch.setattr(progress, "_enabled", True)
    monkeypatch.setattr(progress, "INTERVAL_S", 0.0)
    caplog.set_level(logging.INFO, logger="absl")
    return caplog


def _lines(caplog, label_part: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if label_part in r.getMessage()]


def test_format_eta():
    assert progress.format_eta(0) == "0h00m00s"
    assert progress.format_eta(3723.9) == "1h02m03s"
    assert progress.format_eta(100 * 3600) == "100h00m00s"


def test_eta_is_measured_from_the_first_tick_on():
    clock = FakeClock()
    tracker = progress.Tracker("job", total=100, unit="steps", interval=10.0, clock=clock)
    assert tracker.eta(clock()) is None
    clock.now += 50.0  # Compilation: must not count in the rate.
    # 50 s since the start: a line, but a first tick has no rate yet...
    assert tracker.advance(10) == "job: 10% (10/100 steps), 0h00m50s elapsed, ETA ?"
    clock.now += 5.0
    # ...the second one does (5 units in 5 s): a line at once, to give the first ETA.
    assert tracker.advance(5) == "job: 15% (15/100 steps), 0h00m55s elapsed, ETA 0h01m25s"
    clock.now += 5.0
    assert tracker.advance(5) is None  # Then rate limited again (5 s since the last line).
    clock.now += 10.0
    line = tracker.advance(10)  # 20 units in 20 s since the first tick, 70 left.
    assert tracker.eta(clock()) == pytest.approx(70.0)
    assert line == "job: 30% (30/100 steps), 0h01m10s elapsed, ETA 0h01m10s"


def test_first_tick_line_has_an_unknown_eta(caplog):
    caplog.set_level(logging.INFO, logger="absl")
    clock = FakeClock()
    tracker = progress.Tracker("job", total=8, weight=2, interval=5.0, clock=clock)
    clock.now += 6.0
    assert tracker.advance(1) == "job: 25% (2/8 steps), 0h00m06s elapsed, ETA ?"  # weight 2: 2 units.
    assert _lines(caplog, "job: 25%")


def test_rate_limit_logs_at_most_one_line_per_interval():
    clock = FakeClock()
    tracker = progress.Tracker("job", total=10_000, interval=30.0, clock=clock)
    lines = []
    for _ in range(1000):  # 1000 ticks, 0.25 s apart: 250 s.
        clock.now += 0.25
        lines.append(tracker.advance(1))
    logged = [line for line in lines if line]
    assert len(logged) == 8  # floor(250 / 30): the first line already had an ETA.
    assert all("ETA ?" not in line for line in logged)
    assert tracker.done == 1000


def test_ticks_outside_a_task_and_when_disabled_are_ignored(monkeypatch):
    monkeypatch.setattr(progress, "_enabled", True)
    progress._on_tick(5)  # No open task: nothing happens (and nothing raises).
    with progress.task("t", 10) as tracker:
        progress._on_tick(3)
        monkeypatch.setattr(progress, "_enabled", False)
        progress._on_tick(3)
    assert tracker.done == 3


def test_tick_reports_every_stride_and_the_remainder(every_tick_logs):
    def body(carry, i):
        progress.tick(i, 10, 4, unit=3)  # Iterations 4, 8 and 10: 12 + 12 + 6 units.
        return carry + 1.0, None

    run = jax.jit(lambda x: jax.lax.scan(body, x, jnp.arange(10))[0])
    with progress.task("scan", 30) as tracker:
        jax.block_until_ready(run(jnp.zeros(())))
    assert tracker.done == 30
    assert [line.split(":")[1].split(",")[0] for line in _lines(every_tick_logs, "scan: ")][:-1] == [
        " 40% (12/30 steps)",
        " 80% (24/30 steps)",
        " 100% (30/30 steps)",
    ]


@contextlib.contextmanager
def _ticks(on: bool):
    """Functions traced inside trace ticks in (or not); the setting before is restored after (conftest.py's: off)."""
    was = progress.enabled()
    progress.set_enabled(on)
    try:
        yield
    finally:
        progress.set_enabled(was)


def _train(fns, strategy, on: bool, config=None):
    images, labels = helpers.pool(24, num_classes=K, offset=False)
    masks = jnp.ones((3, images.shape[0]), bool).at[1, :5].set(False)
    config = config or train.TrainConfig(epochs=3, batch_size=8)
    with _ticks(on):
        return engine.train_models(
            fns, config, jax.random.split(jax.random.key(1), 3), (images, labels, masks), strategy
        )


@pytest.mark.users_emitters  # Ticks on against ticks off, bit for bit (tests/conftest.py).
@pytest.mark.slow  # Two compilations of a training (~40-100 s on 2 loaded cores).
@pytest.mark.parametrize("strategy", ["map", "vmap"])
def test_training_logs_progress_and_is_bitwise_unchanged(tiny, strategy, every_tick_logs):
    reported = _train(tiny, strategy, on=True)
    label = f"training 3 models x 3 epochs, 8 per batch ({strategy})"
    lines = _lines(every_tick_logs, label)
    assert lines[0].startswith("compiling and running")
    # 3 models x 3 epochs x 3 steps (24 examples, batch 8): all of them reported, once.
    assert any("100% (27/27 model-steps)" in line for line in lines)
    assert "done in" in lines[-1]
    silent = _train(tiny, strategy, on=False)
    chex.assert_trees_all_equal(reported, silent)


@pytest.mark.users_emitters  # Ticks on against ticks off, bit for bit (tests/conftest.py).
@pytest.mark.slow  # Two compilations of a training (~40-100 s on 2 loaded cores).
def test_long_epochs_report_from_inside_the_step_scan(tiny, every_tick_logs, monkeypatch):
    monkeypatch.setattr(progress, "MAX_TICK_STEPS", 2)  # 3 steps per epoch: ticks within epochs.
    reported = _train(tiny, "map", on=True, config=train.TrainConfig(epochs=2, batch_size=8))
    done = [int(line.split("(")[2].split("/")[0]) for line in _lines(every_tick_logs, "% (")]
    # Per model and epoch: after step 2 (2 units) and after step 3 (the remaining 1).
    assert done == [2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18]
    silent = _train(tiny, "map", on=False, config=train.TrainConfig(epochs=2, batch_size=8))
    chex.assert_trees_all_equal(reported, silent)


@pytest.mark.slow  # Two compilations of a training (~40-100 s on 2 loaded cores).
def test_dp_training_reports_its_poisson_steps(tiny, every_tick_logs):
    dp = dpsgd.DPConfig(num_examples=24, capacity=24, overflow_budget=1e-6)
    config = train.TrainConfig(epochs=2, batch_size=8, dp=dp)
    reported = _train(tiny, "map", on=True, config=config)
    # round(2 * 24 / 8) = 6 Poisson steps per model.
    assert any("100% (18/18 model-steps)" in line for line in _lines(every_tick_logs, "DP-SGD"))
    chex.assert_trees_all_equal(reported, _train(tiny, "map", on=False, config=config))


def _condense(fns, config, on: bool):
    images, labels = helpers.pool(24, num_classes=K, offset=False)
    index = data.build_class_index(np.asarray(labels), K)
    with _ticks(on):
        step = condense.make_iteration_fn(fns, config, "map")
        state, _ = condense.init_synthetic(config, jax.random.key(0), images, index)
        for t in range(2):
            state, metrics = step(state, (images, index), jax.random.key(t))
        return state, metrics


@pytest.mark.users_emitters  # Ticks on against ticks off, bit for bit (tests/conftest.py).
@pytest.mark.slow  # Two compilations of a training (~40-100 s on 2 loaded cores).
@pytest.mark.parametrize("method", ["dc", "dm"])
def test_condensation_iteration_logs_progress_and_is_bitwise_unchanged(tiny, method, every_tick_logs):
    config = condense.CondenseConfig(
        ipc=2, outer_loop=2, inner_loop=1, batch_real=4, batch_train=8, init="real", method=method
    )
    reported = _condense(tiny, config, on=True)
    lines = _lines(every_tick_logs, f"{method.upper()} iteration (width 8, ipc 2")
    assert lines[0].startswith("compiling and running") and len([x for x in lines if "compiling" in x]) == 1
    total = 1 if method == "dm" else 2
    assert sum(f"100% ({total}/{total}" in line for line in lines) == 2  # Each of the 2 iterations.
    chex.assert_trees_all_equal(reported, _condense(tiny, config, on=False))


# ------------------------------------------------------------- the whole job's plan and ETA (issue 27, item 8)


def _cpu_tier():
    """condense_cpu.cfg's run: real init, 50 DC iterations, 6 x 300-epoch evaluations, the baseline."""
    from dcjax import evaluation
    from dcjax.condense import run as condense_run

    return condense_run.RunConfig(
        condense=condense.CondenseConfig(ipc=10, init="real", iterations=50, inner_loop=10, batch_real=128),
        eval=evaluation.EvalConfig(num_models=6, train=train.TrainConfig(epochs=300, augment="dc")),
        eval_every=0,
    )


def test_the_main_job_states_its_plan_with_each_phases_share():
    from dcjax.condense import run as condense_run

    plan = condense_run.job_plan(_cpu_tier(), 10)
    assert [p.label for p in plan.phases] == [
        "initial evaluation",
        "iterations 1-50",
        "final evaluation",
        "baseline evaluation",
    ]
    shares = dict(part.rsplit(" ", 1) for part in plan.describe().split(": ", 1)[1].split(", "))
    # Measured (docs/RESULTS.md): 50 iterations x 22.3 s against three evaluations of ~3-3.7 min: ~64 % and ~36 %.
    assert 55 <= int(shares["iterations 1-50"].rstrip("%")) <= 80, shares
    resumed = condense_run.job_plan(_cpu_tier(), 10, start=20, done_evals={0})
    assert [p.label for p in resumed.phases][:1] == ["iterations 21-50"] and resumed.phases[0].units == 30


def test_the_job_eta_waits_for_a_timed_step_then_covers_every_phase_left():
    plan = progress.JobPlan(
        [
            progress.Phase("initial evaluation", "evaluation", 100.0),
            progress.Phase("iterations 1-10", "iterations", 300.0, 10),
            progress.Phase("final evaluation", "evaluation", 100.0),
        ]
    )
    plan.next()
    assert plan.remaining() is None and plan.eta_text() == "?"  # Compiling: nothing timed yet.
    clock = iter([0.0, 100.0, 101.0])
    tracker = progress.Tracker("training", 100, clock=lambda: next(clock))
    tracker.advance(1)  # The first tick: its time is mostly compilation.
    tracker.advance(1)  # 1 s per step from here on: 98 s left in this phase.
    # 98 s, then the iterations at the same seconds per cost unit (300 s), then the last evaluation (100 s).
    assert plan.observe(tracker, 101.0) == ", job ETA 0h08m18s"
    plan.next()
    plan.timed(2, 5.0)  # 2 of 10 iterations done at 5 s each: 40 s left, then the final evaluation.
    assert plan.remaining() == pytest.approx(40 + 100 * 1.0)
