"""Many models at once: one engine for evaluating synthetic sets and for shadow banks.

Every function here maps a single-model function over a leading *model axis*. How that
axis is executed is a per-backend choice (docs/protocol.md section 8):

* on GPU/TPU, ``vmap``: M small trainings become one wide one, which is what keeps an
  accelerator busy;
* on XLA's CPU backend a vmap over parameter sets turns ``lax.conv`` into grouped
  convolutions, 3-4x slower than a loop, so the default there is a sequential
  ``lax.map`` (a scan: one compiled body, no Python in the loop).

The strategy names the choice (``dcjax.strategy``, the one chooser); ``"auto"`` picks per
backend; ``"loop"``, a Python loop of separately jitted single-model runs, is the plain
baseline and runs on one device only. All choices compute the same thing (tests check it)
and ``benchmarks/engine.py`` measures them side by side.

Across devices, ``train_models(..., mesh=model_mesh())`` shards the model axis over a
``models`` mesh axis with ``jax.shard_map`` (data replicated, no collectives: models are
independent); each device then runs its share with the strategy above.

``train_models`` reports progress (``dcjax.progress``): a line when its first call compiles,
then, for a long training, a percentage and ETA at least twice a minute.
"""

from __future__ import annotations

import functools
from typing import NamedTuple
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from dcjax import chunks
from dcjax import models
from dcjax import progress
from dcjax import strategy as strategy_lib
from dcjax import train as train_lib
from dcjax.models import ModelFns

STRATEGIES = strategy_lib.STRATEGIES
_IN_GRAPH = ("vmap", "map")  # What can run inside one jitted program (or inside shard_map).


def resolve_strategy(strategy: str, backend: str | None = None, supported: tuple[str, ...] = STRATEGIES[1:]) -> str:
    """The model axis's ``strategy_lib.resolve``: 'auto' -> 'vmap' on accelerators, 'map' (sequential) on CPU."""
    return strategy_lib.resolve(strategy, "model-axis strategy", backend, supported)


def map_models(fn: Callable, strategy: str, xs):
    """Applies ``fn`` to each slice of ``xs`` along the leading (model) axis.

    ``fn`` must be traceable; ``xs`` a pytree of arrays with a common leading axis. Used
    inside jit, so only 'vmap' and 'map' (or 'auto') run here; 'loop' is an error (callers that
    offer it run a Python loop over separately jitted calls themselves).
    """
    strategy = resolve_strategy(strategy, supported=_IN_GRAPH)
    return jax.vmap(fn)(xs) if strategy == "vmap" else jax.lax.map(fn, xs)


class _Plan(NamedTuple):
    """The static half of a bank training: what to train and how to run the model axis."""

    fns: ModelFns
    config: train_lib.TrainConfig
    schedule: train_lib.Schedule
    strategy: str
    ticks: bool = False  # Progress ticks traced in (part of the jit cache key: on/off compile apart).
    # None: models train from initialisation (per-model inputs: keys). An int: a DP-SGD run continues after this
    # many expected epochs (per-model inputs: (keys, train_lib.DPState or None), ``train_lib.train_dp_segment``).
    start: int | None = None


def _train_model(plan: _Plan, per_model, data):
    """One model's training (``plan.start``): from initialisation, or a DP-SGD run continued."""
    if plan.start is None:
        return train_lib.train_from_init(plan.fns, plan.config, plan.schedule, per_model, data, plan.ticks)
    key, state = per_model
    return train_lib.train_dp_segment(plan.fns, plan.config, key, data, (plan.start, state), plan.ticks)


def _train_local(plan: _Plan, keys, images, labels, masks):
    """Trains the models of ``keys`` (per-model inputs, ``_Plan.start``) on this device with plan.strategy."""

    def one(args):
        key, mask = args
        return _train_model(plan, key, (images, labels, mask))

    return map_models(one, plan.strategy, (keys, masks))


_train_many = jax.jit(_train_local, static_argnums=0)


@functools.partial(jax.jit, static_argnums=0)
def _train_one(plan: _Plan, key, images, labels, mask):
    return _train_model(plan, key, (images, labels, mask))


def model_mesh(devices=None) -> Mesh:
    """A 1-D mesh named 'models' over ``devices`` (default: all devices of all hosts)."""
    devices = list(devices or jax.devices())
    return jax.make_mesh((len(devices),), ("models",), axis_types=(jax.sharding.AxisType.Explicit,), devices=devices)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _train_sharded(plan: _Plan, mesh: Mesh, keys, images, labels, masks):
    """Each device of the 'models' axis trains its share of the models (no collectives)."""
    # check_vma=False: the per-model scans start from replicated constants (zeros, the
    # pool) and become device-varying; every model is independent, so nothing to check.
    sharded = jax.shard_map(
        functools.partial(_train_local, plan),
        mesh=mesh,
        in_specs=(P("models"), P(), P(), P("models")),
        out_specs=P("models"),
        check_vma=False,
    )
    return sharded(keys, images, labels, masks)


