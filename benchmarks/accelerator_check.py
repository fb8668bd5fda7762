r"""One-shot accelerator check: the numbers a first GPU/TPU run should record, in ONE table.

Sized to finish in <= 8 minutes on one NVIDIA H200 (estimates below; it has not run on one yet).
Every measurement runs in this process, one after another, on random normalised images of
MNIST shape (28x28x1, 10 classes) drawn from ``jax.random.key(--seed)``: no dataset, no network.

  environment    backend, device kind and count, jax / jaxlib versions
  precision      the matmul precision in force (``--precision``, set explicitly: on NVIDIA GPUs JAX
                 otherwise runs fp32 matmuls in TF32) and a probe of it: the relative error of a
                 jitted n x n matmul against float64, and its GFLOP/s
  dm/dc/dsa_iteration
                 one condensation iteration at paper settings (ConvNet width 128, depth 3,
                 instancenorm; ipc 10, DC's outer 10 x inner 50 loops, batch_real 256 per class;
                 classes vmapped): XLA compile time (ahead of time) separately, then the median of
                 --repeats timed iterations                           (H200 guess: DM ~0.1 s, DC/DSA ~1-5 s)
  bank_vmap/bank_loop
                 a bank of --models (16) ConvNet-128 models x --bank_epochs (5) epochs on ~500
                 images each (``engine.train_models``), model axis vmapped vs a Python loop of
                 jitted single-model trainings; ratio loop / vmap     (H200 guess: ~1 s / ~3 s)
  pipelines_one/pipelines_all
                 ``privacy.bank.condense_models``: --pipeline_method (DM) condensation of one
                 pipeline vs --models pipelines at once (model axis vmapped); seconds per
                 iteration including its per-call setup; ratio models x one / all  (H200 guess: ~0.05 s / ~0.5 s)

Columns: "compile s" is the XLA compile of the AOT-compiled rows (n/a elsewhere); "first call s"
is the first call (compile included where not AOT; for the pipelines rows a call is
pipeline_iterations iterations plus setup); "median s" the median of the timed calls, per unit;
"peak device GiB" is ``memory_stats()["peak_bytes_in_use"]`` after the row. That counter is
CUMULATIVE over the process and cannot be reset, so a value prefixed "<=" means the row did not
raise the peak (its own peak is at most that); without the prefix the row set the peak. CPU
backends have no memory_stats ("n/a"); "XLA GiB" is the compiled executable's own footprint
(arguments + outputs + temporaries - aliased, ``memory_analysis``) where the row compiles ahead of time.

--budget_s guards the one-shot run: a measurement starts only while the elapsed time is under it
(the rest are marked "skipped: budget"), and a started one stops timing after one timed call once
it is spent. The last started measurement runs to its end, so the default (300 s) leaves ~3
minutes of the 8 for it. The table (JSON + markdown) is rewritten atomically to --out after every
row, so even a killed run leaves what it measured.

  python benchmarks/accelerator_check.py --out=docs/accelerator_check        # on the accelerator
  python benchmarks/accelerator_check.py --tiny --out=/tmp/accelerator_check # CPU smoke run (tests)
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import sys
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

import timing  # noqa: E402  (sets TF_CPP_MIN_LOG_LEVEL; imports jax)

import jax  # noqa: E402
import numpy as np  # noqa: E402

FLAGS = flags.FLAGS
K, SHAPE = 10, (28, 28, 1)
PRECISIONS = ("float32", "tensorfloat32", "bfloat16", "default")
MEASUREMENTS = (
    "precision",
    "dm_iteration",
    "dc_iteration",
    "bank_vmap",
    "bank_loop",
    "pipelines_one",
    "pipelines_all",
    "dsa_iteration",
)
COLUMNS = (
    "measurement",
    "setting",
    "unit",
    "compile s",
    "first call s",
    "median s",
    "timed",
    "vs baseline",
    "peak device GiB",
    "XLA GiB",
    "status",
)
# Independent streams per kind of data, so the order of the measurements never changes their inputs.
STREAM_POOL, STREAM_BANK, STREAM_PIPELINES, STREAM_MATMUL = 1, 2, 3, 4


@dataclasses.dataclass(frozen=True)
class Scale:
    """Every shape of the check; the defaults are paper settings, ``TINY`` a CPU smoke run."""

    width: int = 128
    depth: int = 3
    ipc: int = 10
    batch_real: int = 256  # Real images per class per matching step.
    pool_per_class: int = 300  # Real pool of the iteration rows (>= batch_real).
    repeats: int = 3  # Timed calls after the first.
    models: int = 16  # Bank models and condensation pipelines (even: LiRA masks).
    bank_pool: int = 1000  # Each bank model trains on about half.
    bank_epochs: int = 5
    bank_batch: int = 256
    pipeline_method: str = "dm"
    pipeline_iterations: int = 3
    class_strategy: str = "vmap"
    model_strategy: str = "vmap"
    matmul_n: int = 4096


TINY = Scale(
    width=8,
    depth=1,
    ipc=1,
    batch_real=8,
    pool_per_class=16,
    repeats=1,
    models=4,
    bank_pool=64,
    bank_epochs=1,
    bank_batch=16,
    pipeline_iterations=1,
    matmul_n=128,
)


@dataclasses.dataclass(frozen=True)
class Context:
    """What a measurement needs: the shapes, the root key, and when the budget runs out."""

    scale: Scale
    key: jax.Array
    deadline: float
    clock: Callable[[], float] = time.perf_counter


def define_flags() -> None:
    """Defines the launcher's flags; called from __main__ only, so tests can import this module freely."""
    flags.DEFINE_string("out", None, "Directory for accelerator_check.json / .md (None: print only).")
    flags.DEFINE_bool(
        "tiny", False, "Shrink every shape (width 8, depth 1, ipc 1, 4 models, 1 timed call): CPU smoke run."
    )
    flags.DEFINE_enum(
        "precision",
        "float32",
        PRECISIONS,
        "jax_default_matmul_precision; float32 = 'highest' (no TF32); default = JAX's own.",
    )
    flags.DEFINE_float("budget_s", 300.0, "Start no measurement after this many seconds (see docstring).")
    flags.DEFINE_integer("seed", 0, "Root of every random input.")
    flags.DEFINE_integer("repeats", None, "Timed calls per row (None: the scale's, 3; tiny 1).")
    flags.DEFINE_integer("models", None, "Bank models and condensation pipelines (None: 16; tiny 4).")
    flags.DEFINE_enum(
        "pipeline_method",
        None,
        ["dc", "dsa", "dm"],
        "Method of the pipelines rows (None: dm; dc costs ~16 DC iterations per call, beyond the 8-minute budget).",
    )
    flags.DEFINE_list("measurements", list(MEASUREMENTS), f"Rows to measure, in order; from {MEASUREMENTS}.")


