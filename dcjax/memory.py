"""Memory estimates from shapes, checked against the host's (or device's) memory before a run starts.

Why: a run whose arrays cannot fit dies with XLA's ``RESOURCE_EXHAUSTED`` traceback, after the data is loaded and
the workdir written, possibly hours in (a study's third row). The checks here refuse it first, with one line giving
the estimate and the flag that lowers it.

The estimate is analytic, from shapes, and allocates nothing: compiling the real step to ask XLA
(``lower().compile().memory_analysis()``) costs ~30 s even for a width-8 ConvNet on a loaded 2-core CPU, and longer
the larger the shapes (the absurd ones included). What it counts, in float32 bytes:

* the network (``NetworkCost``, one shape-only trace of ``jax.vjp``, ~0.2 s): its parameters and, per image,
  the activations a backward pass keeps (the vjp residuals) and the largest one (what a forward-only pass holds);
* per run kind, the arrays that must exist (pool, synthetic set with its momentum and gradient, stacked models,
  logits) plus the temporaries of the largest step (a matching step per class, a training step per batch), times
  how many of them run at once (a ``vmap`` over classes or models runs them all; ``map`` one at a time).

Sequential phases share memory (XLA reuses buffers), so a phase's temporaries are a max, not a sum.
``tests/test_memory.py`` compares the estimates with XLA's ``memory_analysis`` of the real jitted steps.
Set ``DCJAX_SKIP_MEMORY_CHECK=1`` to log the estimate without refusing (the estimate is wrong somewhere).
"""

from __future__ import annotations

import functools
import math
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
from absl import logging

from dcjax import engine
from dcjax import errors
from dcjax import train as train_lib
from dcjax.models import ModelFns

FLOAT = 4  # Bytes of a float32: images, parameters and activations are all float32.
MARGIN = 0.9  # Refuse above this share of the available memory: XLA needs room beyond its buffers.
SKIP_ENV = "DCJAX_SKIP_MEMORY_CHECK"
# Of a first-order backward's activations per synthetic image, what each class keeps for the gradient w.r.t. the
# images (calibrated against XLA, tests/test_memory.py). DC (second order: the synthetic gradient w.r.t. the
# images) keeps the forward residuals and the first backward's cotangents; DM, a first-order backward through
# the embedding only, keeps about half of them.
KEPT_FOR_IMAGE_GRADIENT = {"dc": 2.0, "dsa": 2.0, "dm": 0.5}
OPTIMIZER_COPIES = 4  # Parameters, momentum, gradient and the updated parameters of one SGD step.


class NetworkCost(NamedTuple):
    """Shapes of one network on images of one shape, in bytes."""

    params: int  # All parameters (and batch statistics).
    image: int  # One input image [H, W, C].
    backward_per_image: int  # Activations a backward pass keeps per image (vjp residuals).
    forward_per_image: int  # What a forward-only pass holds per image: twice its largest activation.
    fixed: int  # Residuals that do not grow with the batch (kernels kept for the backward).
    logits: int  # One image's logits [K].


class Estimate(NamedTuple):
    """A memory estimate: ``total`` bytes, and its named parts (for the message) with the flags lowering each."""

    total: int
    parts: dict[str, int]
    flags: dict[str, str]


def _bytes(tree) -> int:
    return sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(tree))


# The batch of the one shape-only trace: a prime, so the arrays whose size it divides are those that grow with
# the batch (activations), and the others (kernels kept for the backward) do not.
_TRACE_BATCH = 1009


