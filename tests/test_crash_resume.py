"""Crashes and resumes: a run killed anywhere, diverged or left with a damaged checkpoint.

In-process (fast): a non-finite condensation loss stops the run with one line and keeps the
last good checkpoint; an unreadable checkpoint falls back to the previous one or says what to
do. Slow (launchers as subprocesses on mock data): each launcher is SIGKILLed mid-run, the same
command resumes it, and the outputs equal those of an uninterrupted run bit for bit.
"""

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

import helpers
import launch_flags

from dcjax import checkpoint
from dcjax import condense
from dcjax.condense import run as condense_run
from dcjax import errors
from dcjax import evaluation
from dcjax import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ---------------------------------------------------------------------------------------------
# In-process: divergence and damaged checkpoints.


def _config(**condense_changes):
    # DM without augmentation: the cheapest method to compile; the loop around it is the same.
    cond = condense.CondenseConfig(
        method="dm", dsa_strategy="none", ipc=1, iterations=7, batch_real=4, lr_img=1.0, init="noise"
    )
    return condense_run.RunConfig(
        seed=3,
        model=helpers.TINY_D1,
        condense=dataclasses.replace(cond, **condense_changes),
        eval=evaluation.EvalConfig(num_models=1, train=train.TrainConfig(epochs=1)),
        eval_every=0,
        eval_baseline=False,
        checkpoint_every=2,
    )


@pytest.fixture(scope="module")
def sets():
    return helpers.dataset(30, 0), helpers.dataset(12, 1)


def _condense(fns, sets, workdir, config=None):
    return condense_run.run_condensation(config or _config(), fns, *sets, str(workdir))


@pytest.fixture(scope="module")
def straight(fns_d1, sets, tmp_path_factory):
    """An uninterrupted run: what every interrupted one must reproduce."""
    workdir = tmp_path_factory.mktemp("straight")
    results = _condense(fns_d1, sets, workdir)
    return workdir, results


def _assert_same_synthetic(a, b):
    with np.load(os.path.join(a, "synthetic.npz")) as x, np.load(os.path.join(b, "synthetic.npz")) as y:
        assert sorted(x.files) == sorted(y.files)
        for name in x.files:
            np.testing.assert_array_equal(x[name], y[name], err_msg=name)


def _steps(workdir):
    return sorted(int(n) for n in os.listdir(os.path.join(workdir, "checkpoints")) if n.isdigit())


def _iterations(path):
    return [r["iteration"] for r in checkpoint.read_jsonl(str(path))]


def _poison_iteration(monkeypatch, bad_call: int):
    """Makes the bad_call-th iteration (1-based) report a NaN loss, as a diverged one does."""
    real = condense.make_iteration_fn

    def make(*args, **kwargs):
        step, calls = real(*args, **kwargs), []

        def poisoned(state, real_data, key):
            state, out = step(state, real_data, key)
            calls.append(None)
            return state, ({**out, "loss": jnp.float32(jnp.nan)} if len(calls) == bad_call else out)

        return poisoned

    monkeypatch.setattr(condense, "make_iteration_fn", make)


@pytest.mark.xdist_group("crash_resume_straight")  # Shares the module's `straight` run (-n: one worker).
@pytest.mark.slow
def test_nan_loss_stops_keeps_the_last_good_checkpoint_and_resumes_identically(
    fns_d1, sets, straight, tmp_path, monkeypatch
):
    _poison_iteration(monkeypatch, bad_call=6)  # Checkpoints after 2 and 4; the 6th iteration fails.
    with pytest.raises(ValueError, match="condensation diverged") as error:
        _condense(fns_d1, sets, tmp_path)
    message = str(error.value)
    assert "\n" not in message and "loss nan at iteration 6 of 7" in message
    assert f"after iteration 4) is kept in {tmp_path / 'checkpoints'}" in message and "--lr_img" in message
    assert _steps(tmp_path) == [2, 4]
    assert _iterations(tmp_path / "metrics.jsonl") == [0, 1, 2, 3]  # Cut back to the checkpoint.
    assert _iterations(tmp_path / "evals.jsonl") == []  # The only evaluation is at the end.
    for name in ("results.json", "synthetic.npz", "synthetic.png"):
        assert not (tmp_path / name).exists(), name
    monkeypatch.undo()  # A transient fault: the same command resumes from iteration 4.
    resumed = _condense(fns_d1, sets, tmp_path)
    _assert_same_synthetic(straight[0], tmp_path)
    assert resumed["final"] == straight[1]["final"]
    assert _iterations(tmp_path / "metrics.jsonl") == list(range(7))


