r"""The poster tier's parts, each timed in fresh processes, before and after, and the tier's whole cost predicted.

Parts (MNIST shapes [28, 28, 1], K = 10 classes, ConvNet width 32, depth 3, instancenorm, avgpool, im2col, fp32:
the CPU tier's network, experiments/flags/privacy_study_cpu.cfg; since issue 26 its forward-only passes, scoring and
DM's real embeddings, run in ``models.forward_only``'s lowering), each on real-shaped N(0, 1) data:
  dc           one DC iteration (``condense.make_iteration_fn``): ipc 10, outer 10, inner 10, batch_real 128 per
               class, real init, from a pool of 30,000 images (a pipeline's private half, 3,000 per class);
  dsa          the same with DSA (DC's loops plus the Siamese augmentation);
  dm           one DM iteration: ipc 10, batch_real 256 per class, the same pool;
  train_epoch  one epoch of training a target on 30,000 images at batch 256 (118 steps, no augmentation: the
               'original' row), through ``engine.train_models`` as the study trains (one model, epochs=1);
  dpsgd_step   one DP-SGD step on the same 30,000 images: Poisson sampling at expected batch 256 into B_max slots
               (overflow budget 1e-3 x delta / (1 + e), delta 1e-5, over --dp_epochs expected epochs), per-example
               clipping (``train.run_poisson_steps``; 10 steps per timed call, divided by 10);
  score        scoring one model: its logits on 70,000 images x 2 queries (``queries.make_queries``, then
               ``engine.predict_models``, as ``attack_run`` scores a pool and a population).
Each part's row: seconds per unit (median [min, max] over every timed unit of every process, so the spread is over
--processes >= 3 fresh processes), XLA's FLOPs of one unit, GFLOP/s, and the fraction of a jitted 2048^3 fp32
matmul's rate measured in the same process. FLOPs: an iteration or a training holds loops whose body XLA's cost
analysis counts once, so the condensation parts count from one forward pass per image (6.95 MFLOP at width 32;
``timing.condense_iteration_flops``, as benchmarks/condense_step.py): dc and dsa 4.96e11, dm 1.99e10; train_epoch is
118 x the count of one jitted whole-batch step (as benchmarks/engine.py), 6.05e11; dpsgd_step the count of the
jitted clipped per-example gradients of 256 images, 5.14e9; score 140,000 forward passes, 9.73e11. Each part's
warm-up (its compilation; for score one query's logits, the same programs at half the cost) is timed apart
(warmup_s in the JSON), never in the median.

Each process measures every requested part (a warm-up, then --repeats timed units) and prints JSON lines; the parent
runs --processes of them per side and, with --before=<another checkout>, alternates before, after, before, after, ...
Which library a process measures is chosen as benchmarks/pipelines.py does, by PYTHONPATH=<checkout> (before: the
other checkout; after: the checkout this file is in), so the benchmark code is the same on both sides and only
dcjax/ differs; every process reports the path and commit it imported (``timing.library``). Compiled programs are
shared between the processes through a fresh JAX persistent compilation cache (--compile_cache; removed at the end),
so after the first process of a side a warm-up is mostly tracing. JAX does not cache a program that holds a host
callback, so the children trace without the study's progress ticks (--noprogress; a few host callbacks per
iteration or epoch, negligible time).

The poster tier's predicted cost (``_predict``): every row runs --pipelines pipelines, each the sum of
  original  --epochs x train_epoch                                   (targets train on ~30,000 images)
  subset    small training                                           (100 real images)
  dc, dsa   --dc_iterations x dc (or dsa) + small training
  dm        --dm_iterations x dm + small training
  dpsgd     round(--dp_epochs x 30,000 / 256) x dpsgd_step
plus score, where small training is --small_epochs x 100 images at train_epoch's seconds per image (an estimate:
the 10-per-class set trains in one batch of 100, with augmentation, not timed here). Compilation (once per row) is
not in the prediction. The rows are --rows (kind: the name's prefix). Defaults: --epochs 40 is the 'original' row's
--epochs of experiments/flags/privacy_study_cpu.cfg (attack_sanity_cpu.cfg has 40 too); --small_epochs 150 is
privacy_study_cpu.cfg's; --dp_epochs 40 is privacy_study_more_cpu.cfg's; --dc_iterations 200 and --dm_iterations
2000 are issue 26's.

  python benchmarks/poster_parts.py --before=/path/to/old/checkout --processes=3      # issue 26's table
  python benchmarks/poster_parts.py --parts=dc,dm --processes=3 --out=/tmp/parts.json  # this checkout only
  python benchmarks/poster_parts.py --tiny --processes=1 --repeats=1                  # seconds: checks it works

Expected run time of the first command (estimated from the FLOP counts above at ~190 GFLOP/s matmul and 0.2-0.3 of
it, as DM reaches at width 32; not measured): a unit is ~9-13 s (dc, dsa), ~0.4-0.5 s (dm), ~11-16 s (train_epoch),
~0.1 s (dpsgd_step), ~17-26 s (score); a process (warm-ups and one timed unit of each: 4.8e12 FLOPs) ~1.4-2.1
minutes, six of them 8.4-12.6 minutes, plus compilation (~1-1.5 minutes in the first process of each side, ~15 s of
tracing in the others): ~12-16 minutes. If that is over the issue's 15, split --parts over two runs.
"""

