r"""Seconds per condensation iteration (DC, DSA, DM; MNIST), peak memory, GFLOP/s vs a jitted matmul.

Each configuration runs in its own process (so peak RSS is its own): one warm-up
iteration (compilation), then the median of --repeats timed iterations on real-shaped
random data. FLOPs are counted analytically from XLA's cost of one forward pass per
image (XLA's cost analysis counts a loop body once, not per trip):
  real gradients 3F x outer x K x batch_real, synthetic gradients (second order, ~6F)
  x outer x K x ipc, inner training 3F x (outer - 1) x inner x K x ipc.
DSA counts the same FLOPs as DC (the augmentation is a few gathers per image, not counted). A DM iteration is one
forward pass of K x batch_real real images plus forward+backward (~3F) of K x ipc synthetic ones; it has no loops,
so its outer_loop field is ignored.

Ratios against the official PyTorch code come only from its result files measured in the same session
(``--reference``: JSON files written by ../shared/peers/reference_dc/run_timed.sh, modes dc and dm); a
remembered or published time is never used. Each file's mode and ipc pick the rows it is compared with
(a DC file also serves DSA, which runs DC's loops), and the table names the file.

  python benchmarks/condense_step.py                     # ipc 1, 10; width 32 at ipc 10
  python benchmarks/condense_step.py --configs=128:50:5  # ipc 50 with outer_loop 5 of 50
  python benchmarks/condense_step.py --methods=dc,dsa,dm --configs=128:10:2 --repeats=1   # side by side
  python benchmarks/condense_step.py --methods=dm --configs=128:10,64:10,32:10 --precisions=fp32,bf16
  python benchmarks/condense_step.py --methods=dc,dm --configs=128:10 \
      --reference=$DC_OUT/results/dc_ipc10_run1.json,$DC_OUT/results/dm_ipc10.json     # vs the official code
Config syntax: width:ipc[:outer_loop]; a reduced outer loop is scaled up to the full one
(reported as extrapolated, scaled by the FLOP ratio at the measured rate).

Spread over processes (issue 26): with --processes=N each row is measured in N fresh processes, taken in turns
(every row once, then every row again, ...), and reports the median of the processes' medians with their
[min, max]. --malloc adds rows that run the same measurement under other glibc allocator settings
(GLIBC_TUNABLES, read when a process starts): "hugetlb" (glibc.malloc.hugetlb=1: malloc asks for transparent huge
pages, which these machines give only on request) and "keep" (mmap and trim thresholds at 4 GiB - 1, so freed
buffers stay in the process). "default" is glibc's own: a GLIBC_TUNABLES of the caller's is not passed on. By
default glibc hands every buffer above its mmap threshold back to the kernel when XLA frees it, so the next
iteration faults fresh zeroed pages in again: the "minor faults / iteration" column.
  python benchmarks/condense_step.py --methods=dm --configs=128:10,32:10 --repeats=5 --processes=3 \
      --malloc=default,hugetlb,keep                                                     # issue 26's spread
"""

import itertools
import json
import os
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

import timing  # noqa: E402

flags.DEFINE_list("configs", ["128:1", "128:10", "32:10"], "width:ipc[:outer_loop] items.")
flags.DEFINE_integer("repeats", 2, "Timed iterations per config (median reported).")
flags.DEFINE_string("class_strategy", "auto", "Per-class matching strategy.")
flags.DEFINE_list("methods", ["dc"], "Condensation methods to time: dc, dsa, dm (each config, side by side).")
flags.DEFINE_list(
    "precisions",
    ["fp32"],
    "Matching-network precisions to time (CondenseConfig.precision: fp32, bf16), each beside the others.",
)
flags.DEFINE_list(
    "reference",
    [],
    "Result JSON files of the official code (reference_dc/run_timed.sh, "
    "modes dc and dm) measured in this session; none: no reference column.",
)
flags.DEFINE_integer("processes", 1, "Fresh processes per row (taken in turns); the row gives their spread.", 1)
flags.DEFINE_list("malloc", ["default"], "glibc allocator settings to run each row under: default, hugetlb, keep.")
flags.DEFINE_string("single", None, "Internal: run one config in this process.")
FLAGS = flags.FLAGS
K, SHAPE, POOL_PER_CLASS = 10, (28, 28, 1), 300
# GLIBC_TUNABLES of each --malloc setting (glibc >= 2.35 for hugetlb; an unknown tunable is ignored by glibc).
MALLOC = {
    "default": None,
    "hugetlb": "glibc.malloc.hugetlb=1",
    "keep": "glibc.malloc.mmap_threshold=4294967295:glibc.malloc.trim_threshold=4294967295",
}