def test_a_huge_image_learning_rate_diverges_with_one_line_and_no_outputs(fns_d1, sets, tmp_path):
    config = dataclasses.replace(_config(lr_img=1e38), checkpoint_every=1)
    with pytest.raises(condense_run.DivergedError, match="condensation diverged") as error:
        _condense(fns_d1, sets, tmp_path, config)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "results.json").exists() and not (tmp_path / "synthetic.npz").exists()
    with ocp.CheckpointManager(str(tmp_path / "checkpoints")) as manager:
        for step in manager.all_steps():  # Whatever was checkpointed before the blow-up is finite.
            saved = manager.restore(step, args=ocp.args.StandardRestore())
            assert all(np.isfinite(x).all() for x in jax.tree.leaves(saved)), step
    with pytest.raises(condense_run.workdir_lib.WorkdirError, match="overwrite"):
        _condense(fns_d1, sets, tmp_path)  # Saner settings start over with --overwrite, as it says.


class _Killed(Exception):
    pass


def _die_after_saving(monkeypatch, at_step):
    real_save = checkpoint.Checkpointer.save

    def save(self, step, tree):
        real_save(self, step, tree)
        if step == at_step:
            raise _Killed()

    monkeypatch.setattr(checkpoint.Checkpointer, "save", save)