import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any, NamedTuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

import timing  # noqa: E402

PARTS = ("dc", "dsa", "dm", "train_epoch", "dpsgd_step", "score")
flags.DEFINE_list("parts", list(PARTS), f"Parts to time: {', '.join(PARTS)}.")
flags.DEFINE_integer("repeats", 1, "Timed units of each part per process (after one warm-up call).")
flags.DEFINE_integer("processes", 3, "Fresh processes per side (before, after); the spread is over them.")
flags.DEFINE_string("before", None, "Another checkout (its root, holding dcjax/): alternate processes with it.")
flags.DEFINE_bool(
    "tiny", False, "Tiny shapes (width 8, depth 1, a few images): checks that the benchmark works, in seconds."
)
flags.DEFINE_string("out", None, "JSON file for every raw measurement and the summary (written atomically).")
flags.DEFINE_bool("compile_cache", True, "Share compiled programs between the processes (a fresh persistent cache).")
flags.DEFINE_integer("pipelines", 8, "Pipelines per row of the poster tier (prediction).")
flags.DEFINE_list(
    "rows",
    ["original", "dc_real", "dsa_real", "dm_real", "dpsgd_eps1", "dpsgd_eps4", "dpsgd_eps8"],
    "The poster tier's rows (prediction); each row's kind is its name's prefix: original, subset, dc, dsa, dm, dpsgd.",
)
flags.DEFINE_integer("dc_iterations", 200, "DC and DSA iterations per pipeline (prediction).")
flags.DEFINE_integer("dm_iterations", 2000, "DM iterations per pipeline (prediction).")
flags.DEFINE_integer("epochs", 40, "Epochs of a target on ~30,000 images (privacy_study_cpu.cfg's --epochs).")
flags.DEFINE_integer("small_epochs", 150, "Epochs on a 100-image set (privacy_study_cpu.cfg's --small_epochs).")
flags.DEFINE_integer("dp_epochs", 40, "DP-SGD expected epochs (privacy_study_more_cpu.cfg); also sizes B_max.")
flags.DEFINE_bool("progress", False, "Trace in the study's progress ticks (host callbacks: nothing is cached then).")
flags.DEFINE_bool("child", False, "Internal: measure in this process and print JSON lines.")
FLAGS = flags.FLAGS

K, SHAPE = 10, (28, 28, 1)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The poster tier's shapes (module docstring) and tiny ones for the tests. K x per_class images are both the
# condensation pool and the training set (train_epoch, dpsgd_step); batch is the training batch and DP's expected one;
# dp_steps: DP-SGD steps per timed call; matmul_n: the side of the matmul that measures the machine's rate.
SHAPES = {
    "poster": dict(width=32, depth=3, ipc=10, outer=10, inner=10, dc_real=128, dm_real=256, per_class=3000, batch=256),
    "tiny": dict(width=8, depth=1, ipc=2, outer=2, inner=2, dc_real=4, dm_real=8, per_class=16, batch=32),
}
SHAPES["poster"].update(dp_steps=10, score_images=70000, queries=2, matmul_n=2048)
SHAPES["tiny"].update(dp_steps=2, score_images=64, queries=2, matmul_n=256)
POSTER_IMAGES, POSTER_BATCH, SMALL_SET = 30000, 256, 100  # The prediction's training set, DP batch, K x ipc.