def iteration_flops(method: str, f: float, cfg, outer: int) -> float:
    """FLOPs of one iteration with ``outer`` matching steps (``timing.condense_iteration_flops``, K classes)."""
    return timing.condense_iteration_flops(method, f, cfg, outer, K)


def _condense_config(spec: str, method: str, precision: str):
    """(width, CondenseConfig, the full outer loop) of a width:ipc[:outer_loop] item; DM has no outer loop to cut."""
    from dcjax import condense

    width, ipc, *rest = (int(v) for v in spec.split(":"))
    full_outer, inner = condense.default_loops(ipc)
    cfg = condense.CondenseConfig(
        ipc=ipc,
        outer_loop=rest[0] if rest and method != "dm" else full_outer,
        inner_loop=inner,
        class_strategy=FLAGS.class_strategy,
        method=method,
        **({"precision": precision} if precision != "fp32" else {}),  # Older checkouts (PYTHONPATH) lack the field.
    )
    return width, cfg, full_outer


def _time_iterations(fns, cfg) -> tuple[list[float], float]:
    """Seconds of 1 + --repeats condensation iterations on a random pool, the first of them with its compilation,
    and the minor page faults per timed iteration (pages the kernel zeroed and mapped in for this process)."""
    import jax
    from dcjax import condense

    pool, index = timing.random_pool(K, SHAPE, POOL_PER_CLASS)
    state, _ = condense.init_synthetic(cfg, jax.random.key(1), pool, index)
    step = condense.make_iteration_fn(fns, cfg)
    seconds, faults = [], 0
    for t in range(FLAGS.repeats + 1):  # The first call compiles.
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        tic = time.perf_counter()
        state, out = step(state, (pool, index), jax.random.key(t))
        jax.block_until_ready(out)
        seconds.append(time.perf_counter() - tic)
        faults += (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) if t else 0
    return seconds, faults / FLAGS.repeats


def measure(spec: str, method: str, precision: str = "fp32") -> dict:
    """One table row: the seconds, GFLOP/s and peak memory of ``method``'s iteration at ``spec`` (width:ipc[:outer])."""
    import numpy as np
    from dcjax import models

    width, cfg, full_outer = _condense_config(spec, method, precision)
    ipc, outer = cfg.ipc, cfg.outer_loop
    fns = models.make_model(models.ModelConfig(width=width), SHAPE, K)
    seconds, faults = _time_iterations(fns, cfg)
    per_iter = float(np.median(seconds[1:]))
    f = timing.forward_flops(fns, SHAPE)
    # A reduced outer loop is scaled to the full one by work done, at the measured rate.
    flops = iteration_flops(method, f, cfg, outer)
    scale = iteration_flops(method, f, cfg, full_outer) / flops
    return {
        "method": method,
        "precision": precision,
        "config": f"width {width}, ipc {ipc}" + (f" (outer {outer}/{full_outer})" if scale != 1 else ""),
        "compile+first s": seconds[0],
        "s/iteration": per_iter * scale,
        "extrapolated": scale != 1,
        "GFLOP/s": flops / per_iter / 1e9,
        "peak RSS GiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "minor faults / iteration": faults,
        "iteration s": seconds[1:],  # Each timed iteration (unscaled): how the time moves within the process.
    }


