r"""Seconds per DC iteration (MNIST), peak memory, and achieved GFLOP/s vs a jitted matmul.

Each configuration runs in its own process (so peak RSS is its own): one warm-up
iteration (compilation), then the median of --repeats timed iterations on real-shaped
random data. FLOPs are counted analytically from XLA's cost of one forward pass per
image (XLA's cost analysis counts a loop body once, not per trip):
  real gradients 3F x outer x K x batch_real, synthetic gradients (second order, ~6F)
  x outer x K x ipc, inner training 3F x (outer - 1) x inner x K x ipc.
The reference PyTorch DC does ~21 TFLOP per ipc=10 iteration in ~253 s here (~83 GFLOP/s).

  python benchmarks/condense_step.py                     # ipc 1, 10; width 32 at ipc 10
  python benchmarks/condense_step.py --configs=128:50:5  # ipc 50 with outer_loop 5 of 50
Config syntax: width:ipc[:outer_loop]; a reduced outer loop is scaled up to the full one
(reported as extrapolated, scaled by the FLOP ratio at the measured rate).
"""

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
flags.DEFINE_string("single", None, "Internal: run one config in this process.")
FLAGS = flags.FLAGS
K, SHAPE, POOL_PER_CLASS = 10, (28, 28, 1), 300


def forward_flops_per_image(fns) -> float:
    import jax
    x = jax.numpy.zeros((1,) + SHAPE)
    variables = fns.init(jax.random.key(0))
    return timing.compiled_flops(jax.jit(fns.apply), variables, x)


def measure(spec: str) -> dict:
    import jax
    import numpy as np
    from dcjax import condense, data, models
    width, ipc, *rest = (int(v) for v in spec.split(":"))
    full_outer, inner = condense.default_loops(ipc)
    outer = rest[0] if rest else full_outer
    cfg = condense.CondenseConfig(ipc=ipc, outer_loop=outer, inner_loop=inner,
                                  class_strategy=FLAGS.class_strategy)
    fns = models.make_model(models.ModelConfig(width=width), SHAPE, K)
    labels = np.repeat(np.arange(K), POOL_PER_CLASS)
    pool = jax.random.normal(jax.random.key(0), (labels.size,) + SHAPE)
    index = data.build_class_index(labels, K)
    state, _ = condense.init_synthetic(cfg, jax.random.key(1), pool, index)
    step = condense.make_iteration_fn(fns, cfg)
    seconds = []
    for t in range(FLAGS.repeats + 1):  # The first call compiles.
        tic = time.perf_counter()
        state, out = step(state, (pool, index), jax.random.key(t))
        jax.block_until_ready(out)
        seconds.append(time.perf_counter() - tic)
    per_iter = float(np.median(seconds[1:]))
    f = forward_flops_per_image(fns)

    def flops(o):
        return f * (3 * o * K * cfg.batch_real + 6 * o * K * ipc + 3 * (o - 1) * inner * K * ipc)

    # A reduced outer loop is scaled to the full one by work done, at the measured rate.
    scale = flops(full_outer) / flops(outer)
    flops = flops(outer)
    return {"config": f"width {width}, ipc {ipc}" + (f" (outer {outer}/{full_outer})" if scale != 1 else ""),
            "compile+first s": seconds[0], "s/iteration": per_iter * scale,
            "extrapolated": scale != 1, "GFLOP/s": flops / per_iter / 1e9,
            "peak RSS GiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def main(_):
    if FLAGS.single:
        print(json.dumps(measure(FLAGS.single)))
        return
    import jax
    matmul = timing.matmul_gflops()
    print(f"backend {jax.default_backend()}; jitted fp32 matmul {matmul:.1f} GFLOP/s")
    rows = []
    for spec in FLAGS.configs:
        out = subprocess.run([sys.executable, __file__, f"--single={spec}",
                              f"--repeats={FLAGS.repeats}",
                              f"--class_strategy={FLAGS.class_strategy}"],
                             capture_output=True, text=True, check=True)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        row["vs matmul"] = row["GFLOP/s"] / matmul
        if row["config"].startswith("width 128, ipc 10"):
            row["vs reference (253 s)"] = 253.0 / row["s/iteration"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(timing.table(rows, ["config", "s/iteration", "extrapolated", "GFLOP/s", "vs matmul",
                              "peak RSS GiB", "vs reference (253 s)", "compile+first s"]))


if __name__ == "__main__":
    app.run(main)