def peak_bytes() -> int | None:
    """The device's cumulative peak of bytes in use, or None where the backend keeps no statistics (CPU)."""
    stats = jax.devices()[0].memory_stats()
    return None if not stats or "peak_bytes_in_use" not in stats else int(stats["peak_bytes_in_use"])


def xla_gib(compiled) -> float | None:
    """Arguments + outputs + temporaries - aliased of an AOT-compiled executable, in GiB (None if unknown)."""
    try:
        ma = compiled.memory_analysis()
    except Exception:  # Not every backend / jax version implements it; the row is still useful.
        return None
    if isinstance(ma, (list, tuple)):
        ma = ma[0] if ma else None
    if ma is None:
        return None
    total = ma.argument_size_in_bytes + ma.output_size_in_bytes + ma.temp_size_in_bytes - ma.alias_size_in_bytes
    return total / 2**30


def timed_calls(call: Callable[[int], object], ctx: Context) -> tuple[float, list[float]]:
    """(first call s, [timed call s]): call(t) for t = 0..repeats; stops after one timed call past the deadline."""

    def once(t):
        tic = ctx.clock()
        jax.block_until_ready(call(t))
        return ctx.clock() - tic

    first, times = once(0), []
    for t in range(1, ctx.scale.repeats + 1):
        if times and ctx.clock() > ctx.deadline:
            logging.info("  budget spent: stopping after %d timed call(s)", len(times))
            break
        times.append(once(t))
    return first, times


def _model(scale: Scale):
    """The paper's ConvNet (width, depth, instancenorm) for MNIST shapes."""
    from dcjax import models

    config = models.ModelConfig(width=scale.width, depth=scale.depth, norm="instancenorm")
    return models.make_model(config, SHAPE, K)


def _condense_config(scale: Scale, method: str, iterations: int):
    """Paper settings of ``method`` (``CondenseConfig.paper``: its lr_img and init; loops from the ipc table)."""
    from dcjax import condense

    return condense.CondenseConfig.paper(
        method,
        ipc=scale.ipc,
        iterations=iterations,
        batch_real=scale.batch_real,
        class_strategy=scale.class_strategy,
    )


def _pool(key: jax.Array, per_class: int):
    """(images [K*per_class, 28, 28, 1] ~ N(0, 1), i.e. already normalised; labels [K*per_class], class-major)."""
    labels = np.repeat(np.arange(K, dtype=np.int32), per_class)
    return jax.random.normal(key, (labels.size,) + SHAPE), labels


