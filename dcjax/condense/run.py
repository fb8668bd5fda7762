"""A resumable condensation run in a workdir: iterate, log, evaluate, checkpoint, write.

Python drives the loop *between* jitted condensation iterations (DC, DSA or DM), so that logging,
evaluation and checkpointing never enter the compiled hot path: one compiled iteration, reused.

Keys, all from ``jax.random.key(seed)``: init = fold_in(root, 0); iteration t uses
fold_in(fold_in(root, 1), t); the evaluation at iteration t uses fold_in(fold_in(root, 2), t);
the random-real baseline uses fold_in(root, 3). Because every key is a function of the seed
and the iteration only, a resumed run replays exactly the keys of an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from dcjax import checkpoint
from dcjax import condense
from dcjax import data as data_lib
from dcjax import errors
from dcjax import evaluation
from dcjax import host
from dcjax import models
from dcjax import interrupt
from dcjax import keys as keys_lib
from dcjax import plots
from dcjax import progress
from dcjax import train as train_lib
from dcjax import workdir as workdir_lib
from dcjax.condense import drive, memory
from dcjax.models import ModelConfig, ModelFns
from dcjax.progress import format_eta as _format_eta

SYNTHETIC = "synthetic.npz"
METRICS = "metrics.jsonl"
EVALS = "evals.jsonl"


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything that determines a condensation run's outputs."""

    dataset: str = "mnist"
    seed: int = 0
    model: ModelConfig = ModelConfig()
    condense: condense.CondenseConfig = condense.CondenseConfig()
    eval: evaluation.EvalConfig = evaluation.EvalConfig()
    eval_every: int = 500  # 0: evaluate only at the end (and at 0 for real init).
    eval_baseline: bool = True  # Also evaluate a random real subset of the same size.
    checkpoint_every: int = 10

    def __post_init__(self):
        if not 0 <= self.seed < 2**32:  # jax.random.key(seed) wraps outside: two seeds, one key.
            raise errors.ConfigError("seed", f"must be in [0, 2**32), got {self.seed}")
        if self.eval_every < 0:
            raise errors.ConfigError("eval_every", f"must be >= 0, got {self.eval_every}")
        if self.checkpoint_every < 1:
            raise errors.ConfigError("checkpoint_every", f"must be >= 1, got {self.checkpoint_every}")

    def eval_points(self) -> list[int]:
        """Iterations after which the synthetic set is evaluated (always includes the end)."""
        total = self.condense.iterations
        points = set(range(0, total + 1, self.eval_every)) if self.eval_every > 0 else set()
        if self.condense.init == "real":
            points.add(0)  # The initial set's accuracy: what condensation must improve on.
        return sorted(points | {total})


def _costs(config: RunConfig, num_classes: int) -> tuple[float, float]:
    """(one iteration, one evaluation) in image passes through the network (forward + backward = 1): only the
    plan's shares and an ETA before a kind of phase is timed rest on these estimates."""
    c, (outer, inner) = config.condense, config.condense.loops
    synthetic = num_classes * c.ipc
    if condense.METHODS[c.method].gradient_matching:
        # Per outer step: real gradients, second-order synthetic gradients (~3x), the inner loop's training.
        iteration = float(outer * (num_classes * c.batch_real + 3 * synthetic + inner * min(synthetic, c.batch_train)))
    else:  # DM: real images forward only (~1/3 of a pass), synthetic ones forward and backward.
        iteration = num_classes * (c.batch_real / 3 + c.ipc)
    evaluation = config.eval.num_models * config.eval.train.epochs * synthetic
    return float(iteration), float(evaluation)


def job_plan(config: RunConfig, num_classes: int, start: int = 0, done_evals=()) -> progress.JobPlan:
    """The phases left from iteration ``start`` (evaluations in ``done_evals`` done): evaluations at their
    points, the iterations between them, the baseline last."""
    iteration, evaluation = _costs(config, num_classes)
    total, phases, previous = config.condense.iterations, [], start
    for point in config.eval_points():
        if point > previous:
            count = point - previous
            phases.append(progress.Phase(f"iterations {previous + 1}-{point}", "iterations", iteration * count, count))
            previous = point
        if point >= start and point not in done_evals:
            name = "initial" if point == 0 else ("final" if point == total else f"iteration-{point}")
            phases.append(progress.Phase(f"{name} evaluation", "evaluation", evaluation))
    if config.eval_baseline:
        phases.append(progress.Phase("baseline evaluation", "evaluation", evaluation))
    return progress.JobPlan(phases)