def _truncate_data_files(step_dir):
    for root, _, files in os.walk(step_dir):
        for name in files:
            path = os.path.join(root, name)
            if os.sep + "d" + os.sep in path:  # OCDBT data files: the arrays themselves.
                with open(path, "r+b") as f:
                    f.truncate(os.path.getsize(path) // 2)


@pytest.mark.xdist_group("crash_resume_straight")  # Shares the module's `straight` run (-n: one worker).
@pytest.mark.slow
def test_unreadable_newest_checkpoint_falls_back_to_the_previous_one(fns_d1, sets, straight, tmp_path, monkeypatch):
    _die_after_saving(monkeypatch, at_step=6)
    with pytest.raises(_Killed):
        _condense(fns_d1, sets, tmp_path)
    monkeypatch.undo()
    assert _steps(tmp_path) == [4, 6]
    _truncate_data_files(tmp_path / "checkpoints" / "6")
    resumed = _condense(fns_d1, sets, tmp_path)
    _assert_same_synthetic(straight[0], tmp_path)
    assert resumed["final"] == straight[1]["final"]
    assert (tmp_path / "checkpoints" / f"6{checkpoint.UNREADABLE_SUFFIX}").is_dir()  # Kept aside.
    assert _steps(tmp_path)[-1] == 7


def _tree(value):
    return {"images": jnp.full((2, 3), value, jnp.float32), "opt_state": (jnp.zeros(2), {"m": jnp.ones(3)})}


def _saved(directory, steps):
    ckpt = checkpoint.Checkpointer(str(directory))
    for step in steps:
        ckpt.save(step, _tree(float(step)))
    ckpt.close()


DAMAGE = {
    "truncated data": _truncate_data_files,
    "deleted manifest": lambda d: os.remove(os.path.join(d, "default", "manifest.ocdbt")),
    "deleted item": lambda d: shutil.rmtree(os.path.join(d, "default")),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_checkpointer_skips_a_damaged_newest_step(tmp_path, damage):
    _saved(tmp_path, [1, 2])
    DAMAGE[damage](str(tmp_path / "2"))
    ckpt = checkpoint.Checkpointer(str(tmp_path))
    step, tree = ckpt.restore_latest(_tree(0.0))
    assert step == 1 and ckpt.latest_step() == 1
    np.testing.assert_array_equal(tree["images"], np.full((2, 3), 1.0))
    ckpt.save(2, _tree(5.0))  # The step can be written again.
    assert ckpt.restore_latest(_tree(0.0))[0] == 2
    ckpt.close()


def test_checkpointer_with_no_readable_step_names_it_in_one_line(tmp_path):
    _saved(tmp_path, [3])
    _truncate_data_files(str(tmp_path / "3"))
    ckpt = checkpoint.Checkpointer(str(tmp_path))
    with pytest.raises(checkpoint.CheckpointError) as error:
        ckpt.restore_latest(_tree(0.0))
    message = str(error.value)
    assert isinstance(error.value, errors.UserError)  # The launchers turn it into `error: ...`.
    assert "\n" not in message and str(tmp_path / "3") in message and "--overwrite" in message
    assert ckpt.latest_step() == 3 and (tmp_path / "3").is_dir()  # Nothing moved.
    ckpt.close()
    empty = checkpoint.Checkpointer(str(tmp_path / "empty"))
    assert empty.restore_latest(_tree(0.0)) == (None, None)
    empty.close()  # As every Checkpointer here: an unclosed Orbax manager holds its resources until collected.


def test_a_kill_mid_save_leaves_nothing_that_blocks_the_next_save(tmp_path):
    _saved(tmp_path, [1])
    # What a SIGKILL during Orbax's save leaves: the step's temporary directory, never renamed.
    shutil.copytree(tmp_path / "1", tmp_path / "2.orbax-checkpoint-tmp-1234")
    ckpt = checkpoint.Checkpointer(str(tmp_path))
    assert ckpt.latest_step() == 1
    ckpt.save(2, _tree(2.0))
    ckpt.close()
    assert sorted(os.listdir(tmp_path)) == ["1", "2"]


# ---------------------------------------------------------------------------------------------
# Slow: the launchers SIGKILLed mid-run and resumed by the same command.


def _start(args, mock_examples, log_path, ticks=False):
    """The launcher on mock data (launch_flags.start), its output to ``log_path``. ticks: trace the progress ticks in,
    as a user's run does (conftest.py leaves them out of the suite's launcher runs): the Ctrl-C tests want a user's
    host callbacks."""
    env = launch_flags.launcher_env(DCJAX_MOCK_TICKS="1" if ticks else "0")
    return launch_flags.start(args, mock_examples, log_path, env=env)


def _tail(log_path, chars=3000):
    with open(log_path) as f:
        return f.read()[-chars:]


def _finish(proc, log_path, timeout=900):
    assert proc.wait(timeout=timeout) == 0, _tail(log_path)


def _kill_when(args, mock_examples, ready, log_path, timeout=900):
    """Starts the launcher and SIGKILLs it as soon as ready() (polled) holds."""
    proc = _start(args, mock_examples, log_path)
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            assert proc.poll() is None, f"finished before the kill point:\n{_tail(log_path)}"
            assert time.monotonic() < deadline, "kill point never reached"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


def _without_seconds(obj):
    """A results tree minus wall-clock fields (seconds, wall_seconds, ...), which never repeat."""
    if isinstance(obj, dict):
        return {k: _without_seconds(v) for k, v in obj.items() if "seconds" not in k}
    if isinstance(obj, list):
        return [_without_seconds(v) for v in obj]
    return obj


def _assert_same_npz(a, b, skip=()):
    with np.load(a) as x, np.load(b) as y:
        assert sorted(x.files) == sorted(y.files), (a, b)
        for name in x.files:
            if name not in skip:
                np.testing.assert_array_equal(x[name], y[name], err_msg=f"{b}: {name}")


def _assert_same_results(a, b, *names):
    for name in names:
        assert _without_seconds(checkpoint.read_json(os.path.join(a, name))) == _without_seconds(
            checkpoint.read_json(os.path.join(b, name))
        ), name


def _files(workdir):
    """The workdir's files, minus Orbax internals (random names) and the temporary file an
    atomic write killed mid-way leaves behind (never renamed into place, so never read)."""
    found = set()
    for root, dirs, names in os.walk(workdir):
        dirs[:] = [d for d in dirs if d != "checkpoints"]
        found |= {os.path.relpath(os.path.join(root, n), workdir) for n in names if not n.startswith(".tmp-")}
    return found


def _kill_and_resume(tmp_path, command, ready, resumed_line):
    """Runs command(workdir) on mock data, SIGKILLs it once ready(workdir) holds, and resumes it with the same
    command (its log must show resumed_line); returns the workdir."""
    crashed = tmp_path / "crashed"
    _kill_when(command(crashed), launch_flags.MOCK_EXAMPLES, lambda: ready(crashed), tmp_path / "killed.log")
    assert not (crashed / "results.json").exists(), "the kill came too late"
    _finish(_start(command(crashed), launch_flags.MOCK_EXAMPLES, tmp_path / "resumed.log"), tmp_path / "resumed.log")
    assert resumed_line in _tail(tmp_path / "resumed.log", 10**7)
    return crashed


def _condense_args(workdir):
    return [
        "experiments/condense.py",
        f"--workdir={workdir}",
        "--ipc=1",
        "--iterations=16",
        "--width=8",
        "--depth=1",
        "--batch_real=2",
        "--outer_loop=1",
        "--inner_loop=1",
        "--init=noise",
        "--num_eval=1",
        "--eval_epochs=1",
        "--eval_every=8",
        "--checkpoint_every=1",
    ]


def _assert_same_attack_run(straight, crashed):
    # `seconds`: each model's training time, the one wall-clock array of the export.
    _assert_same_npz(straight / "attack_data.npz", crashed / "attack_data.npz", skip=("seconds",))
    _assert_same_npz(straight / "trials.npz", crashed / "trials.npz")
    _assert_same_npz(straight / "split.npz", crashed / "split.npz")
    _assert_same_results(straight, crashed, "results.json")


# The uninterrupted runs are the end-to-end tests' (conftest.py's session fixtures), made by the same command.
@pytest.mark.xdist_group("mock_attack")  # Shares the session's `mock_attack` run with test_experiments.py.
@pytest.mark.slow
def test_attack_launcher_killed_after_a_chunk_resumes_bitwise(mock_attack, tmp_path):
    assert mock_attack.proc.returncode == 0, mock_attack.proc.stderr[-3000:]

    def ready(workdir):  # One finished chunk (a model file) on disk; seven chunks remain.
        return (workdir / "models" / "model_000.npz").exists()

    crashed = _kill_and_resume(tmp_path, launch_flags.attack, ready, "chunks already trained")
    assert _files(crashed) == _files(mock_attack.workdir)
    _assert_same_attack_run(mock_attack.workdir, crashed)


@pytest.mark.xdist_group("mock_study")  # Shares the session's `mock_study` run with test_experiments.py.
@pytest.mark.slow
def test_privacy_study_killed_after_a_row_resumes_bitwise(mock_study, tmp_path):
    """Its first two rows, killed after the first and resumed, are the whole study's two rows bit for bit: each row is
    an attack run of its own on the study's keys, whatever rows follow it."""
    assert mock_study.proc.returncode == 0, mock_study.proc.stderr[-3000:]
    rows = ["original", "subset"]

    def ready(workdir):  # The first row finished; the second is still to run.
        return (workdir / "original" / "results.json").exists()

    command = lambda workdir: launch_flags.study(workdir) + ["--rows=" + ",".join(rows)]  # noqa: E731
    crashed = _kill_and_resume(tmp_path, command, ready, "row original: already finished")
    straight = mock_study.workdir
    # The study's own files, less the synthetic sets' figures (neither row condenses), and the two rows'.
    assert {f for f in _files(crashed) if os.sep not in f} == {
        f for f in _files(straight) if os.sep not in f and not f.startswith("synthetic_")
    }
    for row in rows:
        assert _files(crashed / row) == _files(straight / row), row
        _assert_same_attack_run(straight / row, crashed / row)
    study = [checkpoint.read_json(str(w / "results.json"))["rows"] for w in (straight, crashed)]
    assert [_without_seconds(r) for r in study[0][: len(rows)]] == [_without_seconds(r) for r in study[1]]


# ---------------------------------------------------------------------------------------------
# Slow: Ctrl-C (issue 27). It lands within seconds even inside a long jitted call, exits 130 with one line
# saying what is saved, a second run into the same workdir is refused meanwhile, and the resume is bitwise (the
# condense launcher's, in one test with its SIGKILL resume: both against one uninterrupted run).


def _long_eval_args(workdir):
    """Two iterations, checkpointed once at the end, then one evaluation whose training is a single jitted call of
    minutes: ``_condense_args`` with later flags overriding (absl keeps a repeated flag's last value)."""
    long_eval = ["--eval_epochs=200000", "--eval_every=0", "--eval_baseline=false"]
    return _condense_args(workdir) + ["--iterations=2", "--checkpoint_every=10"] + long_eval


def _wait_for(proc, log_path, ready, timeout=300):
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"ended early:\n{_tail(log_path)}"
        assert time.monotonic() < deadline, f"never ready:\n{_tail(log_path)}"
        time.sleep(0.05)


def _interrupt(proc, log_path):
    """SIGINT, as Ctrl-C sends it; returns the seconds until the process ended."""
    tic = time.monotonic()
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    return time.monotonic() - tic


def _assert_interrupted(proc, log_path, saved):
    text = _tail(log_path, 10**7)
    assert proc.returncode == 130, text[-3000:]
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text[-3000:]
    last = text.strip().splitlines()[-1]
    assert last.startswith("interrupted; ") and saved in last and "rerun the same command" in last, last


@pytest.mark.slow
def test_ctrl_c_inside_a_long_jitted_evaluation_exits_within_seconds_and_one_writer_holds_the_workdir(tmp_path):
    workdir = tmp_path / "run"
    first = _start(_long_eval_args(workdir), 60, tmp_path / "first.log", ticks=True)
    try:
        # Inside the evaluation's training: the compile line, then seconds of the jitted call itself.
        _wait_for(first, tmp_path / "first.log", lambda: "x 200000 epochs" in _tail(tmp_path / "first.log", 10**7))
        second = _start(_long_eval_args(workdir), 60, tmp_path / "second.log", ticks=True)
        assert second.wait(timeout=120) == 2, _tail(tmp_path / "second.log")
        last = _tail(tmp_path / "second.log").strip().splitlines()[-1]
        assert last == (
            f"error: {workdir} is in use by another run (PID {first.pid}); wait for it to finish or stop it, "
            "or choose another --workdir"
        ), last
        time.sleep(3)
        seconds = _interrupt(first, tmp_path / "first.log")
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    _assert_interrupted(
        first, tmp_path / "first.log", f"the checkpoint after iteration 2 (in {workdir / 'checkpoints'})"
    )
    assert seconds < 5, seconds  # ~1 s: GRACE_S, then the watcher's exit; slack for a loaded machine.
    assert not (workdir / workdir_lock()).exists() and not (workdir / "results.json").exists()
    assert _steps(workdir) == [2]


def workdir_lock():
    from dcjax import workdir

    return workdir.LOCK  # Imported late: the module's other tests need none of it.


def _assert_same_condense_run(straight, crashed, log_path):
    assert "resuming from the checkpoint after iteration" in _tail(log_path, 10**7)
    assert _files(crashed) == _files(straight)
    _assert_same_synthetic(straight, crashed)
    _assert_same_results(straight, crashed, "results.json")
    assert [(m["iteration"], m["loss"]) for m in checkpoint.read_jsonl(str(crashed / "metrics.jsonl"))] == [
        (m["iteration"], m["loss"]) for m in checkpoint.read_jsonl(str(straight / "metrics.jsonl"))
    ]
    assert checkpoint.read_jsonl(str(crashed / "evals.jsonl")) == checkpoint.read_jsonl(str(straight / "evals.jsonl"))


@pytest.mark.users_emitters  # A run resumed mid-way against the straight run, bit for bit (tests/conftest.py).
@pytest.mark.slow
def test_condense_launcher_killed_or_interrupted_by_ctrl_c_mid_run_resumes_bitwise(tmp_path):
    """Ctrl-C'd (exit 130, one line) once two checkpoints are on disk, then its resumed run SIGKILLed once it has saved
    two checkpoints of its own: the same command, run a third time, ends with the uninterrupted run's outputs bit for
    bit. One chain of runs in one workdir, against one straight run, which goes alongside (the interruption points are
    polled, not timed)."""
    straight, workdir = tmp_path / "straight", tmp_path / "run"

    def checkpoints_past(step):  # The interruption lands in the iterations after them.
        return lambda: (workdir / "checkpoints").is_dir() and len([s for s in _steps(workdir) if s > step]) >= 2

    reference = _start(_condense_args(straight), 60, tmp_path / "straight.log", ticks=True)
    try:
        proc = _start(_condense_args(workdir), 60, tmp_path / "interrupted.log", ticks=True)
        _wait_for(proc, tmp_path / "interrupted.log", checkpoints_past(0))
        _interrupt(proc, tmp_path / "interrupted.log")
        _assert_interrupted(proc, tmp_path / "interrupted.log", "the checkpoint after iteration")
        saved = max(_steps(workdir))
        _kill_when(_condense_args(workdir), 60, checkpoints_past(saved), tmp_path / "killed.log")
        assert f"resuming from the checkpoint after iteration {saved}" in _tail(tmp_path / "killed.log", 10**7)
        assert not (workdir / "results.json").exists(), "the kill came too late"
        _finish(_start(_condense_args(workdir), 60, tmp_path / "resumed.log", ticks=True), tmp_path / "resumed.log")
        _finish(reference, tmp_path / "straight.log")
    finally:
        if reference.poll() is None:
            reference.kill()
            reference.wait()
    _assert_same_condense_run(straight, workdir, tmp_path / "resumed.log")


_CTRL_C_IN_A_TICK = """
import os, signal, sys, time
import jax, jax.numpy as jnp
from dcjax import interrupt, progress

def on_exit():
    sys.stderr.write("interrupted, exit 130\\n"); sys.stderr.flush(); os._exit(130)

interrupt.install(on_exit)

def body(carry, index):
    progress.tick(index, 3, 1)
    return carry + 1.0, None

def ctrl_c_then_python(units):  # The handler runs at the next bytecode: inside the callback, under XLA.
    os.kill(os.getpid(), signal.SIGINT)
    sum(range(10000))

with progress.task("ticks", 3) as tracker:
    tracker.advance = ctrl_c_then_python
    jax.block_until_ready(jax.jit(lambda x: jax.lax.scan(body, x, jnp.arange(3))[0])(0.0))
time.sleep(30)
sys.exit(3)
"""


def test_ctrl_c_during_a_progress_tick_exits_130_not_as_an_xla_error(tmp_path):
    """A Ctrl-C whose handler runs inside a host callback (a progress tick, which XLA calls on the main thread) must not
    raise there: XLA turned that into an INTERNAL error, exit 1 and a traceback (seen once in
    test_condense_launcher_killed_or_interrupted_by_ctrl_c_mid_run_resumes_bitwise). The watcher exits for it, as when
    the main thread is inside XLA: status 130 and the one line, within seconds."""
    script = tmp_path / "tick.py"
    script.write_text(_CTRL_C_IN_A_TICK)
    start = time.monotonic()
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 130, proc.stderr[-3000:]
    assert "interrupted, exit 130" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert time.monotonic() - start < 60
