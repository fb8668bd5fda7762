r"""What progress reporting (dcjax.progress) costs: the same jitted training with it on and off.

M models x E epochs on N random MNIST-shaped images (ConvNet of the given width) through
``engine.train_models``; progress on and off are two compilations (the switch is part of the
jit cache key). After one warm-up (compiling) call of each, the timed calls alternate
on/off/on/off..., so a machine loaded by other work slows both alike; the result is the
median of the per-pair ratios on/off (1.00 = free; the target is <= 1.02), for wall time
and for the process's CPU time (less sensitive to other processes). On a loaded machine the
pairs still scatter by more than 2 %, so it also times a tick on its own (a scan with and
without one per iteration) and reports the overhead it implies: ticks x cost / run time. It
also checks that both settings produce bitwise the same parameters.

  python benchmarks/progress_overhead.py [--models=4] [--epochs=50] [--examples=500] \
      [--width=32] [--repeats=5] [--strategy=auto]
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

flags.DEFINE_integer("models", 4, "Models trained at once (M).")
flags.DEFINE_integer("epochs", 50, "Epochs per model (E).")
flags.DEFINE_integer("examples", 500, "Training images (N), batch 256.")
flags.DEFINE_integer("width", 32, "ConvNet width.")
flags.DEFINE_integer("repeats", 5, "Timed calls of each setting (interleaved).")
flags.DEFINE_string("strategy", "auto", "Model-axis strategy (auto: map on CPU, vmap elsewhere).")
FLAGS = flags.FLAGS


def _setup():
    import jax
    import jax.numpy as jnp
    from dcjax import models, train

    fns = models.make_model(models.ModelConfig(width=FLAGS.width), (28, 28, 1), 10)
    images = jax.random.normal(jax.random.key(0), (FLAGS.examples, 28, 28, 1))
    labels = jnp.arange(FLAGS.examples, dtype=jnp.int32) % 10
    masks = jnp.ones((FLAGS.models, FLAGS.examples), bool)
    keys = jax.random.split(jax.random.key(1), FLAGS.models)
    return fns, train.TrainConfig(epochs=FLAGS.epochs), keys, (images, labels, masks)


def _timed(setup, on: bool):
    """((wall s, CPU s), outputs, ticks received) of one train_models call with progress ``on``."""
    from dcjax import engine, progress

    fns, config, keys, data = setup
    progress.set_enabled(on)
    calls = []
    tick = progress._on_tick
    progress._on_tick = lambda units: calls.append(units) or tick(units)  # Counts the host calls.
    try:
        tic, cpu = time.perf_counter(), time.process_time()
        out = engine.train_models(fns, config, keys, data, FLAGS.strategy)  # Returns ready.
        return (time.perf_counter() - tic, time.process_time() - cpu), out, len(calls)
    finally:
        progress._on_tick = tick
        progress.set_enabled(True)


def _tick_cost(n: int = 2000, repeats: int = 5) -> float:
    """Seconds per tick: a jitted scan of n trivial iterations with and without a tick each."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from dcjax import progress

    def run(with_tick):
        def body(c, i):
            if with_tick:
                progress.tick(i, n, 1)
            return c + 1.0, None

        return jax.jit(lambda x: jax.lax.scan(body, x, jnp.arange(n))[0])

    fns = {True: run(True), False: run(False)}
    per = []
    with progress.task("tick cost", n, compiling=False):
        for f in fns.values():
            jax.block_until_ready(f(jnp.zeros(())))  # Compile.
        for _ in range(repeats):
            times = {}
            for on, f in fns.items():
                tic = time.perf_counter()
                jax.block_until_ready(f(jnp.zeros(())))
                times[on] = time.perf_counter() - tic
            per.append((times[True] - times[False]) / n)
    return float(np.median(per))


def main(_):
    import jax
    import numpy as np

    setup = _setup()
    warm = {on: _timed(setup, on) for on in (True, False)}  # Compiles each.
    same = all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(warm[True][1]), jax.tree.leaves(warm[False][1])))
    seconds = {True: [], False: []}
    for _ in range(FLAGS.repeats):
        for on in (True, False):  # Interleaved: load from other processes hits both alike.
            seconds[on].append(_timed(setup, on)[0])
    print(
        f"backend {jax.default_backend()}; {FLAGS.models} models x {FLAGS.epochs} epochs on "
        f"{FLAGS.examples} images, width {FLAGS.width}, strategy {FLAGS.strategy}"
    )
    print(f"compile+first call: on {warm[True][0][0]:.1f} s, off {warm[False][0][0]:.1f} s")
    for k, kind in enumerate(("wall", "CPU")):
        for name, on in (("on ", True), ("off", False)):
            print(
                f"{kind} s, progress {name}: "
                + " ".join(f"{s[k]:.2f}" for s in seconds[on])
                + f"  (median {np.median([s[k] for s in seconds[on]]):.2f})"
            )
        ratios = [a[k] / b[k] for a, b in zip(seconds[True], seconds[False])]
        print(
            f"{kind}: per-pair ratios on/off "
            + " ".join(f"{r:.3f}" for r in ratios)
            + f"; median {np.median(ratios):.3f}"
        )
    print("(interleaved A/B pairs: other load on the machine affects both settings alike; target <= 1.02)")
    cost, ticks = _tick_cost(), warm[True][2]
    off = np.median([s[0] for s in seconds[False]])
    print(
        f"one tick costs {1e6 * cost:.0f} us; a run makes {ticks} host calls: implied overhead "
        f"{100 * cost * ticks / off:.3f} % of {off:.2f} s"
    )
    print(f"bitwise identical parameters and losses: {same}")


if __name__ == "__main__":
    app.run(main)