def _keys(seed: int):
    return drive.key_streams(jax.random.key(seed))


class _Run:
    """State of one run: the static pieces plus what is on disk."""

    def __init__(
        self, config: RunConfig, fns: ModelFns, train: data_lib.ArrayDataset, test: data_lib.ArrayDataset, workdir: str
    ):
        self.config, self.fns, self.workdir = config, fns, workdir
        self.keys = _keys(config.seed)
        self.pool = jnp.asarray(train.images)
        self.train, self.test = train, test
        self.index = data_lib.build_class_index(train.labels, train.num_classes)
        self.labels = condense.synthetic_labels(train.num_classes, config.condense.ipc)
        self.checkpointer = checkpoint.Checkpointer(workdir_lib.path(workdir, "checkpoints"))

    def initial_state(self):
        return drive.initial_state(self.config.condense, jax.random.key(self.config.seed), self.pool, self.index)

    def evaluate(self, images, iteration: int) -> dict:
        key = keys_lib.item(self.keys["eval"], iteration)
        result = evaluation.evaluate_training_set(
            self.fns, self.config.eval, key, (images, self.labels), (self.test.images, self.test.labels)
        )
        logging.info(
            "eval at iteration %d: test accuracy %.2f%% +- %.2f (%d models)",
            iteration,
            100 * result["mean"],
            100 * result["std"],
            len(result["accuracies"]),
        )
        return {"iteration": iteration, **result}

    def path(self, name: str) -> str:
        return workdir_lib.path(self.workdir, name)


def _restore(run: _Run, state, resuming: bool):
    """Latest checkpoint (or the initial state) and the records made before it."""
    # An unreadable newest checkpoint falls back to the previous one (checkpoint.Checkpointer).
    step, saved = (
        run.checkpointer.restore_latest({"images": state.images, "opt_state": state.opt_state})
        if resuming
        else (None, None)
    )
    if step is None or saved is None:
        return state, 0, [], []
    state = condense.SynState(saved["images"], saved["opt_state"])
    metrics = [m for m in checkpoint.read_jsonl(run.path(METRICS)) if m["iteration"] < step]
    evals = [e for e in checkpoint.read_jsonl(run.path(EVALS)) if e["iteration"] <= step]
    logging.info("resuming from the checkpoint after iteration %d", step)
    interrupt.note_saved(f"the checkpoint after iteration {step} (in {run.path('checkpoints')})")
    return state, step, metrics, evals


class DivergedError(errors.UserError, ValueError):
    """Condensation reached a non-finite loss or synthetic set; the message says what to do."""


def _diverged(run: _Run, what: str, t: int, metrics: list, evals: list) -> DivergedError:
    """The error for a divergence at iteration t, after cutting both logs back to the last
    checkpoint: a non-finite state is never checkpointed, so the workdir stays one consistent
    (resumable) state and no output of the diverged run is written."""
    last = run.checkpointer.latest_step()
    checkpoint.write_jsonl(run.path(METRICS), [m for m in metrics if m["iteration"] < (last or 0)])
    checkpoint.write_jsonl(run.path(EVALS), [e for e in evals if e["iteration"] <= (last or 0)])
    kept = (
        f"the last good checkpoint (after iteration {last}) is kept in {run.path('checkpoints')}"
        if last
        else "no checkpoint was made before it"
    )
    return DivergedError(
        f"condensation diverged: {what} at iteration {t + 1} of "
        f"{run.config.condense.iterations}; {kept}; lower --lr_img (or --lr_net) "
        "and rerun with --overwrite"
    )


def _iterate(run: _Run, state, start: int, metrics: list, evals: list, plan: progress.JobPlan):
    """Runs iterations start..end, evaluating and checkpointing on schedule (``plan``: the job's phases).

    The iterations between evaluation points are one segment each (one phase of the plan); an evaluation at a
    point runs before the segment that starts there.
    """
    cfg = run.config
    total = cfg.condense.iterations
    loop = drive.Loop(condense.make_iteration_fn(run.fns, cfg.condense), (run.pool, run.index), run.keys["iterations"])
    points = cfg.eval_points()
    done_evals = {e["iteration"] for e in evals}
    for segment in drive.segments(start, total, points):
        if segment[0] in points and segment[0] not in done_evals:
            _evaluate(run, plan, state, segment[0], evals)
        plan.next()
        after = _AfterIteration(run, plan, metrics, evals, start, segment[0])
        state = drive.iterate(dataclasses.replace(loop, after=after), state, segment)
    if total not in done_evals:  # The end is always an evaluation point.
        _evaluate(run, plan, state, total, evals)
    return state, metrics, evals