def read_references(paths: list[str]) -> dict:
    """{(method, ipc): (seconds per iteration, file name)} from the official code's result files.

    DC files serve DSA as well (DSA runs DC's loops plus augmentation, and the official DSA script is not timed).
    """
    references = {}
    for path in paths:
        try:
            with open(path) as f:
                result = json.load(f)
            mode, ipc, seconds = result["mode"], int(result["ipc"]), float(result["median_iter_s_after_warmup"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            sys.exit(f"--reference: cannot read a dc/dm result from {path}: {e}")
        for method in ("dc", "dsa") if mode == "dc" else (mode,):
            references[(method, ipc)] = (seconds, os.path.basename(path))
    return references


def _measure_apart(spec: str, method: str, precision: str, malloc: str = "default") -> dict:
    """``measure`` in a fresh process (its peak RSS is its own; no compile cache carries over), under the glibc
    allocator setting ``malloc`` (a key of MALLOC)."""
    env = dict(os.environ)
    env.pop("GLIBC_TUNABLES", None)
    if MALLOC[malloc]:
        env["GLIBC_TUNABLES"] = MALLOC[malloc]
    command = [
        sys.executable,
        __file__,
        f"--single={spec}",
        f"--methods={method}",
        f"--precisions={precision}",
        f"--repeats={FLAGS.repeats}",
        f"--class_strategy={FLAGS.class_strategy}",
    ]
    out = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]), malloc=malloc)


def _over_processes(runs: list[dict]) -> dict:
    """One row from the same measurement in several processes: the median of their medians (s/iteration, GFLOP/s,
    compile) with the processes' [min, max] and each process's median."""
    import numpy as np

    row = dict(runs[0])
    per_process = [r["s/iteration"] for r in runs]
    row["s/iteration"] = float(np.median(per_process))
    row["GFLOP/s"] = row["GFLOP/s"] * runs[0]["s/iteration"] / row["s/iteration"]
    for key in ("compile+first s", "peak RSS GiB", "minor faults / iteration"):
        row[key] = float(np.median([r[key] for r in runs]))
    row["processes"] = len(runs)
    row["process spread"] = f"[{min(per_process):.3g}, {max(per_process):.3g}]"
    row["process s"] = per_process
    row["iteration s"] = [r["iteration s"] for r in runs]  # [process][iteration]
    return row


def main(_):
    if FLAGS.single:
        print(json.dumps(measure(FLAGS.single, FLAGS.methods[0], FLAGS.precisions[0])))
        return
    unknown = sorted(set(FLAGS.malloc) - set(MALLOC))
    if unknown:
        raise app.UsageError(f"--malloc: unknown setting(s) {unknown}; choose from {sorted(MALLOC)}")
    import jax

    reference = read_references(FLAGS.reference)  # First: a bad file fails before minutes of measuring.
    matmul = timing.matmul_gflops()
    print(f"{timing.library()}; {timing.cpu()}; backend {jax.default_backend()}")
    print(f"jitted fp32 matmul {matmul:.1f} GFLOP/s")
    cases = list(itertools.product(FLAGS.configs, FLAGS.methods, FLAGS.precisions, FLAGS.malloc))
    runs: dict[tuple, list[dict]] = {case: [] for case in cases}
    for _ in range(FLAGS.processes):  # In turns, so a drift of the machine spreads over every row alike.
        for case in cases:
            runs[case].append(_measure_apart(*case))
            print(json.dumps(runs[case][-1]), flush=True)
    rows = []
    for (spec, method, _, _), measured in runs.items():
        row = _over_processes(measured)
        row["vs matmul"] = row["GFLOP/s"] / matmul
        ipc = int(spec.split(":")[1])
        if spec.split(":")[0] == "128" and (method, ipc) in reference:  # The official code's ConvNet is 128 wide.
            row["reference s"], row["reference file"] = reference[(method, ipc)]
            row["vs reference"] = row["reference s"] / row["s/iteration"]
        rows.append(row)
    print(json.dumps(rows), flush=True)
    print(
        timing.table(
            rows,
            [
                "method",
                "precision",
                "config",
                "malloc",
                "s/iteration",
                "process spread",
                "extrapolated",
                "GFLOP/s",
                "vs matmul",
                "peak RSS GiB",
                "minor faults / iteration",
                "reference s",
                "vs reference",
                "reference file",
                "compile+first s",
            ],
        )
    )


if __name__ == "__main__":
    app.run(main)