# ---- One process: build each part's unit, time it, print JSON lines. ----


class Unit(NamedTuple):
    """What one part times: call(t) runs ``per_call`` units (t: the call's index, for its keys); warm() compiles the
    same programs (None: call(0)); flops: XLA's FLOPs of one unit."""

    call: Callable[[int], Any]
    flops: float
    per_call: int = 1
    warm: Callable[[], Any] | None = None


def _shapes() -> dict:
    return SHAPES["tiny" if FLAGS.tiny else "poster"]


def _context(s: dict) -> dict:
    """The network and the data every part shares: pool [K * per_class, 28, 28, 1] (class-major), its labels,
    its ClassIndex, and the network's variables."""
    import jax
    import numpy as np
    from dcjax import models

    fns = models.make_model(models.ModelConfig(width=s["width"], depth=s["depth"]), SHAPE, K)
    pool, index = timing.random_pool(K, SHAPE, s["per_class"])
    labels = jax.numpy.asarray(np.repeat(np.arange(K, dtype=np.int32), s["per_class"]))
    variables = fns.init(jax.random.key(2))
    f = timing.forward_flops(fns, SHAPE)  # XLA's FLOPs of one image's forward pass.
    return {"fns": fns, "pool": pool, "index": index, "labels": labels, "variables": variables, "f": f}


def _condense_unit(ctx: dict, s: dict, method: str) -> Unit:
    """One condensation iteration of ``method`` (dc, dsa, dm) on the pool; the synthetic state is threaded through
    the calls (the iteration donates it)."""
    import jax
    from dcjax import condense

    loops = {} if method == "dm" else {"outer_loop": s["outer"], "inner_loop": s["inner"]}
    batch_real = s["dm_real"] if method == "dm" else s["dc_real"]
    lr_img = 1.0 if method == "dm" else 0.1  # Each method's paper rate (speed does not depend on it).
    cfg = condense.CondenseConfig(
        method=method, ipc=s["ipc"], batch_real=batch_real, init="real", lr_img=lr_img, **loops
    )
    state = [condense.init_synthetic(cfg, jax.random.key(1), ctx["pool"], ctx["index"])[0]]
    step = condense.make_iteration_fn(ctx["fns"], cfg)

    def call(t: int):
        state[0], out = step(state[0], (ctx["pool"], ctx["index"]), jax.random.key(10 + t))  # State is donated.
        return out

    return Unit(call, timing.condense_iteration_flops(method, ctx["f"], cfg, cfg.loops[0], K))


def _train_unit(ctx: dict, s: dict) -> Unit:
    """One epoch of one freshly initialised target over the whole pool at batch s["batch"] (no augmentation)."""
    import functools

    import jax
    import jax.numpy as jnp
    from dcjax import engine, train

    config = train.TrainConfig(epochs=1, batch_size=s["batch"])
    n = ctx["pool"].shape[0]
    data = (ctx["pool"], ctx["labels"], jnp.ones((1, n), bool))
    call = lambda t: engine.train_models(ctx["fns"], config, jax.random.split(jax.random.key(t), 1), data)  # noqa: E731
    # A whole-batch step (microbatch 0): a chunked one is a scan, whose body XLA would count once.
    trainer = train.Trainer(ctx["fns"], train.make_optimizer(config, config.lr), microbatch=0)
    state = train.TrainState(ctx["variables"], trainer.optimizer.init(ctx["variables"]["params"]))
    batch = (ctx["pool"][: s["batch"]], ctx["labels"][: s["batch"]], jnp.ones(s["batch"]))
    step = jax.jit(functools.partial(train.train_step, trainer))
    steps = train.make_schedule(config, n).steps_per_epoch
    return Unit(call, steps * timing.compiled_flops(step, state, batch, jax.random.key(3)))