def _evaluate(run: _Run, plan: progress.JobPlan, state, t: int, evals: list) -> None:
    """The evaluation at iteration t, its phase of the plan, appended to ``evals`` and written."""
    plan.next()
    evals.append(run.evaluate(state.images, t))
    checkpoint.write_jsonl(run.path(EVALS), evals)


@dataclasses.dataclass(frozen=True)
class _AfterIteration:
    """The ``drive.Loop.after`` of a segment: the iteration's metrics and line, divergence checks, checkpoints.

    metrics, evals: the run's records, appended to (and cut back on divergence); start: this process's first
    iteration; segment: the segment's first.
    """

    run: _Run
    plan: progress.JobPlan
    metrics: list
    evals: list
    start: int
    segment: int

    def __call__(self, t: int, state, out: dict, started: float) -> None:
        run, metrics, total = self.run, self.metrics, self.run.config.condense.iterations
        loss = float(out["loss"])  # Blocks until the iteration is done: honest timing.
        if not np.isfinite(loss):  # Free: the loss is on the host already.
            raise _diverged(run, f"loss {loss}", t, metrics, self.evals)
        metrics.append({"iteration": t, "loss": loss, "seconds": time.perf_counter() - started})
        _log_iteration(run, self.plan, metrics, metrics[len(metrics) - (t - self.start) :], t - self.segment + 1)
        if (t + 1) % run.config.checkpoint_every == 0 or t + 1 == total:
            # A finite loss can still come with an overflowing update; never checkpoint that.
            if not bool(jnp.isfinite(state.images).all()):
                raise _diverged(run, "non-finite synthetic images", t, metrics, self.evals)
            checkpoint.write_jsonl(run.path(METRICS), metrics)
            run.checkpointer.save(t + 1, {"images": state.images, "opt_state": state.opt_state})
            interrupt.note_saved(f"the checkpoint after iteration {t + 1} (in {run.path('checkpoints')})")


def _log_iteration(run: _Run, plan: progress.JobPlan, metrics: list, timed: list, in_segment: int) -> None:
    """The iteration's line: loss, time, the ETA of the iterations and of the whole job.

    ``timed``: this process's iterations after its first, whose time includes compiling: until one is timed
    both ETAs read '?'.
    """
    total, last = run.config.condense.iterations, metrics[-1]
    eta = "?"
    if timed:
        recent = float(np.median([m["seconds"] for m in timed[-10:]]))
        eta = _format_eta(recent * (total - last["iteration"] - 1))
        plan.timed(in_segment, recent)
    logging.info(
        "iteration %d/%d  loss %.4f  %.1f s/it  ETA %s, job ETA %s",
        last["iteration"] + 1,
        total,
        last["loss"],
        last["seconds"],
        eta,
        plan.eta_text(),
    )


def _baseline(run: _Run) -> dict:
    """The naive baseline: a random real subset of the same size, same evaluation protocol."""
    cfg = run.config
    subset_key, eval_key = jax.random.split(run.keys["baseline"])
    indices = data_lib.stratified_subset(subset_key, run.train.labels, cfg.condense.ipc, run.train.num_classes)
    result = evaluation.evaluate_training_set(
        run.fns,
        cfg.eval,
        eval_key,
        (run.train.images[indices], run.train.labels[indices]),
        (run.test.images, run.test.labels),
    )
    logging.info(
        "random real subset (%d per class): %.2f%% +- %.2f", cfg.condense.ipc, 100 * result["mean"], 100 * result["std"]
    )
    return {"indices": np.asarray(indices).tolist(), **result}


def _platform(run: _Run) -> dict:
    """Where the results' floats come from: backend, devices, commit and CPU (``host.provenance``), and the
    per-backend lowering choices (``models.lowering`` and the gradient microbatch)."""
    microbatch = train_lib.resolve_microbatch(run.config.condense.microbatch, run.fns)
    return {
        "platform": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "provenance": host.provenance(),
        "lowering": {**models.lowering(run.config.model), "microbatch": microbatch},
    }