@functools.lru_cache(maxsize=32)
def network_cost(fns: ModelFns, image_shape: tuple[int, int, int]) -> NetworkCost:
    """The network's ``NetworkCost`` on [H, W, C] images, from one shape-only trace (no allocation, no compile)."""
    variables = jax.eval_shape(fns.init, jax.random.key(0))

    def vjp_fn(params, x):
        loss = lambda p: jnp.sum(fns.apply({**variables, "params": p}, x))  # noqa: E731
        logits = fns.apply({**variables, "params": params}, x[:1])
        return jax.vjp(loss, params)[1], logits  # The vjp function's leaves are its saved residuals.

    x = jax.ShapeDtypeStruct((_TRACE_BATCH, *image_shape), jnp.float32)
    residuals, logits = jax.eval_shape(vjp_fn, variables["params"], x)
    sizes = [_bytes(leaf) for leaf in jax.tree.leaves(residuals)]
    per_image = [size // _TRACE_BATCH for size in sizes if size % _TRACE_BATCH == 0]
    return NetworkCost(
        params=_bytes(variables),
        image=math.prod(image_shape) * FLOAT,
        backward_per_image=sum(per_image),
        forward_per_image=2 * max(per_image, default=0),
        fixed=sum(size for size in sizes if size % _TRACE_BATCH),
        logits=_bytes(logits),
    )


def format_bytes(n: float) -> str:
    """'512 B', '3.0 MiB', '23.4 GiB', '6.2 TiB'."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _host_available_bytes() -> int:
    """MemAvailable of /proc/meminfo (what can be allocated without swapping), else free physical pages."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def available_bytes(device=None) -> int:
    """Bytes a run can still allocate on ``device`` (default: the first device).

    GPU/TPU: the allocator's limit minus what is in use (``memory_stats``); CPU (or a device without stats): the
    host's available memory, which every CPU device shares.
    """
    device = device or jax.devices()[0]
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    return _host_available_bytes()


def _flags_for(estimate: Estimate) -> str:
    """The flags of the largest parts that together make up most of the estimate, largest first."""
    flags, covered = [], 0
    for name, size in sorted(estimate.parts.items(), key=lambda kv: -kv[1]):
        for flag in estimate.flags.get(name, "").split():
            if flag not in flags:
                flags.append(flag)
        covered += size
        if covered >= 0.8 * sum(estimate.parts.values()) and flags:
            break
    return " or ".join(flags) if flags else "the dataset or network size"


def check_fits(estimate: Estimate, what: str, device=None) -> None:
    """Logs the estimate; ConfigError (one line) when it exceeds MARGIN of ``available_bytes(device)``.

    what: the run, e.g. 'condensation' (the message reads 'condensation needs ~X (...), this host has Y
    available; lower --ipc or --batch_train').
    """
    available = available_bytes(device)
    logging.info("memory: %s needs ~%s of %s available", what, format_bytes(estimate.total), format_bytes(available))
    if estimate.total <= MARGIN * available:
        return
    largest = sorted(estimate.parts.items(), key=lambda kv: -kv[1])[:3]
    detail = ", ".join(f"{name} {format_bytes(size)}" for name, size in largest)
    where = "this host" if (device or jax.devices()[0]).platform == "cpu" else "this device"
    message = (
        f"{what} needs ~{format_bytes(estimate.total)} ({detail}), {where} has {format_bytes(available)} "
        f"available; lower {_flags_for(estimate)}"
    )
    if os.environ.get(SKIP_ENV, "") not in ("", "0"):
        logging.warning("memory: %s (%s set: going on)", message, SKIP_ENV)
        return
    raise errors.ConfigError(None, f"{message} (or set {SKIP_ENV}=1 to run anyway)")


def _model_concurrency(strategy: str, count: int) -> int:
    """Models (or classes) whose temporaries are live at once: all of them under vmap, one under map or loop."""
    return count if strategy == "vmap" else 1


def train_step_bytes(cost: NetworkCost, batch: int, microbatch: int, private: bool = False) -> int:
    """Temporaries of one training step of one model on ``batch`` images, gradients in chunks of ``microbatch``.

    The optimizer's copies of the parameters, the batch gathered, augmented and padded into chunks [B, H, W, C]
    (3 copies), one chunk's backward activations and, for DP-SGD, its per-example gradients [chunk, params].
    """
    chunk = min(microbatch or batch, batch)
    per_example_grads = chunk * cost.params if private else 0
    return (
        OPTIMIZER_COPIES * cost.params
        + cost.fixed
        + 3 * batch * cost.image
        + chunk * cost.backward_per_image
        + per_example_grads
    )


def _matching_parts(cost: NetworkCost, config, class_strategy: str, num_classes: int, microbatch: int):
    """(synthetic-gradient bytes, real-gradient bytes) of one model's matching step.

    The gradient w.r.t. the images runs back through the loop over classes, so every class keeps its residuals
    until the backward pass, whatever the class strategy ('map' is a scan, which saves them per class): per image
    the network's forward activations and, for DC/DSA (second order: the synthetic gradient w.r.t. the images),
    its backward's cotangents too. On top, the live classes' (all under vmap, one under map) temporaries: one more
    backward over ipc images, the real gradient over batch_real images in chunks (DM: a forward-only real
    embedding) and the DSA copies of both batches. The real batches of every class [K, batch_real, H, W, C] are
    gathered at once.
    """
    classes = _model_concurrency(class_strategy, num_classes)
    chunk = min(microbatch or config.batch_real, config.batch_real)
    augmented = 2 * (config.ipc + config.batch_real) * cost.image if config.method in ("dsa", "dm") else 0
    kept = KEPT_FOR_IMAGE_GRADIENT[config.method]
    syn = int((num_classes * kept + classes) * config.ipc * cost.backward_per_image)
    if config.method == "dm":
        real = chunk * cost.forward_per_image
    else:
        real = chunk * cost.backward_per_image + cost.params
    gathered = 2 * num_classes * config.batch_real * cost.image
    return syn + classes * augmented // 2, classes * (real + augmented // 2) + gathered


def condensation_estimate(
    fns: ModelFns, config, image_shape, num_classes: int, pool_size: int, models: tuple[int, int] = (1, 1)
) -> Estimate:
    """Memory of condensation iterations (``condense.make_iteration_fn``, or ``bank.condense_models`` for c models).

    Args:
      config: a ``condense.CondenseConfig``.
      image_shape: (H, W, C); num_classes: K; pool_size: N real images on the device [N, H, W, C].
      models: (c models condensed at once, how many of them run at once: c under vmap, 1 under map); the
        default is one run.
    """
    from dcjax import condense  # dcjax.condense imports much of dcjax; only this estimator needs it.

    count, live = models
    cost = network_cost(fns, tuple(image_shape))
    class_strategy = condense.resolve_class_strategy(config.class_strategy)
    microbatch = train_lib.resolve_microbatch(config.microbatch, fns)
    syn, real = _matching_parts(cost, config, class_strategy, num_classes, microbatch)
    set_size = num_classes * config.ipc
    inner = 0 if config.method == "dm" else train_step_bytes(cost, min(config.batch_train, set_size), microbatch)
    set_name = f"synthetic set {config.ipc} x {num_classes} images"  # x3: images, momentum, gradient.
    parts = {
        "real pool": pool_size * cost.image,
        set_name: 3 * count * set_size * cost.image,
        "synthetic gradient": live * syn,
        "real gradient": live * real,
        "inner loop": live * inner,
        "network": live * (2 * cost.params + cost.fixed),
    }
    temporaries = max(live * (syn + real), live * inner)
    total = sum(parts.values()) - parts["synthetic gradient"] - parts["real gradient"] - parts["inner loop"]
    vmapped = " --class_strategy=map" if class_strategy == "vmap" and num_classes > 1 else ""
    many = " --models_per_chunk --strategy=map" if live > 1 else ""
    flags = {
        set_name: "--ipc" + many,
        "synthetic gradient": "--ipc" + vmapped + many,
        "real gradient": "--batch_real" + vmapped + many,
        "inner loop": "--batch_train" + many,
        "network": "--width" + many,
    }
    return Estimate(total + temporaries, parts, flags)


class Bank(NamedTuple):
    """Models trained (and queried) together: ``models`` of them, ``live`` of which run at once (vmap: all)."""

    models: int
    live: int
    models_flag: str  # The flag that lowers ``models``: '--num_eval', '--models_per_chunk'.
    predict_batch: int = 1000  # Images per forward pass when predicting (``engine.predict``'s default).


def training_estimate(
    fns: ModelFns, config: train_lib.TrainConfig, image_shape, pool_size: int, bank: Bank, queried: int
) -> Estimate:
    """Memory of ``engine.train_models`` on a pool, then predicting ``queried`` images with every model.

    Args:
      config: how each model trains (batch_size, microbatch, dp).
      image_shape: (H, W, C); pool_size: P training images [P, H, W, C] (the largest set a model trains on is
        at most P).
      bank: how many models and how their axis runs.
      queried: images each model predicts (queries, population, test set); logits [c, queried, K] come back.
    """
    cost = network_cost(fns, tuple(image_shape))
    live = bank.live
    batch = config.dp.capacity if config.dp is not None else min(config.batch_size, pool_size)
    microbatch = train_lib.resolve_microbatch(config.microbatch, fns)
    step = train_step_bytes(cost, batch, microbatch, private=config.dp is not None)
    forward = min(bank.predict_batch, max(queried, 1)) * cost.forward_per_image
    parts = {
        "training pool": pool_size * cost.image,
        f"{bank.models} models": 2 * bank.models * cost.params,
        "training step": live * step,
        "prediction": live * forward,
        "logits": bank.models * queried * cost.logits,
    }
    total = parts["training pool"] + parts[f"{bank.models} models"] + parts["logits"]
    many = f" {bank.models_flag} --strategy=map" if live > 1 else ""
    flags = {
        "training step": "--batch_size" + many,
        "prediction": many.strip(),
        f"{bank.models} models": bank.models_flag,
        "logits": bank.models_flag,
    }
    return Estimate(total + max(parts["training step"], parts["prediction"]), parts, flags)


def _larger(*estimates: Estimate) -> Estimate:
    """The phase that needs most: sequential phases share the memory."""
    return max(estimates, key=lambda e: e.total)


def _plus(estimate: Estimate, name: str, size: int, flag: str = "") -> Estimate:
    """``estimate`` with one more array that stays allocated throughout."""
    return Estimate(estimate.total + size, {**estimate.parts, name: size}, {**estimate.flags, name: flag})


def _model_axis(strategy: str) -> str:
    """The resolved model-axis strategy; 'loop' holds one model's temporaries at a time, as 'map' does."""
    strategy = engine.resolve_strategy(strategy)
    return "map" if strategy == "loop" else strategy


def evaluation_estimate(fns: ModelFns, config, image_shape, set_size: int, test_size: int) -> Estimate:
    """Memory of ``evaluation.evaluate_training_set``: ``config.num_models`` models on a [set_size] set, tested on
    [test_size] images (``config``: an ``evaluation.EvalConfig``)."""
    live = _model_concurrency(_model_axis(config.strategy), config.num_models)
    bank = Bank(config.num_models, live, "--num_eval", config.test_batch)
    estimate = training_estimate(fns, config.train, image_shape, set_size, bank, test_size)
    return _plus(estimate, "test set", test_size * network_cost(fns, tuple(image_shape)).image)


def check_condensation(config, fns: ModelFns, train, test) -> None:
    """Refuses (ValueError) a ``dcjax.condense.run.RunConfig`` whose iteration or evaluation cannot fit; logs both.

    train, test: the ``ArrayDataset``s of the run (images [N, H, W, C]); the real pool stays on the device while
    the synthetic set [K*ipc, H, W, C] is evaluated.
    """
    image_shape, num_classes = tuple(train.images.shape[1:]), train.num_classes
    pool = len(train.labels) * network_cost(fns, image_shape).image
    check_fits(condensation_estimate(fns, config.condense, image_shape, num_classes, len(train.labels)), "condensation")
    evaluation = evaluation_estimate(fns, config.eval, image_shape, num_classes * config.condense.ipc, len(test.labels))
    check_fits(_plus(evaluation, "real pool", pool), "evaluating the synthetic set")


def _live_models(strategy: str, count: int) -> int:
    """Models of an attack chunk whose training temporaries are live at once in the memory checked.

    A chunk that splits evenly over several devices is sharded (``attack_run._mesh_for``): on CPU the devices
    share the host's memory, so all shards count; on accelerators each device holds its share only.
    """
    devices = jax.device_count()
    if devices > 1 and count % devices == 0 and engine.resolve_strategy(strategy) != "loop":
        per_device = _model_concurrency(strategy, count // devices)
        return per_device * devices if jax.default_backend() == "cpu" else per_device
    return _model_concurrency(strategy, count)


def bank_chunk_estimate(
    config, fns: ModelFns, image_shape, num_classes: int, pool_size: int, sizes: tuple[int, int]
) -> Estimate:
    """Memory of one chunk of an attack run (``attack_run._train_chunk``): its recipe, training and queries.

    Args:
      config: an ``attack_run.AttackRunConfig``.
      image_shape: (H, W, C); num_classes: K; pool_size: n images of the chunk's pool.
      sizes: (c models in the chunk, T test images).
    """
    count, test_size = sizes
    strategy = _model_axis(config.strategy)
    recipe = config.recipe
    queried = config.num_queries * (pool_size + config.num_population) + test_size
    live = _live_models(strategy, count)
    training_pool = count * num_classes * recipe.condense.ipc if recipe.kind == "condense" else pool_size
    training = training_estimate(
        fns, config.train, image_shape, training_pool, Bank(count, live, "--models_per_chunk"), queried
    )
    if recipe.kind != "condense":
        return training
    models = (count, _model_concurrency(strategy, count))
    return _larger(training, condensation_estimate(fns, recipe.condense, image_shape, num_classes, pool_size, models))


def check_attack_run(config, fns: ModelFns, train, test, what: str = "the attack run") -> None:
    """Refuses (ValueError) an ``attack_run.AttackRunConfig`` whose largest chunk of either pool cannot fit.

    train, test: the dataset's ``ArrayDataset``s (both pools are cut from train; every model is tested on test).
    """
    from dcjax.privacy import pools  # Lazily: memory stays importable without the privacy package.

    image_shape, m = tuple(train.images.shape[1:]), config.num_models
    chunks = pools.model_chunks(config)  # The run's own chunking, so the estimate cannot drift from it.
    for pool, size, name in (
        (config.target_pool, max(len(c) for c in chunks if c[0] < m), "target"),
        (config.attacker_pool, max((len(c) for c in chunks if c[0] >= m), default=0), "attacker"),
    ):
        if not size:  # No shadows (Shokri from the bank): nothing trains on the attacker pool.
            continue
        estimate = bank_chunk_estimate(config, fns, image_shape, train.num_classes, pool, (size, len(test.labels)))
        check_fits(estimate, f"{what} (a chunk of {size} models on the {name} pool)")