def _setting(scale: Scale, extra: str) -> str:
    """The 'setting' cell: the network and data shapes, then what the row varies."""
    return f"ConvNet-{scale.width} d{scale.depth} instancenorm, {SHAPE[0]}x{SHAPE[1]}x{SHAPE[2]}, {K} classes; {extra}"


def measure_precision(ctx: Context) -> dict:
    """Relative error (vs float64) and GFLOP/s of a jitted n x n matmul at the precision in force."""
    n = ctx.scale.matmul_n
    a = jax.random.normal(jax.random.fold_in(ctx.key, STREAM_MATMUL), (n, n))
    tic = ctx.clock()
    compiled = jax.jit(lambda x: x @ x).lower(a).compile()
    compile_s = ctx.clock() - tic
    first, times = timed_calls(lambda t: compiled(a), ctx)
    a64 = np.asarray(a, np.float64)
    exact = a64 @ a64
    error = float(np.linalg.norm(np.asarray(compiled(a), np.float64) - exact) / np.linalg.norm(exact))
    seconds = statistics.median(times)
    precision = jax.config.jax_default_matmul_precision
    return {
        "setting": f"jax_default_matmul_precision={precision}; {n}x{n} fp32 matmul: rel. error "
        f"{error:.1e} vs float64, {2 * n**3 / seconds / 1e9:.0f} GFLOP/s",
        "unit": "s/matmul",
        "compile_s": compile_s,
        "first_s": first,
        "seconds": seconds,
        "timed": len(times),
        "xla_gib": xla_gib(compiled),
        "precision": precision,
        "rel_error": error,
        "gflops": 2 * n**3 / seconds / 1e9,
    }


def measure_iteration(ctx: Context, method: str) -> dict:
    """One jitted condensation iteration (``make_iteration_fn``), compiled ahead of time, then timed."""
    from dcjax import condense, data

    scale = ctx.scale
    fns, cfg = _model(scale), _condense_config(scale, method, iterations=1)
    key = jax.random.fold_in(ctx.key, STREAM_POOL)
    images, labels = _pool(jax.random.fold_in(key, 0), scale.pool_per_class)
    real = (images, data.build_class_index(labels, K))
    state, _ = condense.init_synthetic(cfg, jax.random.fold_in(key, 1), images, real[1])
    step = condense.make_iteration_fn(fns, cfg, scale.class_strategy)
    tic = ctx.clock()
    compiled = step.lower(state, real, jax.random.fold_in(key, 2)).compile()
    compile_s = ctx.clock() - tic
    holder = [state]  # The state is donated: each call consumes the previous one.

    def call(t):
        holder[0], metrics = compiled(holder[0], real, jax.random.fold_in(key, 2 + t))
        return metrics

    first, times = timed_calls(call, ctx)
    outer, inner = cfg.loops
    loops = "" if method == "dm" else f", outer {outer} x inner {inner}"
    return {
        "setting": _setting(
            scale,
            f"{method.upper()} ipc {scale.ipc}{loops}, batch_real "
            f"{scale.batch_real}/class, classes {scale.class_strategy}",
        ),
        "unit": "s/iteration",
        "compile_s": compile_s,
        "first_s": first,
        "seconds": statistics.median(times),
        "timed": len(times),
        "xla_gib": xla_gib(compiled),
    }


def measure_bank(ctx: Context, strategy: str) -> dict:
    """``engine.train_models``: scale.models models, each on about half of a bank_pool pool (LiRA masks)."""
    from dcjax import engine, train
    from dcjax.privacy import masks

    scale = ctx.scale
    key = jax.random.fold_in(ctx.key, STREAM_BANK)  # Same models for every strategy.
    fns = _model(scale)
    cfg = train.TrainConfig(epochs=scale.bank_epochs, batch_size=scale.bank_batch)
    images = jax.random.normal(jax.random.fold_in(key, 0), (scale.bank_pool,) + SHAPE)
    labels = np.arange(scale.bank_pool, dtype=np.int32) % K
    keep = masks.lira_keep_masks(jax.random.fold_in(key, 1), scale.models, scale.bank_pool)
    keys = jax.random.split(jax.random.fold_in(key, 2), scale.models)
    first, times = timed_calls(lambda t: engine.train_models(fns, cfg, keys, (images, labels, keep), strategy), ctx)
    return {
        "setting": _setting(
            scale,
            f"{scale.models} models x {scale.bank_epochs} epochs on "
            f"~{scale.bank_pool // 2} images, batch {scale.bank_batch}, "
            f"model axis {strategy}",
        ),
        "unit": "s/bank",
        "compile_s": None,
        "first_s": first,
        "seconds": statistics.median(times),
        "timed": len(times),
        "xla_gib": None,
    }