def _save_synthetic(run: _Run, state, init_indices) -> np.ndarray:
    """Writes synthetic.npz (images, labels, init_indices, seed, config) and returns its images [K*ipc, H, W, C]."""
    cfg = run.config
    images = np.asarray(state.images)
    checkpoint.write_npz(
        run.path(SYNTHETIC),
        images=images,
        labels=np.asarray(run.labels),
        init_indices=np.asarray(init_indices),
        seed=cfg.seed,
        config=checkpoint.to_json(dataclasses.asdict(cfg)),
    )
    return images


def _plot_run(run: _Run, images: np.ndarray, metrics: list[dict], evals: list[dict]) -> None:
    """synthetic.png (the set [K*ipc, H, W, C], one row per class), loss.png (when there are iteration metrics)
    and accuracy.png (the synthetic set's test accuracy at each evaluation)."""
    cfg = run.config
    title = f"{cfg.condense.method.upper()} synthetic set, {cfg.condense.ipc} per class"
    plots.image_grid(
        run.path("synthetic.png"), data_lib.denormalize(images, run.train.name), run.train.num_classes, title
    )
    if metrics:
        plots.curve(
            run.path("loss.png"),
            [m["iteration"] + 1 for m in metrics],
            {"matching loss": [m["loss"] for m in metrics]},
            "iteration",
            "loss",
        )
    plots.curve(
        run.path("accuracy.png"),
        [e["iteration"] for e in evals],
        {"synthetic set": [100 * e["mean"] for e in evals]},
        "iteration",
        "test accuracy (%)",
    )


def _results(run: _Run, metrics: list[dict], evals: list[dict], baseline) -> dict:
    """results.json's contents: the config, the evaluations (last one final), the baseline and the iteration time."""
    cfg = run.config
    seconds = [m["seconds"] for m in metrics[1:]] or [m["seconds"] for m in metrics]
    return {
        "config": dataclasses.asdict(cfg),
        "final": evals[-1],
        "evals": evals,
        "initial_set": evals[0] if cfg.condense.init == "real" else None,
        "random_real_baseline": baseline,
        "median_seconds_per_iteration": float(np.median(seconds)) if seconds else None,
        **_platform(run),
    }


def _write_outputs(run: _Run, state, init_indices, metrics, evals, baseline) -> dict:
    """synthetic.npz, figures and results.json (written last: it marks the run finished)."""
    images = _save_synthetic(run, state, init_indices)
    _plot_run(run, images, metrics, evals)
    results = _results(run, metrics, evals, baseline)
    checkpoint.write_json(run.path(workdir_lib.RESULTS), results)
    return results


def run_condensation(
    config: RunConfig,
    fns: ModelFns,
    train: data_lib.ArrayDataset,
    test: data_lib.ArrayDataset,
    workdir: str,
    overwrite: bool = False,
) -> dict:
    """Condenses ``train`` into ipc images per class in ``workdir``; resumes if interrupted.

    Args:
      config: the run's settings (recorded in config.json).
      fns: the network used for matching and for evaluation.
      train: the real pool to condense (its indices are what init_indices refer to).
      test: held-out data for evaluation.
      workdir: output directory (see ``dcjax.workdir`` for the overwrite/resume rules).
      overwrite: discard whatever the workdir holds.

    Returns:
      The results dict also written to results.json.
    """
    workdir_lib.check_inputs(config, fns, train, test)  # config.json must describe this very run.
    # Data-dependent checks (batch_real, and ipc for real init, within the smallest class) before
    # anything is written: bad settings leave no workdir behind.
    condense.check_batch_real(config.condense, data_lib.build_class_index(train.labels, train.num_classes))
    memory.check_condensation(config, fns, train, test)  # Refuses, before any work, what cannot fit.
    resuming = workdir_lib.prepare(workdir, dataclasses.asdict(config), overwrite)
    run = _Run(config, fns, train, test, workdir)
    try:
        state, init_indices = run.initial_state()
        state, start, metrics, evals = _restore(run, state, resuming)
        plan = job_plan(config, train.num_classes, start, {e["iteration"] for e in evals})
        with progress.job(plan):
            state, metrics, evals = _iterate(run, state, start, metrics, evals, plan)
            if config.eval_baseline:
                plan.next()
            baseline = _baseline(run) if config.eval_baseline else None
        return _write_outputs(run, state, init_indices, metrics, evals, baseline)
    finally:
        run.checkpointer.close()