def train_models(
    fns: ModelFns,
    config: train_lib.TrainConfig,
    keys: jax.Array,
    data,
    strategy: str = "auto",
    mesh: Mesh | None = None,
):
    """Trains M freshly initialised models, model m on the pool examples where masks[m].

    Args:
      fns: the network.
      config: optimisation settings shared by all models.
      keys: [M] typed PRNG keys, one per model.
      data: (images [N,H,W,C], labels [N] int32, masks [M, N] bool).
      strategy: 'auto' | 'vmap' | 'map' | 'loop' (see module docstring).
      mesh: shard the model axis over this mesh's 'models' axis (M must be a multiple of
        its size); None runs on the default device.

    Returns:
      (variables stacked over a leading [M] axis, per-epoch losses [M, epochs]), ready
      (blocked on, so that the progress of the training is reported while it runs).
    """
    return _train_bank(_Plan(fns, config, train_lib.Schedule(0, 0), strategy), keys, data, mesh)


class Resume(NamedTuple):
    """Where the DP-SGD runs of a bank continue (``resume_models``).

    keys: [M] typed model keys (``train_models``'); epochs: expected epochs already taken (static);
    states: ``train_lib.DPState`` stacked over [M] after them, or None with epochs 0 (from initialisation).
    """

    keys: jax.Array
    epochs: int = 0
    states: train_lib.DPState | None = None


def resume_models(
    fns: ModelFns, config: train_lib.TrainConfig, start: Resume, data, strategy: str = "auto", mesh: Mesh | None = None
) -> train_lib.DPState:
    """Continues M DP-SGD runs from ``start`` to ``config.stop_epochs`` (``train_lib.train_dp_segment``).

    Args as ``train_models``'s, with ``start`` for the keys. Returns the ``train_lib.DPState`` stacked over [M]
    (a snapshot to continue from; ``train_lib.dp_losses`` its losses), ready.
    """
    if config.dp is None or config.stop_epochs is None or not 0 <= start.epochs < config.stop_epochs:
        raise ValueError(f"resume_models continues DP-SGD runs to stop_epochs, from before it; got {start.epochs}")
    plan = _Plan(fns, config, train_lib.Schedule(0, 0), strategy, start=start.epochs)
    return _train_bank(plan, (start.keys, start.states), data, mesh)


def _train_bank(plan: _Plan, per_model, data, mesh: Mesh | None):
    """``train_models``'s body for ``plan`` (its schedule and ticks filled in here) and per-model inputs."""
    images, labels, masks = data
    masks = jnp.asarray(masks, bool)
    if masks.ndim != 2 or masks.shape[1] != images.shape[0]:
        raise ValueError(f"masks must be [M, {images.shape[0]}], got {masks.shape}")
    max_count = int(jnp.max(jnp.sum(masks, axis=1)))
    schedule = train_lib.make_schedule(plan.config, max_count)
    # A Python loop cannot run inside shard_map: sharded banks run 'vmap' or 'map'.
    strategy = resolve_strategy(plan.strategy, supported=_IN_GRAPH if mesh is not None else STRATEGIES[1:])
    if mesh is not None and masks.shape[0] % mesh.size:
        raise ValueError(f"{masks.shape[0]} models do not split evenly over {mesh.size} devices")
    plan = plan._replace(schedule=schedule, strategy=strategy, ticks=progress.enabled())
    with _training_task(plan, masks.shape[0], mesh, (jnp.shape(images), masks.shape)):
        return jax.block_until_ready(_dispatch(plan, per_model, (images, labels, masks), mesh))


def _dispatch(plan: _Plan, keys, data, mesh: Mesh | None):
    """Runs the training of ``plan`` on data (images, labels, masks [M, N]): sharded, looped or mapped."""
    images, labels, masks = data
    if mesh is not None:
        # Explicit placement: each device gets its models' keys/masks, all get the pool.
        per_model, replicated = NamedSharding(mesh, P("models")), NamedSharding(mesh, P())
        keys, masks = jax.device_put((keys, masks), per_model)
        images, labels = jax.device_put((images, labels), replicated)
        return _train_sharded(plan, mesh, keys, images, labels, masks)
    if plan.strategy == "loop":
        model = lambda m: jax.tree.map(lambda x: x[m], keys)  # noqa: E731  (keys may be a pytree: _Plan.start)
        outs = [_train_one(plan, model(m), images, labels, masks[m]) for m in range(masks.shape[0])]
        return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)
    return _train_many(plan, keys, images, labels, masks)


