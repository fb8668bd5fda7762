r"""Training-engine throughput on this machine, as ratios measured in one run.

1. ConvNet-128 (MNIST) train step at batch 256 for each conv lowering, whole batch and
   micro-batched (gradients of 8-image chunks summed): seconds per step, images/s,
   achieved GFLOP/s and its ratio to a jitted fp32 matmul's GFLOP/s. (The reference
   PyTorch code is not timed here; ../shared/peers/reference_dc's `full` mode times a
   whole epoch beside it.)
2. The model axis: M models trained at once with each strategy ('vmap', 'map') vs a
   Python loop over M single-model jitted trainings of the same work (ratio > 1: faster
   than the loop).

  python benchmarks/engine.py [--models=8] [--repeats=3]
"""

import functools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

import timing  # noqa: E402

flags.DEFINE_integer("models", 8, "M for the model-axis comparison.")
flags.DEFINE_integer("batch", 256, "Batch size of the single-model train step.")
flags.DEFINE_integer("repeats", 3, "Timed repeats (median reported).")
FLAGS = flags.FLAGS


def step_benchmark(conv_impl: str, microbatch: int, matmul: float) -> dict:
    import jax
    import jax.numpy as jnp
    from dcjax import models, train

    fns = models.make_model(models.ModelConfig(conv_impl=conv_impl), (28, 28, 1), 10)
    trainer = train.Trainer(fns, train.make_optimizer(train.TrainConfig(), 0.01), microbatch=microbatch)
    variables = fns.init(jax.random.key(0))
    state = train.TrainState(variables, trainer.optimizer.init(variables["params"]))
    images = jax.random.normal(jax.random.key(1), (FLAGS.batch, 28, 28, 1))
    batch = (images, jnp.arange(FLAGS.batch) % 10, jnp.ones(FLAGS.batch))
    step = jax.jit(functools.partial(train.train_step, trainer))
    key = jax.random.key(2)
    seconds = timing.median_seconds(step, state, batch, key, repeats=FLAGS.repeats)
    # FLOPs of the whole-batch step (XLA counts a scan body once, so never the chunked one).
    gflops = step_flops(fns, state, batch, key) / seconds / 1e9
    return {
        "workload": f"train step, conv={conv_impl}, microbatch={microbatch or 'off'}",
        "seconds": seconds,
        "images/s": FLAGS.batch / seconds,
        "GFLOP/s": gflops,
        "vs matmul": gflops / matmul,
    }


def step_flops(fns, state, batch, key) -> float:
    import jax
    from dcjax import train

    trainer = train.Trainer(fns, train.make_optimizer(train.TrainConfig(), 0.01))
    step = jax.jit(functools.partial(train.train_step, trainer))
    return timing.compiled_flops(step, state, batch, key)


def model_axis_benchmark(strategy: str) -> dict:
    """M models x 2 epochs over 64 images each (batch 32): the shape of a small bank."""
    import jax
    import jax.numpy as jnp
    from dcjax import engine, models, train

    fns = models.make_model(models.ModelConfig(), (28, 28, 1), 10)
    cfg = train.TrainConfig(epochs=2, batch_size=32)
    m = FLAGS.models
    images = jax.random.normal(jax.random.key(0), (64 * m, 28, 28, 1))
    labels = jnp.arange(64 * m) % 10
    masks = jnp.zeros((m, 64 * m), bool)
    masks = jnp.stack([masks[i].at[64 * i : 64 * (i + 1)].set(True) for i in range(m)])
    keys = jax.random.split(jax.random.key(3), m)
    run = lambda: engine.train_models(fns, cfg, keys, (images, labels, masks), strategy)  # noqa
    seconds = timing.median_seconds(run, repeats=FLAGS.repeats)
    return {"workload": f"{m} models, strategy={strategy}", "seconds": seconds}


def main(_):
    import jax

    matmul = timing.matmul_gflops()
    print(f"backend {jax.default_backend()}, devices {jax.devices()}")
    print(f"jitted 2048^3 fp32 matmul: {matmul:.1f} GFLOP/s (roofline)\n")
    rows = [step_benchmark(impl, mb, matmul) for impl, mb in (("lax", 0), ("im2col", 0), ("lax", 8), ("im2col", 8))]
    for row in rows:
        row["vs lax, whole batch"] = rows[0]["seconds"] / row["seconds"]
        row["vs PyTorch (0.95 s)"] = 0.95 / row["seconds"]
    print(
        timing.table(
            rows,
            ["workload", "seconds", "images/s", "GFLOP/s", "vs matmul", "vs lax, whole batch", "vs PyTorch (0.95 s)"],
        )
    )
    axis = [model_axis_benchmark(s) for s in ("loop", "map", "vmap")]
    from dcjax import engine

    for row in axis:
        row["speed-up vs loop"] = axis[0]["seconds"] / row["seconds"]
    print()
    print(timing.table(axis, ["workload", "seconds", "speed-up vs loop"]))
    print(f"\nauto strategy on this backend: {engine.resolve_strategy('auto')}")


if __name__ == "__main__":
    app.run(main)
