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
This module holds the primitives and the estimates of what it owns (training, evaluation); each run kind's estimate
lives with the package that owns its shapes: condensation in ``dcjax.condense.memory``, an attack run's chunks in
``dcjax.privacy.memory``.
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


def model_concurrency(strategy: str, count: int) -> int:
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


def larger(*estimates: Estimate) -> Estimate:
    """The phase that needs most: sequential phases share the memory."""
    return max(estimates, key=lambda e: e.total)


def plus(estimate: Estimate, name: str, size: int, flag: str = "") -> Estimate:
    """``estimate`` with one more array that stays allocated throughout."""
    return Estimate(estimate.total + size, {**estimate.parts, name: size}, {**estimate.flags, name: flag})


def model_axis(strategy: str) -> str:
    """The resolved model-axis strategy; 'loop' holds one model's temporaries at a time, as 'map' does."""
    strategy = engine.resolve_strategy(strategy)
    return "map" if strategy == "loop" else strategy


def evaluation_estimate(fns: ModelFns, config, image_shape, set_size: int, test_size: int) -> Estimate:
    """Memory of ``evaluation.evaluate_training_set``: ``config.num_models`` models on a [set_size] set, tested on
    [test_size] images (``config``: an ``evaluation.EvalConfig``)."""
    live = model_concurrency(model_axis(config.strategy), config.num_models)
    bank = Bank(config.num_models, live, "--num_eval", config.test_batch)
    estimate = training_estimate(fns, config.train, image_shape, set_size, bank, test_size)
    return plus(estimate, "test set", test_size * network_cost(fns, tuple(image_shape)).image)
