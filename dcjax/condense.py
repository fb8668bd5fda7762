"""Dataset condensation: gradient matching (DC, Zhao, Mopuri & Bilen, ICLR 2021), with Differentiable Siamese
Augmentation (DSA, Zhao & Bilen, ICML 2021), and the dispatch to distribution matching (DM, ``dcjax.dm``).

``CondenseConfig.method`` picks the algorithm; every method is one jitted iteration
``(SynState, (pool, ClassIndex), key) -> (SynState, metrics)`` (``make_iteration_fn``), so runs,
checkpoints, outputs and the privacy bank treat them alike.

One DC iteration (docs/protocol.md section 3) is ONE jitted function, ``dc_iteration``:

  fresh network from the iteration key
  scan over outer_loop:
    per class c: distance(grad CE(net(syn_c)), stop_gradient(grad CE(net(real_c))))
    summed over classes -> ONE SGD-momentum step on the synthetic images
    unless this is the last outer step: inner_loop epochs of plain SGD on the synthetic set

DSA (``method='dsa'``, docs/protocol.md section 5) changes two things: before each class's gradients, the real and the
synthetic batch go through the SAME random DSA transform (one key per class and matching step, parameters shared by
the whole batch: the Siamese rule), differentiably w.r.t. the synthetic images; and the inner loop trains on
DSA-augmented synthetic images (per-image draws), as the reference does.

The per-class matching is vectorised over classes with a per-backend strategy
(``class_strategy``): ``vmap`` on GPU/TPU; on CPU a sequential ``lax.map`` over classes
inside the same jit, because XLA's CPU backend runs a vmapped per-class gradient (a grouped
convolution) several times slower (docs/protocol.md section 8). All strategies compute the same
loss and gradients (tests check it).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from dcjax import augment as augment_lib
from dcjax import data as data_lib
from dcjax import dm
from dcjax import dsa
from dcjax import matching
from dcjax import progress
from dcjax import train as train_lib
from dcjax.models import ModelFns

# (outer_loop, inner_loop) by images per class, from the reference implementation.
LOOPS_BY_IPC = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}
INITS = ("noise", "real")
CLASS_STRATEGIES = ("auto", "vmap", "map", "loop")
METHODS = ("dc", "dsa", "dm")
# Paper defaults that differ by method (docs/protocol.md sections 3 and 5); the launcher fills unset flags from these.
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "dc": {"iterations": 1000, "lr_img": 0.1, "init": "noise"},
    "dsa": {"iterations": 1000, "lr_img": 0.1, "init": "real"},
    "dm": {"iterations": 20000, "lr_img": 1.0, "init": "real"},
}


def default_loops(ipc: int) -> tuple[int, int]:
    """The reference (outer_loop, inner_loop); off-table ipc uses (20, 25) below 50 and (50, 10) above.

    The reference only tabulates the values in LOOPS_BY_IPC; for other ipc the authors used
    the better of (50, 10) and (20, 25). We pick the nearest tabulated row at or below ipc.
    """
    if ipc < 1:
        raise ValueError(f"ipc must be >= 1, got {ipc}")
    return LOOPS_BY_IPC[max(k for k in LOOPS_BY_IPC if k <= ipc)]


@dataclasses.dataclass(frozen=True)
class CondenseConfig:
    """Settings of a condensation run; defaults are DC's paper settings (docs/protocol.md section 3).

    method: 'dc', 'dsa' (DC with Siamese augmentation) or 'dm' (distribution matching; uses ipc, iterations,
    batch_real, lr_img, momentum_img, init, dsa_strategy, class_strategy and microbatch; the loops, batch_train,
    lr_net and distance are gradient-matching settings it ignores). dsa_strategy: the DSA ops for 'dsa' and 'dm'
    (``dsa.STRATEGY_DIGITS`` has no flip, for digits).
    """

    ipc: int = 10
    iterations: int = 1000
    outer_loop: int | None = None  # None: from LOOPS_BY_IPC.
    inner_loop: int | None = None
    batch_real: int = 256  # Real images PER CLASS per matching step.
    batch_train: int = 256  # Inner-loop batch on the synthetic set.
    lr_img: float = 0.1
    momentum_img: float = 0.5
    lr_net: float = 0.01
    distance: str = "ours"
    init: str = "noise"
    class_strategy: str = "auto"
    microbatch: int | None = None  # Real-gradient / inner-loop chunking; None: per backend.
    method: str = "dc"
    dsa_strategy: str = dsa.STRATEGY_DIGITS

    def __post_init__(self):
        """Every field's range; each message starts with the field's name (launchers name the flag)."""
        for name, options in (
            ("method", METHODS),
            ("distance", matching.DISTANCES),
            ("init", INITS),
            ("class_strategy", CLASS_STRATEGIES),
        ):
            if getattr(self, name) not in options:
                raise ValueError(f"{name} must be one of {', '.join(options)}, got {getattr(self, name)!r}")
        dsa.parse_strategy(self.dsa_strategy)  # Fails early on an unknown op.
        if self.ipc < 1:
            raise ValueError(f"ipc must be >= 1, got {self.ipc}")
        if self.iterations < 0:
            raise ValueError(f"iterations must be >= 0, got {self.iterations}")
        for name, low in (("outer_loop", 1), ("inner_loop", 1), ("microbatch", 0)):  # microbatch 0: off.
            value = getattr(self, name)
            if value is not None and value < low:
                raise ValueError(f"{name} must be >= {low} or None, got {value}")
        for name in ("batch_real", "batch_train"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr_img", "lr_net"):  # Not (0 < lr < inf) also rejects NaN.
            if not 0 < getattr(self, name) < float("inf"):
                raise ValueError(f"{name} must be > 0 and finite, got {getattr(self, name)}")
        if not 0 <= self.momentum_img < 1:
            raise ValueError(f"momentum_img must be in [0, 1), got {self.momentum_img}")

    @property
    def loops(self) -> tuple[int, int]:
        """(outer_loop, inner_loop) after applying overrides to the table."""
        outer, inner = default_loops(self.ipc)
        return (self.outer_loop or outer, self.inner_loop or inner)


class SynState(NamedTuple):
    """The synthetic set being learned. images: [K*ipc, H, W, C], ordered by class."""

    images: jax.Array
    opt_state: Any  # SGD-momentum state; persists across iterations as in the reference.


def synthetic_labels(num_classes: int, ipc: int) -> jax.Array:
    """[K*ipc] int32: ipc copies of each class, class-major."""
    return jnp.repeat(jnp.arange(num_classes, dtype=jnp.int32), ipc)


def image_optimizer(config: CondenseConfig) -> optax.GradientTransformation:
    return optax.sgd(config.lr_img, momentum=config.momentum_img)


def check_batch_real(config: CondenseConfig, index: data_lib.ClassIndex):
    """batch_real (and ipc for real init) must fit in the smallest class."""
    smallest = int(jnp.min(index.counts))
    if config.batch_real > smallest:
        raise ValueError(f"batch_real={config.batch_real} exceeds the smallest class ({smallest} examples)")
    if config.init == "real" and config.ipc > smallest:
        raise ValueError(f"ipc={config.ipc} with init=real exceeds the smallest class ({smallest})")


def init_synthetic(config: CondenseConfig, key: jax.Array, images: jax.Array, index: data_lib.ClassIndex):
    """Initial synthetic set and the real examples it was copied from.

    Args:
      config: ipc and init ('noise': N(0, 1) in normalised space; 'real': random real
        images of each class, without replacement).
      key: initialisation key.
      images: [N, H, W, C] the real pool the index refers to.
      index: per-class index of that pool.

    Returns:
      (SynState with images [K*ipc, H, W, C], init indices [K*ipc] int32 into the pool,
      or -1 everywhere for noise init).
    """
    num_classes = index.counts.shape[0]
    shape = (num_classes * config.ipc,) + images.shape[1:]
    if config.init == "real":
        init_indices = data_lib.sample_per_class(key, index, config.ipc).reshape(-1)
        syn = images[init_indices]
    else:
        init_indices = jnp.full((shape[0],), -1, jnp.int32)
        syn = jax.random.normal(key, shape, images.dtype)
    return SynState(syn, image_optimizer(config).init(syn)), init_indices


def _class_gradient(fns: ModelFns, variables, images, label, microbatch: int = 0):
    """Gradient of the mean CE over images (all of class ``label``) w.r.t. params.

    images: [n, H, W, C]. With microbatch > 0 the gradient is accumulated over chunks
    (faster on CPU, see train.CPU_MICROBATCH); only for constants (the real batch), as
    the synthetic gradient must stay differentiable w.r.t. its images cheaply.
    """
    n = images.shape[0]
    labels = jnp.full((n,), label, jnp.int32)
    loss_sum = train_lib.weighted_ce_sum(fns, variables)
    weights = jnp.full((n,), 1.0 / n, jnp.float32)
    if microbatch:
        return train_lib.chunked_value_and_grad(loss_sum, variables["params"], (images, labels, weights), microbatch)[1]
    return jax.grad(loss_sum)(variables["params"], images, labels, weights)


def _class_distance(fns, config, variables, syn_c, real_c, label, key):
    """distance(g_syn, g_real) for one class; the real gradient is a constant.

    With DSA both batches first go through the transform drawn from ``key`` (this class's key for this step).
    """
    if config.method == "dsa":
        real_c = dsa.dsa_augment(key, real_c, config.dsa_strategy, dsa.SIAMESE)
        syn_c = dsa.dsa_augment(key, syn_c, config.dsa_strategy, dsa.SIAMESE)
    microbatch = train_lib.resolve_microbatch(config.microbatch, fns)
    g_real = jax.lax.stop_gradient(_class_gradient(fns, variables, real_c, label, microbatch))
    g_syn = _class_gradient(fns, variables, syn_c, label)
    return matching.gradient_distance(g_syn, g_real, config.distance)


def matching_loss(
    fns: ModelFns, config: CondenseConfig, strategy: str, variables, syn: jax.Array, real: jax.Array, key: jax.Array
) -> jax.Array:
    """Sum over classes of the gradient distance.

    Args:
      syn: [K*ipc, H, W, C] synthetic images, class-major.
      real: [K, batch_real, H, W, C] real images per class.
      strategy: 'vmap' (classes vectorised), 'map' (a sequential lax.map over classes:
      one traced body) or 'loop' (classes unrolled in one trace).
      key: this matching step's DSA key (class c uses fold_in(key, c)); unused by plain DC.
    """
    num_classes = real.shape[0]
    syn = syn.reshape((num_classes, config.ipc) + syn.shape[1:])
    labels = jnp.arange(num_classes, dtype=jnp.int32)
    keys = jax.vmap(functools.partial(jax.random.fold_in, key))(labels)
    per_class = functools.partial(_class_distance, fns, config, variables)
    return matching.sum_over_classes(per_class, strategy, (syn, real, labels, keys))


def resolve_class_strategy(strategy: str, backend: str | None = None) -> str:
    """'auto' -> 'map' on CPU, 'vmap' elsewhere.

    On XLA:CPU a vmap over classes turns per-class weight gradients into grouped
    convolutions / batched GEMMs that run slower than one class at a time (docs/protocol.md
    section 8); 'map' and 'loop' both run classes sequentially at the same speed
    (benchmarks/condense_step.py), but 'map' traces one class body instead of K, so it
    compiles ~4x faster (ConvNet-128, ipc 10: ~48 s vs ~180 s).
    """
    if strategy != "auto":
        return strategy
    return "map" if (backend or jax.default_backend()) == "cpu" else "vmap"


def _train_network(fns, config, variables, syn, labels, key):
    """inner_loop epochs of plain SGD (lr_net, no momentum or decay; DSA augmentation for 'dsa' only).

    syn: [K*ipc, H, W, C], already detached; labels: [K*ipc]. Returns new variables.
    The engine's own epoch loop (train.run_epochs), so the inner loop gets the same
    chunked CPU gradients and padding rules as every other training in dcjax.
    """
    schedule = train_lib.make_schedule(train_lib.TrainConfig(batch_size=config.batch_train), syn.shape[0])
    augment = dsa.training_augment(config.dsa_strategy) if config.method == "dsa" else augment_lib.identity_augment
    trainer = train_lib.Trainer(
        fns, optax.sgd(config.lr_net), augment, microbatch=train_lib.resolve_microbatch(config.microbatch, fns)
    )
    mask = jnp.ones((syn.shape[0],), bool)
    variables, _ = train_lib.run_epochs(trainer, schedule, variables, (syn, labels, mask), key, config.loops[1])
    return variables


def dc_iteration(fns: ModelFns, config: CondenseConfig, strategy: str, state: SynState, real_data, key: jax.Array):
    """One DC iteration: (state, (pool images, ClassIndex), key) -> (state, metrics).

    Pure; meant to be jitted with fns/config/strategy static and ``state`` donated
    (``make_iteration_fn``). metrics: {"loss": mean matching loss over outer steps [],
    "loss_per_outer": [outer_loop]}.
    """
    pool, index = real_data
    outer_loop, _ = config.loops
    num_classes = index.counts.shape[0]
    labels = synthetic_labels(num_classes, config.ipc)
    optimizer = image_optimizer(config)
    net_key, loop_key = jax.random.split(key)
    variables = fns.init(net_key)
    loss_fn = functools.partial(matching_loss, fns, config, strategy)

    def outer_step(carry, step):
        progress.tick(step, outer_loop, 1)  # One matching step (with its inner loop) per tick.
        syn, opt_state, variables = carry
        step_key = jax.random.fold_in(loop_key, step)
        # dsa_key is folded in, not split off, so plain DC keeps the real/train keys it always had.
        real_key, train_key = jax.random.split(step_key)
        dsa_key = jax.random.fold_in(step_key, 2)
        real = pool[data_lib.sample_per_class(real_key, index, config.batch_real)]
        loss, grads = jax.value_and_grad(loss_fn, argnums=1)(variables, syn, real, dsa_key)
        updates, opt_state = optimizer.update(grads, opt_state, syn)
        syn = optax.apply_updates(syn, updates)
        # No network update after the last matching step (for ipc=1 the net is never trained).
        variables = jax.lax.cond(
            step < outer_loop - 1,
            lambda v: _train_network(fns, config, v, syn, labels, train_key),
            lambda v: v,
            variables,
        )
        return (syn, opt_state, variables), loss

    carry = (state.images, state.opt_state, variables)
    (syn, opt_state, _), losses = jax.lax.scan(outer_step, carry, jnp.arange(outer_loop))
    return SynState(syn, opt_state), {"loss": jnp.mean(losses), "loss_per_outer": losses}


def check_network(fns: ModelFns) -> None:
    """Refuses networks DC cannot match faithfully here (ValueError)."""
    if fns.has_batch_stats:
        # The reference warms BatchNorm statistics on real data then freezes them for
        # matching; we have not implemented that, so refuse rather than silently differ.
        raise ValueError(
            "condensation with BatchNorm networks is not supported; use a "
            "network without batchnorm (e.g. the default instancenorm ConvNet)"
        )


def condense_iteration(
    fns: ModelFns, config: CondenseConfig, strategy: str, state: SynState, real_data, key: jax.Array
):
    """One iteration of ``config.method``: (state, (pool, ClassIndex), key) -> (state, metrics).

    dc / dsa: ``dc_iteration``; dm: ``dm.dm_iteration``. Pure; strategy is a resolved class strategy.
    """
    if config.method == "dm":
        return dm.dm_iteration(fns, config, strategy, state, real_data, key)
    return dc_iteration(fns, config, strategy, state, real_data, key)


def iteration_units(config: CondenseConfig) -> int:
    """Progress ticks of one iteration: its outer (matching) steps for dc / dsa, 1 for dm."""
    return 1 if config.method == "dm" else config.loops[0]


def describe(fns: ModelFns, config: CondenseConfig) -> str:
    """'DC iteration (width 128, ipc 10, outer 10 x inner 50)': what a progress line is about."""
    width = f"width {fns.config.width}, " if fns.config is not None else ""
    loops = "" if config.method == "dm" else ", outer {} x inner {}".format(*config.loops)
    return f"{config.method.upper()} iteration ({width}ipc {config.ipc}{loops})"


def make_iteration_fn(fns: ModelFns, config: CondenseConfig, strategy: str = "auto"):
    """jit(condense_iteration) with static settings closed over and the state donated.

    Returns f(state, (pool, index), key) -> (state, metrics), ready when it returns: each call
    is a ``progress.task`` (the first logs that it compiles; a long iteration logs its outer
    steps and an ETA). ``f.lower`` is the jitted function's. The pool is an argument, not a
    closed-over constant, so XLA does not embed 60k images in the executable.
    """
    check_network(fns)
    strategy = resolve_class_strategy(strategy if strategy != "auto" else config.class_strategy)
    step = functools.partial(condense_iteration, fns, config, strategy)
    unit = "iterations" if config.method == "dm" else "outer steps"
    return progress.Reporting(jax.jit(step, donate_argnums=(0,)), describe(fns, config), iteration_units(config), unit)