def half_per_class(key: jax.Array, models: int, labels: np.ndarray) -> np.ndarray:
    """[models, N] bool: each model keeps a random half of every class exactly (so batch_real always fits)."""
    scores = np.asarray(jax.random.uniform(key, (models, labels.size)))
    keep = np.zeros((models, labels.size), bool)
    for c in np.unique(labels):
        cols = np.flatnonzero(labels == c)
        ranks = np.argsort(np.argsort(scores[:, cols], axis=1), axis=1)
        keep[:, cols] = ranks < cols.size // 2
    return keep


def measure_pipelines(ctx: Context, count: int) -> dict:
    """``privacy.bank.condense_models`` of ``count`` pipelines at once; seconds per iteration of all of them."""
    from dcjax.privacy import bank

    scale = ctx.scale
    method, iterations = scale.pipeline_method, scale.pipeline_iterations
    fns, cfg = _model(scale), _condense_config(scale, method, iterations)
    key = jax.random.fold_in(ctx.key, STREAM_PIPELINES)  # Pipeline m is the same in both rows.
    images, labels = _pool(jax.random.fold_in(key, 0), 2 * scale.batch_real)
    keep = half_per_class(jax.random.fold_in(key, 1), scale.models, labels)[:count]
    keys = jax.random.split(jax.random.fold_in(key, 2), scale.models)[:count]
    first, times = timed_calls(
        lambda t: bank.condense_models(fns, cfg, keys, (images, labels, keep), scale.model_strategy), ctx
    )
    return {
        "setting": _setting(
            scale,
            f"{count} {method.upper()} pipeline(s) at once (model axis "
            f"{scale.model_strategy}), ipc {scale.ipc}, batch_real "
            f"{scale.batch_real}/class, {iterations} iteration(s) per call",
        ),
        "unit": "s/iteration (incl. setup)",
        "compile_s": None,
        "first_s": first,
        "seconds": statistics.median(times) / iterations,
        "timed": len(times),
        "xla_gib": None,
    }


def measurement_fns(scale: Scale) -> dict[str, Callable[[Context], dict]]:
    """Name -> measurement (Context -> row fields)."""
    return {
        "precision": measure_precision,
        "dm_iteration": lambda ctx: measure_iteration(ctx, "dm"),
        "dc_iteration": lambda ctx: measure_iteration(ctx, "dc"),
        "dsa_iteration": lambda ctx: measure_iteration(ctx, "dsa"),
        "bank_vmap": lambda ctx: measure_bank(ctx, "vmap"),
        "bank_loop": lambda ctx: measure_bank(ctx, "loop"),
        "pipelines_one": lambda ctx: measure_pipelines(ctx, 1),
        "pipelines_all": lambda ctx: measure_pipelines(ctx, scale.models),
    }


def run_one(name: str, fn: Callable[[Context], dict], ctx: Context) -> dict:
    """Runs one measurement; a failure (e.g. out of memory) becomes the row's status, not the run's end."""
    if ctx.clock() > ctx.deadline:
        logging.info("%s: skipped (budget spent)", name)
        return {"measurement": name, "status": "skipped: budget"}
    logging.info("%s: measuring", name)
    before = peak_bytes()
    try:
        row = {"measurement": name, **fn(ctx), "status": "ok"}
    except Exception as e:  # The one-shot run must still print its table.
        logging.exception("%s failed", name)
        row = {"measurement": name, "status": f"error: {type(e).__name__}: {str(e)[:200]}"}
    after = peak_bytes()
    row["peak_gib"] = None if after is None else after / 2**30
    row["peak_is_own"] = after is not None and (before is None or after > before)
    logging.info("%s: %s, median %s s, first call %s s", name, row["status"], row.get("seconds"), row.get("first_s"))
    return row


def add_ratios(rows: list[dict], models: int) -> list[dict]:
    """'vs baseline': bank loop s / vmap s; models x one-pipeline s / all-pipelines s (> 1: the batched one wins)."""
    by_name = {r["measurement"]: r for r in rows if r.get("status") == "ok"}
    pairs = {"bank_vmap": ("bank_loop", 1), "pipelines_all": ("pipelines_one", models)}
    for name, (baseline, factor) in pairs.items():
        if name in by_name and baseline in by_name:
            by_name[name]["vs_baseline"] = factor * by_name[baseline]["seconds"] / by_name[name]["seconds"]
            by_name[baseline]["vs_baseline"] = 1.0
    return rows