def _training_task(plan: _Plan, num_models: int, mesh: Mesh | None, shapes):
    """The ``progress.task`` of a bank training: units are model-steps (one model, one SGD step)."""
    config, schedule = plan.config, plan.schedule
    # Non-DP: steps_per_epoch steps per epoch; DP: the schedule holds the total Poisson steps.
    per_model = schedule.steps_per_epoch * (1 if config.dp is not None else config.epochs)
    dp = " DP-SGD" if config.dp is not None else ""
    if config.stop_epochs is not None:  # The steps of a checkpoint's segment of a longer run.
        start = plan.start or 0
        per_model = train_lib.dp_steps(config, config.stop_epochs) - train_lib.dp_steps(config, start)
        dp = f" DP-SGD (epochs {start}-{config.stop_epochs} of)"
    # A vmapped tick fires once for the device's models; a mapped or looped one once per model.
    weight = num_models // (mesh.size if mesh is not None else 1) if plan.strategy == "vmap" else 1
    label = (
        f"training {num_models} models x {config.epochs}{dp} epochs, {schedule.batch_size} per batch ({plan.strategy})"
    )
    compiling = progress.first_call((plan, mesh, shapes))
    return progress.task(label, num_models * per_model, "model-steps", weight, compiling)


def predict(fns: ModelFns, variables, images: jax.Array, batch_size: int = 1000) -> jax.Array:
    """Eval-mode logits of one model, in batches. images: [N,H,W,C] -> logits [N, K].

    No gradient flows through a prediction, so it runs in the network's forward-only lowering
    (``models.forward_only``) and, on CPU, in chunks of at most ``models.forward_chunk`` images.
    """
    chunk = models.forward_chunk(fns.config)
    batch = min(batch_size, images.shape[0], chunk or batch_size)
    forward = models.forward_only(fns)
    batches, _ = chunks.pad_to_chunks(images, batch)
    logits = jax.lax.map(lambda x: forward.apply(variables, x), batches)
    return logits.reshape((-1, logits.shape[-1]))[: images.shape[0]]


def _predict_local(fns: ModelFns, strategy: str, batch_size: int, variables, images):
    return map_models(lambda v: predict(fns, v, images, batch_size), strategy, variables)


predict_many = jax.jit(_predict_local, static_argnums=(0, 1, 2))
predict_many.__doc__ = "Logits of M stacked models on the same images: [M, N, K]."
_predict_one = jax.jit(predict, static_argnums=(0, 3))


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _predict_sharded(fns: ModelFns, strategy: str, batch_size: int, mesh: Mesh, variables, images):
    # A lax.map cannot scan over an axis sharded across devices: each device maps its own models.
    sharded = jax.shard_map(
        functools.partial(_predict_local, fns, strategy, batch_size),
        mesh=mesh,
        in_specs=(P("models"), P()),
        out_specs=P("models"),
        check_vma=False,
    )
    return sharded(variables, images)


def predict_models(
    fns: ModelFns, variables, images, strategy: str = "auto", batch_size: int = 1000, mesh: Mesh | None = None
) -> jax.Array:
    """Eval-mode logits [M, N, K] of M stacked models on images [N, H, W, C].

    ``mesh``: the mesh the variables were trained on (``train_models(..., mesh=)``); each
    device then predicts with its own models. None: all on the default device.
    """
    strategy = resolve_strategy(strategy, supported=_IN_GRAPH if mesh is not None else STRATEGIES[1:])
    if strategy == "loop":  # The plain baseline: one jitted prediction per model.
        num_models = jax.tree.leaves(variables)[0].shape[0]
        per_model = [jax.tree.map(lambda x, m=m: x[m], variables) for m in range(num_models)]
        return jnp.stack([_predict_one(fns, v, images, batch_size) for v in per_model])
    if mesh is None:
        return predict_many(fns, strategy, batch_size, variables, images)
    images = jax.device_put(images, NamedSharding(mesh, P()))
    return _predict_sharded(fns, strategy, batch_size, mesh, variables, images)


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Top-1 accuracy over the last-but-one axis. logits: [..., N, K], labels: [N]."""
    return jnp.mean(jnp.argmax(logits, -1) == labels, axis=-1)


def evaluate_many(
    fns: ModelFns, variables, data, strategy: str = "auto", batch_size: int = 1000, mesh: Mesh | None = None
) -> jax.Array:
    """Test accuracy of each of M stacked models: [M]; data: (images [N, H, W, C], labels [N] int32) (``strategy``,
    ``batch_size`` and ``mesh`` as for ``predict_models``)."""
    images, labels = data
    logits = predict_models(fns, variables, images, strategy, batch_size, mesh)
    if mesh is not None:
        labels = jax.device_put(labels, NamedSharding(mesh, P()))
    return accuracy(logits, labels)