def _dpsgd_unit(ctx: dict, s: dict) -> Unit:
    """One DP-SGD step (s["dp_steps"] per call) on the whole pool at expected batch s["batch"], clip 1, noise 1;
    B_max as the study sizes it (``study.dp_guarantee``) for --dp_epochs expected epochs at epsilon 1."""
    import functools

    import jax
    import jax.numpy as jnp
    from dcjax import dpsgd, train

    n = ctx["pool"].shape[0]
    q, steps, expected = dpsgd.poisson_schedule(n, s["batch"], FLAGS.dp_epochs)
    budget = 1e-3 * 1e-5 / (1 + math.e)  # study.DP_OVERFLOW_FRACTION x delta / (1 + e^epsilon), delta 1e-5.
    capacity = dpsgd.poisson_capacity(n + 1, q, steps, budget)
    dp = dpsgd.DPConfig(num_examples=n, capacity=capacity, overflow_budget=budget)
    config = train.TrainConfig(epochs=FLAGS.dp_epochs, batch_size=s["batch"], dp=dp)
    microbatch = train.resolve_microbatch(config.microbatch, ctx["fns"])  # As train._train_dp resolves it.
    optimizer = train.make_optimizer(config, config.lr)
    trainer = train.Trainer(ctx["fns"], optimizer, microbatch=microbatch, dp=dp, dp_denominator=float(expected))
    plan = train.PoissonPlan(q, capacity, s["dp_steps"], 1)
    run = jax.jit(functools.partial(train.run_poisson_steps, trainer, plan))
    data = (ctx["pool"], ctx["labels"], jnp.ones(n, bool))
    call = lambda t: run(ctx["variables"], data, jax.random.key(t))  # noqa: E731
    # FLOPs of the expected batch's clipped per-example gradients (the step's scan over chunks counts its body once).
    loss = dpsgd.example_loss(ctx["fns"], ctx["variables"])
    grads = jax.jit(lambda p, x, y: dpsgd.clipped_example_grads(loss, p, x, y, dp.l2_clip))
    flops = timing.compiled_flops(grads, ctx["variables"]["params"], ctx["pool"][:expected], ctx["labels"][:expected])
    return Unit(call, flops, s["dp_steps"])


def _score_unit(ctx: dict, s: dict) -> Unit:
    """One model's logits on s["score_images"] images x s["queries"] queries, as
    ``attack_run._query_logits`` scores them (one ``engine.predict_models`` per query, the model axis of length 1)."""
    import jax
    from dcjax import engine
    from dcjax.privacy import queries

    images = jax.random.normal(jax.random.key(4), (s["score_images"],) + SHAPE)
    variables = jax.tree.map(lambda x: x[None], ctx["variables"])

    def call(t: int):
        return [engine.predict_models(ctx["fns"], variables, q) for q in queries.make_queries(images, s["queries"])]

    def warm():  # Every query's shifts, one query's logits: the same compiled programs as a call, at half the cost.
        return engine.predict_models(ctx["fns"], variables, queries.make_queries(images, s["queries"])[0])

    return Unit(call, s["score_images"] * s["queries"] * ctx["f"], warm=warm)


def _unit(ctx: dict, s: dict, part: str) -> Unit:
    """``part``'s Unit."""
    if part in ("dc", "dsa", "dm"):
        return _condense_unit(ctx, s, part)
    return {"train_epoch": _train_unit, "dpsgd_step": _dpsgd_unit, "score": _score_unit}[part](ctx, s)


def _time(unit: Unit, repeats: int) -> tuple[float, list[float]]:
    """(seconds of the warm-up, which compiles; seconds per unit of each of ``repeats`` calls after it)."""
    import jax

    tic = time.perf_counter()
    jax.block_until_ready(unit.warm() if unit.warm else unit.call(0))
    first = time.perf_counter() - tic
    seconds = []
    for t in range(1, repeats + 1):
        tic = time.perf_counter()
        jax.block_until_ready(unit.call(t))
        seconds.append((time.perf_counter() - tic) / unit.per_call)
    return first, seconds


