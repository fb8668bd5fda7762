r"""Shadow-bank throughput: model-steps per second for M models trained at once.

Compares, in one run, each model-axis strategy against a Python loop over a jitted
single-model training doing the same work, and (with --devices=8, which sets
XLA_FLAGS=--xla_force_host_platform_device_count=8 before jax loads) the bank sharded
over a 'models' mesh axis.

  python benchmarks/bank.py                 # M=16 on the default device(s)
  python benchmarks/bank.py --devices=8     # plus the sharded bank on 8 fake CPU devices
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

flags.DEFINE_integer("models", 16, "M, models in the bank.")
flags.DEFINE_integer("devices", 0, "Fake CPU devices (0: leave the platform alone).")
flags.DEFINE_integer("width", 32, "ConvNet width of the shadow models.")
flags.DEFINE_integer("repeats", 3, "Timed repeats (median).")
FLAGS = flags.FLAGS
PER_MODEL, BATCH, EPOCHS = 64, 32, 2


def _bank(mesh=None, strategy="auto"):
    import jax
    import jax.numpy as jnp
    from dcjax import engine, models, train

    fns = models.make_model(models.ModelConfig(width=FLAGS.width), (28, 28, 1), 10)
    cfg = train.TrainConfig(epochs=EPOCHS, batch_size=BATCH)
    m = FLAGS.models
    pool = jax.random.normal(jax.random.key(0), (PER_MODEL * 2, 28, 28, 1))
    labels = jnp.arange(PER_MODEL * 2) % 10
    from dcjax.privacy import masks as masks_lib

    keep = jnp.asarray(masks_lib.lira_keep_masks(jax.random.key(1), m, PER_MODEL * 2))
    keys = jax.random.split(jax.random.key(2), m)
    return lambda: engine.train_models(fns, cfg, keys, (pool, labels, keep), strategy, mesh)


def main(_):
    if FLAGS.devices:
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={FLAGS.devices}"
        )
    import jax
    import timing
    from dcjax import engine

    steps = FLAGS.models * EPOCHS * (PER_MODEL // BATCH)
    rows = []
    for strategy in ("loop", "map", "vmap", "auto"):
        seconds = timing.median_seconds(_bank(strategy=strategy), repeats=FLAGS.repeats)
        rows.append(
            {
                "bank": f"M={FLAGS.models}, {strategy}"
                + (f" (= {engine.resolve_strategy('auto')})" if strategy == "auto" else ""),
                "seconds": seconds,
                "model-steps/s": steps / seconds,
            }
        )
    if jax.device_count() > 1:
        mesh = engine.model_mesh()
        seconds = timing.median_seconds(_bank(mesh=mesh), repeats=FLAGS.repeats)
        rows.append(
            {
                "bank": f"M={FLAGS.models}, sharded over {mesh.size} devices",
                "seconds": seconds,
                "model-steps/s": steps / seconds,
            }
        )
    for row in rows:
        row["vs loop"] = rows[0]["seconds"] / row["seconds"]
    print(
        f"backend {jax.default_backend()}, {jax.device_count()} device(s); ConvNet width "
        f"{FLAGS.width}, {PER_MODEL} images per model, batch {BATCH}, {EPOCHS} epochs"
    )
    print(timing.table(rows, ["bank", "seconds", "model-steps/s", "vs loop"]))


if __name__ == "__main__":
    app.run(main)