def environment(precision: str) -> dict:
    """What ran: backend, devices, versions, the precision in force."""
    import jaxlib

    device = jax.devices()[0]
    return {
        "backend": jax.default_backend(),
        "device_kind": device.device_kind,
        "device_count": jax.device_count(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "precision_flag": precision,
        "precision": jax.config.jax_default_matmul_precision,
        "command": " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]),
    }


def environment_row(env: dict) -> dict:
    """The table's first row: where it ran (the table alone must say so)."""
    return {
        "measurement": "environment",
        "status": "ok",
        "setting": f"{env['backend']}: {env['device_count']} x {env['device_kind']}; jax {env['jax']}, "
        f"jaxlib {env['jaxlib']}; matmul precision {env['precision']}",
    }


def _fmt(row: dict, column: str) -> str:
    """One markdown cell; missing numbers read 'n/a'."""
    if column == "peak device GiB":
        if row.get("peak_gib") is None:
            return "n/a"
        return ("" if row.get("peak_is_own") else "<=") + f"{row['peak_gib']:.3g}"
    key = {
        "compile s": "compile_s",
        "first call s": "first_s",
        "median s": "seconds",
        "vs baseline": "vs_baseline",
        "XLA GiB": "xla_gib",
    }.get(column, column)
    value = row.get(key)
    if value is None:
        return "n/a" if key in ("compile_s", "first_s", "seconds", "xla_gib") else ""
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def markdown(report: dict) -> str:
    """The report as markdown: a two-line header (what ran, the command) and THE table."""
    env = report["environment"]
    head = (
        f"Accelerator check: {env['backend']} ({env['device_kind']}), jax {env['jax']}, "
        f"matmul precision {env['precision']}{'' if report['complete'] else ' (INCOMPLETE)'}.\n"
        f"`{env['command']}`\n\n"
    )
    cells = [{c: _fmt(r, c) for c in COLUMNS} for r in report["rows"]]
    return head + timing.table(cells, list(COLUMNS)) + "\n"


def write_report(out: str | None, report: dict) -> None:
    """Atomically rewrites out/accelerator_check.{json,md} (temp file + rename)."""
    if not out:
        return
    from dcjax import checkpoint

    checkpoint.write_json(os.path.join(out, "accelerator_check.json"), report)
    checkpoint.atomic_write_bytes(os.path.join(out, "accelerator_check.md"), markdown(report).encode())


def run_check(names: list[str], fns: dict, ctx: Context, env: dict, out: str | None) -> dict:
    """Measures ``names`` in order under the budget, rewriting the report after every row."""
    rows = [environment_row(env)]
    report = {"environment": env, "scale": dataclasses.asdict(ctx.scale), "rows": rows, "complete": False}
    for name in names:
        rows.append(run_one(name, fns[name], ctx))
        add_ratios(rows, ctx.scale.models)
        write_report(out, report)
    report["complete"] = all(r["status"] == "ok" for r in rows)
    write_report(out, report)
    return report


def scale_from_flags() -> Scale:
    """Scale() or TINY, with the flags that override it."""
    scale = TINY if FLAGS.tiny else Scale()
    overrides = {"repeats": FLAGS.repeats, "models": FLAGS.models, "pipeline_method": FLAGS.pipeline_method}
    return dataclasses.replace(scale, **{k: v for k, v in overrides.items() if v is not None})


def main(argv):
    del argv
    unknown = sorted(set(FLAGS.measurements) - set(MEASUREMENTS))
    if unknown:
        raise app.UsageError(f"unknown measurements {unknown}; expected some of {MEASUREMENTS}")
    # Set explicitly, before anything is traced: on NVIDIA GPUs JAX's default runs fp32 matmuls in TF32.
    jax.config.update("jax_default_matmul_precision", FLAGS.precision)
    scale = scale_from_flags()
    if scale.models < 2 or scale.models % 2:
        raise app.UsageError(f"--models must be even and >= 2 (LiRA masks), got {scale.models}")
    clock = time.perf_counter
    # Arguments evaluate in order: the key starts the backend (CUDA init) before the budget clock starts.
    ctx = Context(scale, jax.random.key(FLAGS.seed), clock() + FLAGS.budget_s, clock)
    env = {**environment(FLAGS.precision), "budget_s": FLAGS.budget_s}
    logging.info("accelerator check: %s", env)
    report = run_check(FLAGS.measurements, measurement_fns(scale), ctx, env, FLAGS.out)
    print(markdown(report), flush=True)
    if any(r["status"].startswith("error") for r in report["rows"]):
        sys.exit(1)


if __name__ == "__main__":
    define_flags()
    app.run(main)