def _child() -> None:
    """This process's measurements as JSON lines: a 'process' record (library, CPU, matmul rate), then one 'part'
    record per part (seconds per unit of each timed call, the first call's seconds, FLOPs of one unit)."""
    import jax

    from dcjax import progress

    # The study's progress ticks are host callbacks (a few per iteration or epoch): negligible time, but JAX does not
    # cache a program that holds one, so with them every process would compile every part again (~1 min each).
    progress.set_enabled(FLAGS.progress)
    s = _shapes()
    matmul = timing.matmul_gflops(s["matmul_n"])
    header = {"record": "process", "library": timing.library(), "cpu": timing.cpu(), "backend": jax.default_backend()}
    print(json.dumps({**header, "matmul_gflops": matmul}), flush=True)
    ctx = _context(s)
    for part in FLAGS.parts:
        unit = _unit(ctx, s, part)
        first, seconds = _time(unit, FLAGS.repeats)
        record = {"record": "part", "part": part, "seconds": seconds, "warmup_s": first, "flops": unit.flops}
        print(json.dumps({**record, "matmul_gflops": matmul}), flush=True)
        del unit  # Its state and compiled programs go before the next part's.


# ---- The parent: alternate processes between the checkouts, summarise, predict. ----


def _sides() -> list[tuple[str, str]]:
    """[(side, checkout root)]: before (--before) and after (this file's checkout), in the order they alternate."""
    after = ("after", ROOT)
    return [("before", os.path.abspath(FLAGS.before)), after] if FLAGS.before else [after]


def _run_process(side: str, path: str, index: int, cache: str | None) -> list[dict]:
    """One fresh process measuring the library of checkout ``path`` (first on PYTHONPATH): its records."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (path, os.environ.get("PYTHONPATH")) if p))
    if cache:
        env["JAX_COMPILATION_CACHE_DIR"] = cache
    command = [sys.executable, os.path.abspath(__file__), "--child", "--parts=" + ",".join(FLAGS.parts)]
    command += [f"--repeats={FLAGS.repeats}", f"--dp_epochs={FLAGS.dp_epochs}"]
    command += ["--tiny" if FLAGS.tiny else "--notiny", "--progress" if FLAGS.progress else "--noprogress"]
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if out.returncode:
        sys.exit(f"the {side} process {index} ({path}) failed:\n{out.stderr[-3000:]}")
    records = [dict(json.loads(line), side=side, process=index) for line in out.stdout.splitlines() if line[:1] == "{"]
    parts = {r["part"]: r["seconds"] for r in records if r["record"] == "part"}
    print(f"{side} process {index + 1}/{FLAGS.processes}: " + json.dumps(parts), flush=True)
    return records


def _measure() -> list[dict]:
    """Every process's records: --processes rounds of (before, after) or (after), with a shared compile cache."""
    cache = tempfile.mkdtemp(prefix="poster_parts_cache_") if FLAGS.compile_cache else None
    try:
        return [
            r for i in range(FLAGS.processes) for side, path in _sides() for r in _run_process(side, path, i, cache)
        ]
    finally:
        if cache:
            shutil.rmtree(cache, ignore_errors=True)


