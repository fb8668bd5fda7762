r"""Where a DM iteration's time goes: its parts timed one by one, side by side with the whole iteration.

A DM iteration (dcjax/condense/distribution_matching.py) is, per class, with one DSA transform shared by both
batches:
  real:      DSA on batch_real real images, their embeddings (a forward pass, no gradient), the mean;
  synthetic: DSA on ipc synthetic images, their embeddings, and the backward pass to the images.
This benchmark jits each part on its own, over all K classes with the run's class strategy, and times
it beside the whole jitted iteration (``condense.make_iteration_fn``), in one process, so the table's
shares add up against the same machine state. Each row also has its FLOPs (XLA's count of one
forward per image times the images it sees) and GFLOP/s against a jitted matmul measured in the same
run.

  python benchmarks/dm_profile.py                       # ConvNet-128, ipc 10, batch_real 256 (paper settings)
  python benchmarks/dm_profile.py --width=32 --repeats=5
  python benchmarks/dm_profile.py --precision=bf16      # bf16 matmul inputs, fp32 accumulation
"""

import functools
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

import timing  # noqa: E402

flags.DEFINE_integer("width", 128, "ConvNet width.")
flags.DEFINE_integer("depth", 3, "ConvNet blocks (the paper's 3; the tests run 1).")
flags.DEFINE_integer("ipc", 10, "Synthetic images per class.")
flags.DEFINE_integer("batch_real", 256, "Real images per class per iteration.")
flags.DEFINE_integer("repeats", 3, "Timed calls per row (median reported), after one warm-up call.")
flags.DEFINE_integer("microbatch", None, "Real-embedding chunk (CondenseConfig.microbatch; None: per backend, 0: off).")
flags.DEFINE_enum("conv_impl", "im2col", ["im2col", "lax"], "Convolution implementation of the network.")
flags.DEFINE_enum("precision", "fp32", ["fp32", "bf16"], "Matching-network matmul precision (CondenseConfig).")
flags.DEFINE_string("class_strategy", "auto", "Per-class strategy (auto: map on CPU, vmap on GPU/TPU).")
FLAGS = flags.FLAGS
K, SHAPE, POOL_PER_CLASS = 10, (28, 28, 1), 300


def _setup():
    """Model, config, pool, class index, one iteration's real batch and frozen network, and the parts."""
    import jax
    from dcjax import condense, data, models

    cfg = condense.CondenseConfig(
        ipc=FLAGS.ipc,
        batch_real=FLAGS.batch_real,
        method="dm",
        class_strategy=FLAGS.class_strategy,
        microbatch=FLAGS.microbatch,
        precision=FLAGS.precision,
    )
    strategy = condense.resolve_class_strategy(cfg.class_strategy)
    model = models.ModelConfig(
        width=FLAGS.width, depth=FLAGS.depth, conv_impl=FLAGS.conv_impl, precision=FLAGS.precision
    )
    fns = models.make_model(model, SHAPE, K)  # The parts see the network the iteration matches with.
    pool, index = timing.random_pool(K, SHAPE, POOL_PER_CLASS)
    state, _ = condense.init_synthetic(cfg, jax.random.key(1), pool, index)
    variables = fns.init(jax.random.key(2))
    real = pool[data.sample_per_class(jax.random.key(3), index, cfg.batch_real)]  # [K, batch_real, ...]
    syn = state.images.reshape((K, cfg.ipc) + SHAPE)
    keys = jax.vmap(functools.partial(jax.random.fold_in, jax.random.key(4)))(jax.numpy.arange(K))
    parts = _parts(fns, cfg, strategy, variables, (real, syn, keys))
    step = condense.make_iteration_fn(fns, cfg)
    return fns, cfg, strategy, parts, (step, state, (pool, index))


def _parts(fns, cfg, strategy: str, variables, batches):
    """{part name: (function, its arguments)}: the real and synthetic halves of the iteration, jittable alone."""
    import jax
    from dcjax import dsa, models
    from dcjax.condense import distances
    from dcjax.condense import distribution_matching as dm

    real, syn, keys = batches
    chunk = dm._embed_chunk(cfg, fns)

    def over_classes(per_class, *xs):
        return distances.sum_over_classes(per_class, strategy, xs)

    def real_dsa(r, k):
        return dsa.dsa_augment(k, r, cfg.dsa_strategy, dsa.SIAMESE)

    def real_part(r, k):  # As the iteration embeds the real images: the forward-only lowering.
        return jax.numpy.sum(dm.mean_embedding(models.forward_only(fns), variables, real_dsa(r, k), chunk))

    def syn_loss(s, k):
        return jax.numpy.sum(dm.mean_embedding(fns, variables, dsa.dsa_augment(k, s, cfg.dsa_strategy, dsa.SIAMESE)))

    return {
        "real: DSA only": (lambda r, k: over_classes(lambda a, b: jax.numpy.sum(real_dsa(a, b)), r, k), (real, keys)),
        "real: DSA + embed (forward)": (lambda r, k: over_classes(real_part, r, k), (real, keys)),
        "synthetic: DSA + embed + backward": (jax.grad(lambda s, k: over_classes(syn_loss, s, k)), (syn, keys)),
    }


def main(_):
    import jax

    matmul = timing.matmul_gflops()
    fns, cfg, strategy, parts, (step, state, real_data) = _setup()
    f = timing.forward_flops(fns, SHAPE)
    flops = {
        "real: DSA only": 0.0,
        "real: DSA + embed (forward)": f * K * cfg.batch_real,
        "synthetic: DSA + embed + backward": 3 * f * K * cfg.ipc,
    }
    rows = []
    for name, (fn, args) in parts.items():
        seconds = timing.median_seconds(jax.jit(fn), *args, repeats=FLAGS.repeats)
        rows.append({"part": name, "s": seconds, "GFLOP/s": flops[name] / seconds / 1e9})
    current = [state]  # The iteration donates its state: thread it through the timed calls.

    def iteration():
        current[0], out = step(current[0], real_data, jax.random.key(5))
        return out

    whole = timing.median_seconds(iteration, repeats=FLAGS.repeats)
    total_flops = f * (K * cfg.batch_real + 3 * K * cfg.ipc)
    rows.append({"part": "whole iteration", "s": whole, "GFLOP/s": total_flops / whole / 1e9})
    for row in rows:
        row["share of iteration"] = row["s"] / whole
        row["vs matmul"] = row["GFLOP/s"] / matmul
    from dcjax.condense import distribution_matching as dm

    print(
        f"{timing.library()}; {timing.cpu()}; backend {jax.default_backend()}; class strategy {strategy}; "
        f"ConvNet-{FLAGS.width} d{FLAGS.depth} ({FLAGS.conv_impl}, {FLAGS.precision}), "
        f"ipc {cfg.ipc}, batch_real {cfg.batch_real}, real-embedding chunk {dm._embed_chunk(cfg, fns)}, "
        f"DSA {cfg.dsa_strategy}; jitted fp32 matmul {matmul:.1f} GFLOP/s"
    )
    print(json.dumps(rows))
    print(timing.table(rows, ["part", "s", "share of iteration", "GFLOP/s", "vs matmul"]))


if __name__ == "__main__":
    app.run(main)
