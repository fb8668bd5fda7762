r"""Where a DC (or DSA) iteration's time goes: its parts timed one by one, beside a whole iteration.

A DC iteration (dcjax/condense/gradient_matching.py) is a fresh network, then outer_loop matching steps, each
followed (except the last) by inner_loop epochs of SGD on the synthetic set. So its time is
  outer x (matching step) + (outer - 1) x (inner loop),
and a matching step is the real gradients (K classes x batch_real images, constants) plus the synthetic gradients
and their backward to the images (second order). This benchmark jits each part on its own, over all K classes with
the run's class strategy, times it, predicts a whole iteration from the parts, and checks the prediction against a
whole iteration of --check_outer outer steps (``condense.make_iteration_fn``) in the same process. Each part has
its FLOPs (XLA's count of one forward pass per image, times the passes: 3 for a gradient, ~6 for the synthetic
second-order gradient) and GFLOP/s against a jitted fp32 matmul measured in the same run.

  python benchmarks/dc_profile.py                        # ConvNet-128, ipc 10, paper loops (10 x 50), batch_real 256
  python benchmarks/dc_profile.py --method=dsa
  python benchmarks/dc_profile.py --precision=bf16       # bf16 matmul inputs, fp32 accumulation
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

import timing  # noqa: E402

flags.DEFINE_integer("width", 128, "ConvNet width.")
flags.DEFINE_integer("depth", 3, "ConvNet blocks (the paper's 3; the tests run 1).")
flags.DEFINE_integer("ipc", 10, "Synthetic images per class (its paper loops: LOOPS_BY_IPC).")
flags.DEFINE_integer("batch_real", 256, "Real images per class per matching step.")
flags.DEFINE_enum("method", "dc", ["dc", "dsa"], "Gradient-matching method.")
flags.DEFINE_enum("precision", "fp32", ["fp32", "bf16"], "Matching-network matmul precision (CondenseConfig).")
flags.DEFINE_integer("repeats", 1, "Timed calls per part (median reported), after one warm-up call.")
flags.DEFINE_integer("check_outer", 2, "Outer steps of the whole iteration timed to check the prediction.")
flags.DEFINE_string("class_strategy", "auto", "Per-class strategy (auto: map on CPU, vmap on GPU/TPU).")
FLAGS = flags.FLAGS
K, SHAPE, POOL_PER_CLASS = 10, (28, 28, 1), 300


def _setup():
    """(network, the same at the run's precision, config, (real batch, synthetic images, their labels),
    (state, (pool, index)) for a whole iteration)."""
    import jax
    from dcjax import condense, data, models

    outer, inner = condense.default_loops(FLAGS.ipc)
    cfg = condense.CondenseConfig(
        ipc=FLAGS.ipc,
        batch_real=FLAGS.batch_real,
        method=FLAGS.method,
        outer_loop=outer,
        inner_loop=inner,
        class_strategy=FLAGS.class_strategy,
        precision=FLAGS.precision,
    )
    base = models.make_model(models.ModelConfig(width=FLAGS.width, depth=FLAGS.depth), SHAPE, K)
    fns = models.with_precision(base, cfg.precision)  # The network the iteration matches with.
    pool, index = timing.random_pool(K, SHAPE, POOL_PER_CLASS)
    state, _ = condense.init_synthetic(cfg, jax.random.key(1), pool, index)
    real = pool[data.sample_per_class(jax.random.key(3), index, cfg.batch_real)]  # [K, batch_real, ...]
    syn = jax.numpy.array(state.images, copy=True)  # The whole iteration donates state.images.
    return base, fns, cfg, (real, syn, condense.synthetic_labels(K, cfg.ipc)), (state, (pool, index))


def _parts(fns, cfg, batches) -> dict:
    """{part name: (function of (variables, key), FLOP multiplier of one forward pass per image)}."""
    import jax
    from dcjax import condense, train
    from dcjax.condense import distances
    from dcjax.condense import gradient_matching as gm

    real, syn, syn_labels = batches
    strategy = condense.resolve_class_strategy(cfg.class_strategy)
    microbatch = train.resolve_microbatch(cfg.microbatch, fns)
    classes = jax.numpy.arange(K, dtype=jax.numpy.int32)

    def real_gradients(variables, key):
        def per_class(r, c):
            g = gm._class_gradient(fns, variables, r, c, microbatch)
            return sum(jax.numpy.sum(leaf) for leaf in jax.tree.leaves(g))

        return distances.sum_over_classes(per_class, strategy, (real, classes))

    def matching_step(variables, key):
        loss_fn = lambda s: condense.matching_loss(fns, cfg, strategy, s, (variables, real), key)  # noqa: E731
        return jax.value_and_grad(loss_fn)(syn)

    def inner_loop(variables, key):
        return gm._train_network(fns, cfg, variables, syn, syn_labels, key)

    n_real, n_syn, inner = K * cfg.batch_real, K * cfg.ipc, cfg.loops[1]
    return {
        "real gradients (part of a matching step)": (real_gradients, 3 * n_real),
        "matching step (real + synthetic 2nd order)": (matching_step, 3 * n_real + 6 * n_syn),
        f"inner loop ({inner} SGD epochs)": (inner_loop, 3 * inner * n_syn),
    }


def _whole(base, cfg, real_data, outer: int) -> float:
    """Median seconds of a whole jitted iteration with ``outer`` outer steps (state threaded: it is donated)."""
    import dataclasses

    import jax
    from dcjax import condense

    step = condense.make_iteration_fn(base, dataclasses.replace(cfg, outer_loop=outer))
    current = [real_data[0]]

    def iteration():
        current[0], out = step(current[0], real_data[1], jax.random.key(5))
        return out

    return timing.median_seconds(iteration, repeats=FLAGS.repeats)


def _rows(parts: dict, seconds: dict, f: float, outer: int) -> list[dict]:
    """The table: each part, the synthetic remainder of a matching step, and the predicted whole iteration."""
    (real_name, (_, real_mult)), (match_name, (_, match_mult)), (inner_name, (_, inner_mult)) = parts.items()
    real_s, match_s, inner_s = seconds[real_name], seconds[match_name], seconds[inner_name]
    per_iteration = {real_name: outer * real_s, match_name: outer * match_s, inner_name: (outer - 1) * inner_s}
    rows = [
        {
            "part": name,
            "s per call": seconds[name],
            "calls": outer if name != inner_name else outer - 1,
            "s per iteration": per_iteration[name],
            "GFLOP/s": mult * f / seconds[name] / 1e9,
        }
        for name, (_, mult) in parts.items()
    ]
    syn_s = match_s - real_s
    rows.insert(
        2,
        {
            "part": "synthetic 2nd order (matching - real)",
            "s per call": syn_s,
            "calls": outer,
            "s per iteration": outer * syn_s,
            "GFLOP/s": (match_mult - real_mult) * f / syn_s / 1e9,
        },
    )
    total = per_iteration[match_name] + per_iteration[inner_name]
    flops = (outer * match_mult + (outer - 1) * inner_mult) * f
    rows.append(
        {"part": f"predicted iteration ({outer} outer)", "s per iteration": total, "GFLOP/s": flops / total / 1e9}
    )
    for row in rows:
        row["share of iteration"] = row["s per iteration"] / total
    return rows


def main(_):
    import jax
    from dcjax import condense

    matmul = timing.matmul_gflops()
    base, fns, cfg, batches, real_data = _setup()
    outer, inner = cfg.loops
    f = timing.forward_flops(fns, SHAPE)
    variables = fns.init(jax.random.key(2))
    parts = _parts(fns, cfg, batches)
    seconds = {}
    for name, (fn, _) in parts.items():
        seconds[name] = timing.median_seconds(jax.jit(fn), variables, jax.random.key(4), repeats=FLAGS.repeats)
        print(json.dumps({"part": name, "s": seconds[name]}), flush=True)
    rows = _rows(parts, seconds, f, outer)
    check = _rows(parts, seconds, f, FLAGS.check_outer)[-1]["s per iteration"]
    measured = _whole(base, cfg, real_data, FLAGS.check_outer)
    rows.append(
        {
            "part": f"measured iteration ({FLAGS.check_outer} outer)",
            "s per iteration": measured,
            "predicted from the parts": check,
            "measured / predicted": measured / check,
        }
    )
    for row in rows:
        if "GFLOP/s" in row:
            row["vs matmul"] = row["GFLOP/s"] / matmul
    print(
        f"{timing.library()}; {timing.cpu()}; backend {jax.default_backend()}; "
        f"class strategy {condense.resolve_class_strategy(cfg.class_strategy)}; "
        f"{cfg.method.upper()} ConvNet-{FLAGS.width} d{FLAGS.depth} ({FLAGS.precision}), ipc {cfg.ipc}, "
        f"loops {outer} x {inner}, "
        f"batch_real {cfg.batch_real}, forward {f / 1e6:.1f} MFLOP/image; jitted fp32 matmul {matmul:.1f} GFLOP/s"
    )
    print(json.dumps(rows))
    columns = ["part", "s per call", "calls", "s per iteration", "share of iteration", "GFLOP/s", "vs matmul"]
    print(timing.table(rows, columns + ["predicted from the parts", "measured / predicted"]))


if __name__ == "__main__":
    app.run(main)