def _stats(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def _summary(records: list[dict], side: str, part: str) -> dict | None:
    """One part on one side over every process: seconds per unit, GFLOP/s and matmul fraction (each unit against
    its own process's matmul rate), FLOPs, first calls. None if it was not measured."""
    rows = [r for r in records if r["record"] == "part" and r["side"] == side and r["part"] == part]
    if not rows:
        return None
    units = [(r, x) for r in rows for x in r["seconds"]]
    return {
        "seconds": _stats([x for _, x in units]),
        "flops": statistics.median(r["flops"] for r in rows),
        "gflops": _stats([r["flops"] / x / 1e9 for r, x in units]),
        "matmul_fraction": _stats([r["flops"] / x / 1e9 / r["matmul_gflops"] for r, x in units]),
        "warmup_s": _stats([r["warmup_s"] for r in rows]),
    }


def _part_rows(records: list[dict]) -> list[dict]:
    """Per part: {"part", "before" and "after" summaries (before None without --before), "speedup" before / after}."""
    rows = []
    for part in FLAGS.parts:
        before, after = _summary(records, "before", part), _summary(records, "after", part)
        speedup = before["seconds"]["median"] / after["seconds"]["median"] if before and after else None
        rows.append({"part": part, "before": before, "after": after, "speedup": speedup})
    return rows


# ---- The poster tier's predicted cost (module docstring). ----

KINDS = ("original", "subset", "dc", "dsa", "dm", "dpsgd")
NEEDS = {"original": ("train_epoch",), "subset": ("train_epoch",), "dpsgd": ("dpsgd_step",)}
POSTER_SCORED = 70000 * 2  # Images x queries scored per model.


def _kind(row: str) -> str:
    """A row's kind: its name's prefix (dc_real -> dc, dpsgd_eps4 -> dpsgd)."""
    kind = row.split("_")[0]
    if kind not in KINDS:
        raise app.UsageError(f"--rows: {row!r} is none of {', '.join(KINDS)} (as a name's prefix)")
    return kind


def _pipeline_seconds(kind: str, t: dict[str, float]) -> float | None:
    """Seconds of one pipeline of a row of ``kind`` from the median seconds per unit ``t``; None when a part it needs
    was not measured. Training and scoring scale by images from the measured shapes to the poster tier's (so a
    --tiny run predicts from its meaningless times too)."""
    s = _shapes()
    needs = NEEDS.get(kind, (kind, "train_epoch")) + ("score",)
    if any(part not in t for part in needs):
        return None
    score = t["score"] * POSTER_SCORED / (s["score_images"] * s["queries"])
    if kind == "dpsgd":  # round(epochs x n / B) steps, halves up: dpsgd.poisson_schedule.
        return (2 * FLAGS.dp_epochs * POSTER_IMAGES + POSTER_BATCH) // (2 * POSTER_BATCH) * t["dpsgd_step"] + score
    per_image = t["train_epoch"] / (K * s["per_class"])  # Seconds per image-epoch of training.
    if kind == "original":
        return FLAGS.epochs * POSTER_IMAGES * per_image + score
    iterations = {"dc": FLAGS.dc_iterations, "dsa": FLAGS.dc_iterations, "dm": FLAGS.dm_iterations}
    condensing = iterations[kind] * t[kind] if kind in iterations else 0.0
    return condensing + FLAGS.small_epochs * SMALL_SET * per_image + score


def _predict(part_rows: list[dict], side: str) -> dict:
    """{"kinds": {kind: {"rows", "hours_per_row", "hours"} or None}, "total_hours", "complete"} for ``side``."""
    t = {r["part"]: r[side]["seconds"]["median"] for r in part_rows if r[side]}
    rows: dict[str, list[str]] = {}
    for row in FLAGS.rows:
        rows.setdefault(_kind(row), []).append(row)
    kinds = {}
    for kind, names in rows.items():
        seconds = _pipeline_seconds(kind, t)
        per_row = None if seconds is None else FLAGS.pipelines * seconds / 3600
        kinds[kind] = (
            None if per_row is None else {"rows": names, "hours_per_row": per_row, "hours": len(names) * per_row}
        )
    total = sum(k["hours"] for k in kinds.values() if k)
    return {"kinds": kinds, "total_hours": total, "complete": all(kinds.values())}


# ---- Report. ----


def _spread(stats: dict | None) -> str:
    return "" if stats is None else f"{stats['median']:.3g} [{stats['min']:.3g}, {stats['max']:.3g}]"


def _parts_table(part_rows: list[dict], before: bool) -> str:
    """Markdown: seconds per unit (median [min, max]) per side, speedup, and the after side's FLOPs and rates."""
    lines = []
    for r in part_rows:
        after = r["after"]
        line = {"part": r["part"], "after s": _spread(after["seconds"]), "FLOPs": f"{after['flops']:.3g}"}
        line.update({"GFLOP/s": _spread(after["gflops"]), "matmul fraction": _spread(after["matmul_fraction"])})
        if before:
            line.update({"before s": _spread(r["before"]["seconds"]), "speedup": r["speedup"]})
            line["before matmul fraction"] = _spread(r["before"]["matmul_fraction"])
        lines.append(line)
    columns = ["part"] + (["before s"] if before else []) + ["after s"] + (["speedup"] if before else [])
    columns += ["FLOPs", "GFLOP/s", "matmul fraction"] + (["before matmul fraction"] if before else [])
    return timing.table(lines, columns)


def _prediction_table(prediction: dict) -> str:
    """Markdown: hours per row and in all of each row kind, per side, and before / after."""
    sides = list(prediction)
    lines = []
    for kind in prediction["after"]["kinds"]:
        cells = {side: prediction[side]["kinds"][kind] for side in sides}
        line = {"kind": kind, "rows": sum(_kind(row) == kind for row in FLAGS.rows)}
        for side, cell in cells.items():
            line.update({f"{side} h/row": cell["hours_per_row"], f"{side} h": cell["hours"]} if cell else {})
        if "before" in cells and cells["before"] and cells["after"]:
            line["before / after"] = cells["before"]["hours"] / cells["after"]["hours"]
        lines.append(line)
    total = {"kind": "total", **{f"{side} h": prediction[side]["total_hours"] for side in sides}}
    if "before" in prediction:
        total["before / after"] = prediction["before"]["total_hours"] / prediction["after"]["total_hours"]
    columns = ["kind", "rows"] + [f"{side} {c}" for c in ("h/row", "h") for side in sides]
    return timing.table(lines + [total], columns + (["before / after"] if "before" in prediction else []))


def _processes_lines(records: list[dict]) -> list[str]:
    """Per side: the libraries and CPUs its processes reported, and their matmul rates (median [min, max])."""
    lines = []
    for side, _ in _sides():
        heads = [r for r in records if r["record"] == "process" and r["side"] == side]
        facts = sorted({f"{r['library']}; {r['cpu']}; backend {r['backend']}" for r in heads})
        matmul = _spread(_stats([r["matmul_gflops"] for r in heads]))
        lines.append(f"{side} ({len(heads)} processes): {' | '.join(facts)}; jitted fp32 matmul {matmul} GFLOP/s")
    return lines


def _write_atomic(path: str, report: dict) -> None:
    """``report`` as JSON at ``path``: a temporary file beside it, then a rename (never a half-written file)."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".poster_parts.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(report, f, indent=1)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _check_flags() -> None:
    unknown = sorted(set(FLAGS.parts) - set(PARTS))
    if unknown or not FLAGS.parts:
        raise app.UsageError(f"--parts: unknown {unknown} (or none); choose from {', '.join(PARTS)}")
    if FLAGS.repeats < 1 or FLAGS.processes < 1:
        raise app.UsageError("--repeats and --processes must be >= 1")
    if FLAGS.before and not os.path.isdir(os.path.join(FLAGS.before, "dcjax")):
        raise app.UsageError(f"--before={FLAGS.before} holds no dcjax/ (give a checkout's root)")
    for row in FLAGS.rows:
        _kind(row)


def main(_):
    _check_flags()
    if FLAGS.child:
        _child()
        return
    shapes = "tiny (meaningless times)" if FLAGS.tiny else "poster"
    print(f"poster_parts: {FLAGS.processes} processes per side, {FLAGS.repeats} timed units each, {shapes} shapes")
    records = _measure()
    part_rows = _part_rows(records)
    prediction = {side: _predict(part_rows, side) for side, _ in _sides()}
    print("\n".join(_processes_lines(records)))
    print(json.dumps(part_rows))
    print(_parts_table(part_rows, bool(FLAGS.before)))
    print(f"\nPredicted poster tier ({FLAGS.pipelines} pipelines per row; compilation not included), hours:")
    print(_prediction_table(prediction))
    if not prediction["after"]["complete"]:
        print("(blank: a part the kind needs was not in --parts; the total is over the predicted kinds only)")
    if FLAGS.out:
        sides = dict(_sides())
        report = {"argv": sys.argv, "tiny": FLAGS.tiny, "sides": sides, "records": records, "parts": part_rows}
        _write_atomic(FLAGS.out, {**report, "prediction": prediction})
        print(f"raw measurements: {FLAGS.out}")


if __name__ == "__main__":
    app.run(main)
