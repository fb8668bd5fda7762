"""Memory estimates of condensation, from the shapes this package owns (``dcjax.memory`` holds the primitives).

What a condensation iteration holds (``condense.make_iteration_fn``, or ``privacy.bank.condense_models`` for
several models at once): the real pool, the synthetic set with its momentum and gradient, the matching step's
synthetic and real gradients per class, and the inner loop's training step; sequential phases share memory.
``check_condensation`` refuses a ``condense.run`` whose iteration or evaluation cannot fit, before any work.
"""

from __future__ import annotations

from dcjax import memory
from dcjax import train as train_lib
from dcjax.condense.config import METHODS, CondenseConfig, resolve_class_strategy
from dcjax.models import ModelFns


def _matching_parts(
    cost: memory.NetworkCost, config: CondenseConfig, class_strategy: str, num_classes: int, microbatch: int
):
    """(synthetic-gradient bytes, real-gradient bytes) of one model's matching step.

    The gradient w.r.t. the images runs back through the loop over classes, so every class keeps its residuals
    until the backward pass, whatever the class strategy ('map' is a scan, which saves them per class): per image
    the network's forward activations and, for gradient matching (second order: the synthetic gradient w.r.t. the
    images), its backward's cotangents too (``Method.kept_for_image_gradient``). On top, the live classes' (all
    under vmap, one under map) temporaries: one more backward over ipc images, the real gradient over batch_real
    images in chunks (DM: a forward-only real embedding) and the DSA copies of both batches (methods with DSA). The
    real batches of every class [K, batch_real, H, W, C] are gathered at once.
    """
    method = METHODS[config.method]
    classes = memory.model_concurrency(class_strategy, num_classes)
    chunk = min(microbatch or config.batch_real, config.batch_real)
    augmented = 2 * (config.ipc + config.batch_real) * cost.image if method.dsa else 0
    syn = int((num_classes * method.kept_for_image_gradient + classes) * config.ipc * cost.backward_per_image)
    if method.gradient_matching:
        real = chunk * cost.backward_per_image + cost.params
    else:
        real = chunk * cost.forward_per_image
    gathered = 2 * num_classes * config.batch_real * cost.image
    return syn + classes * augmented // 2, classes * (real + augmented // 2) + gathered


def _inner_loop_bytes(cost: memory.NetworkCost, config: CondenseConfig, set_size: int, microbatch: int) -> int:
    """Bytes of one model's inner-loop training step on the synthetic set (set_size images); 0 for methods without
    one (DM)."""
    if not METHODS[config.method].gradient_matching:
        return 0
    return memory.train_step_bytes(cost, min(config.batch_train, set_size), microbatch)


def _flags(set_name: str, class_strategy: str, num_classes: int, live: int) -> dict[str, str]:
    """The flags that lower each part of ``condensation_estimate`` (live: models running at once)."""
    vmapped = " --class_strategy=map" if class_strategy == "vmap" and num_classes > 1 else ""
    many = " --models_per_chunk --strategy=map" if live > 1 else ""
    return {
        set_name: "--ipc" + many,
        "synthetic gradient": "--ipc" + vmapped + many,
        "real gradient": "--batch_real" + vmapped + many,
        "inner loop": "--batch_train" + many,
        "network": "--width" + many,
    }


def condensation_estimate(
    fns: ModelFns,
    config: CondenseConfig,
    image_shape,
    num_classes: int,
    pool_size: int,
    models: tuple[int, int] = (1, 1),
) -> memory.Estimate:
    """Memory of condensation iterations (``condense.make_iteration_fn``, or ``bank.condense_models`` for c models).

    Args:
      config: a ``condense.CondenseConfig``.
      image_shape: (H, W, C); num_classes: K; pool_size: N real images on the device [N, H, W, C].
      models: (c models condensed at once, how many of them run at once: c under vmap, 1 under map); the
        default is one run.
    """
    count, live = models
    cost = memory.network_cost(fns, tuple(image_shape))
    class_strategy = resolve_class_strategy(config.class_strategy)
    microbatch = train_lib.resolve_microbatch(config.microbatch, fns)
    syn, real = _matching_parts(cost, config, class_strategy, num_classes, microbatch)
    inner = _inner_loop_bytes(cost, config, num_classes * config.ipc, microbatch)
    set_name = f"synthetic set {config.ipc} x {num_classes} images"  # x3: images, momentum, gradient.
    parts = {
        "real pool": pool_size * cost.image,
        set_name: 3 * count * num_classes * config.ipc * cost.image,
        "synthetic gradient": live * syn,
        "real gradient": live * real,
        "inner loop": live * inner,
        "network": live * (2 * cost.params + cost.fixed),
    }
    # Sequential phases share memory: the matching step's gradients and the inner loop are never live together.
    temporaries = max(live * (syn + real), live * inner)
    total = sum(parts.values()) - parts["synthetic gradient"] - parts["real gradient"] - parts["inner loop"]
    return memory.Estimate(total + temporaries, parts, _flags(set_name, class_strategy, num_classes, live))


def check_condensation(config, fns: ModelFns, train, test) -> None:
    """Refuses (ValueError) a ``dcjax.condense.run.RunConfig`` whose iteration or evaluation cannot fit; logs both.

    train, test: the ``ArrayDataset``s of the run (images [N, H, W, C]); the real pool stays on the device while
    the synthetic set [K*ipc, H, W, C] is evaluated.
    """
    image_shape, num_classes = tuple(train.images.shape[1:]), train.num_classes
    pool = len(train.labels) * memory.network_cost(fns, image_shape).image
    memory.check_fits(
        condensation_estimate(fns, config.condense, image_shape, num_classes, len(train.labels)), "condensation"
    )
    evaluation = memory.evaluation_estimate(
        fns, config.eval, image_shape, num_classes * config.condense.ipc, len(test.labels)
    )
    memory.check_fits(memory.plus(evaluation, "real pool", pool), "evaluating the synthetic set")
