"""Settings and state of a condensation, shared by every method: ``CondenseConfig``, ``SynState``, the initial set.

``CondenseConfig.method`` picks the method: its record (``Method``) in the registry ``METHODS``, which
``dcjax.condense.methods`` fills (the package imports it first, so the registry is full before any config is made).
``CondenseConfig``'s defaults are DC's paper settings; a record's ``MethodDefaults`` hold what differs by method
(``CondenseConfig.paper`` applies them). Every method updates a ``SynState`` with the image optimizer defined here
(SGD with momentum on the pixels, as every reference does).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dcjax import augment as augment_lib
from dcjax import data as data_lib
from dcjax import dsa
from dcjax import errors
from dcjax import strategy as strategy_lib
from dcjax.condense import distances
from dcjax import models
from dcjax.models import ModelFns

# (outer_loop, inner_loop) by images per class, from the reference implementation.
LOOPS_BY_IPC = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}
INITS = ("noise", "real", "means")  # means: the privacy-first init (``mean_groups``).
CLASS_STRATEGIES = strategy_lib.STRATEGIES


@dataclasses.dataclass(frozen=True)
class MethodDefaults:
    """A method's paper settings where they differ from ``CondenseConfig``'s (DC's); docs/protocol.md sections 3, 5.

    The launchers fill unset flags from these, and ``CondenseConfig.paper`` builds a method's paper config.
    """

    iterations: int
    lr_img: float
    init: str


@dataclasses.dataclass(frozen=True)
class Method:
    """Everything that differs by condensation method, in one record; ``METHODS[name]`` is the method ``name``.

    name: ``CondenseConfig.method``'s value.
    iteration: the method's pure iteration, (ModelFns, CondenseConfig, resolved class strategy, SynState,
      (pool [N, H, W, C], ClassIndex), key) -> (SynState, metrics with "loss" []).
    defaults: its paper settings (``MethodDefaults``).
    gradient_matching: True: an iteration is ``config.loops[0]`` outer (matching) steps of second-order gradients
      (a backward pass over each real batch too), with ``config.loops[1]`` inner-loop epochs training the network
      between them (progress counts outer steps); False: one matching step of a fresh, untrained network's
      embeddings (the real batch forward only) per iteration, no network training (progress counts iterations).
    dsa: the real and the synthetic batches go through DSA (Siamese) in every matching step, and the set is
      evaluated with DSA augmentation, as the reference does (``evaluation_augment``).
    kept_for_image_gradient: of a first-order backward's activations per synthetic image, what each class keeps for
      the gradient w.r.t. the images (``condense.memory``; calibrated against XLA, tests/test_memory.py).
    own_schedule: the privacy study runs the method's rows at its paper lr_img for ``StudyConfig.dm_iterations``
      iterations, not at the study's condensation lr_img and iterations (``study``'s DM rows).
    """

    name: str
    iteration: Callable[..., tuple[Any, dict]]
    defaults: MethodDefaults
    gradient_matching: bool
    dsa: bool
    kept_for_image_gradient: float
    own_schedule: bool = False

    @property
    def unit(self) -> str:
        """What a progress tick of one run's iteration counts."""
        return "outer steps" if self.gradient_matching else "iterations"

    def units(self, config: CondenseConfig) -> int:
        """Progress ticks of one iteration: its outer (matching) steps, or 1."""
        return config.loops[0] if self.gradient_matching else 1


# The registry: method name -> its record, in the order the methods are offered (dc, dsa, dm); filled once by
# ``dcjax.condense.methods`` (``register``), where a new method adds its record.
METHODS: dict[str, Method] = {}


def register(*methods: Method) -> None:
    """Adds records to ``METHODS``; a name registered twice is a bug."""
    for method in methods:
        assert method.name not in METHODS, f"method {method.name!r} registered twice"
        METHODS[method.name] = method


def default_loops(ipc: int) -> tuple[int, int]:
    """The reference (outer_loop, inner_loop); off-table ipc uses (20, 25) below 50 and (50, 10) above.

    The reference only tabulates the values in LOOPS_BY_IPC; for other ipc the authors used
    the better of (50, 10) and (20, 25). We pick the nearest tabulated row at or below ipc.
    """
    if ipc < 1:
        raise errors.ConfigError("ipc", f"must be >= 1, got {ipc}")
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
    # The matching network's matmul inputs (models.PRECISIONS): "fp32", or "bf16" with fp32 accumulation. The
    # synthetic images, their optimizer and every evaluation stay fp32.
    precision: str = "fp32"

    def __post_init__(self):
        """Every field's range; each message starts with the field's name (launchers name the flag)."""
        for name, options in (
            ("method", METHODS),
            ("distance", distances.DISTANCES),
            ("init", INITS),
            ("class_strategy", CLASS_STRATEGIES),
            ("precision", models.PRECISIONS),
        ):
            if getattr(self, name) not in options:
                raise errors.ConfigError(name, f"must be one of {', '.join(options)}, got {getattr(self, name)!r}")
        dsa.parse_strategy(self.dsa_strategy)  # Fails early on an unknown op.
        if self.ipc < 1:
            raise errors.ConfigError("ipc", f"must be >= 1, got {self.ipc}")
        if self.iterations < 0:
            raise errors.ConfigError("iterations", f"must be >= 0, got {self.iterations}")
        for name, low in (("outer_loop", 1), ("inner_loop", 1), ("microbatch", 0)):  # microbatch 0: off.
            value = getattr(self, name)
            if value is not None and value < low:
                raise errors.ConfigError(name, f"must be >= {low} or None, got {value}")
        for name in ("batch_real", "batch_train"):
            if getattr(self, name) < 1:
                raise errors.ConfigError(name, f"must be >= 1, got {getattr(self, name)}")
        for name in ("lr_img", "lr_net"):  # Not (0 < lr < inf) also rejects NaN.
            if not 0 < getattr(self, name) < float("inf"):
                raise errors.ConfigError(name, f"must be > 0 and finite, got {getattr(self, name)}")
        if not 0 <= self.momentum_img < 1:
            raise errors.ConfigError("momentum_img", f"must be in [0, 1), got {self.momentum_img}")

    @classmethod
    def paper(cls, method: str, **changes: Any) -> CondenseConfig:
        """``method``'s paper settings (its record's ``defaults`` over DC's defaults), then ``changes`` (fields)."""
        if method not in METHODS:
            raise errors.ConfigError("method", f"must be one of {', '.join(METHODS)}, got {method!r}")
        return cls(method=method, **{**dataclasses.asdict(METHODS[method].defaults), **changes})

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
    """batch_real (and ipc for real and means init) must fit in the smallest class."""
    smallest = int(jnp.min(index.counts))
    if config.batch_real > smallest:
        raise errors.ConfigError("batch_real", f"={config.batch_real} exceeds the smallest class ({smallest} examples)")
    if config.init in ("real", "means") and config.ipc > smallest:
        raise errors.ConfigError(
            "ipc", f"={config.ipc} with init={config.init} exceeds the smallest class ({smallest})"
        )


def mean_groups(key: jax.Array, index: data_lib.ClassIndex, ipc: int) -> list[np.ndarray]:
    """The privacy-first init's groups: per class c, [ipc, counts[c] // ipc] int indices into the pool.

    Class c's examples (key ``jax.random.split(key, K)[c]``) are shuffled and cut into ipc disjoint groups of
    equal size; the remainder (counts[c] % ipc examples) is in no group. Needs concrete counts (host side).
    """
    counts, table = np.asarray(index.counts), np.asarray(index.table)
    keys = jax.random.split(key, len(counts))
    groups = []
    for c, count in enumerate(counts):
        if count < ipc:
            raise errors.ConfigError("ipc", f"={ipc} with init=means exceeds class {c} ({count} examples)")
        order = np.asarray(jax.random.permutation(keys[c], int(count)))
        size = int(count) // ipc
        groups.append(table[c, order[: ipc * size]].reshape(ipc, size))
    return groups


def init_synthetic(config: CondenseConfig, key: jax.Array, images: jax.Array, index: data_lib.ClassIndex):
    """Initial synthetic set and the real examples it was copied from.

    Args:
      config: ipc and init ('noise': N(0, 1) in normalised space; 'real': random real
        images of each class, without replacement; 'means': each image the mean of one of ipc
        disjoint random groups of its class, ``mean_groups``, so that no single image is copied).
      key: initialisation key.
      images: [N, H, W, C] the real pool the index refers to.
      index: per-class index of that pool.

    Returns:
      (SynState with images [K*ipc, H, W, C], init indices [K*ipc] int32 into the pool,
      or -1 everywhere for noise and means init: no real image is used as pixels).
    """
    num_classes = index.counts.shape[0]
    shape = (num_classes * config.ipc,) + images.shape[1:]
    if config.init == "real":
        init_indices = data_lib.sample_per_class(key, index, config.ipc).reshape(-1)
        syn = images[init_indices]
    elif config.init == "means":
        init_indices = jnp.full((shape[0],), -1, jnp.int32)
        syn = jnp.concatenate([jnp.mean(images[group], axis=1) for group in mean_groups(key, index, config.ipc)])
    else:
        init_indices = jnp.full((shape[0],), -1, jnp.int32)
        syn = jax.random.normal(key, shape, images.dtype)
    return SynState(syn, image_optimizer(config).init(syn)), init_indices


def resolve_class_strategy(strategy: str, backend: str | None = None) -> str:
    """'auto' -> 'map' on CPU, 'vmap' elsewhere.

    On XLA:CPU a vmap over classes turns per-class weight gradients into grouped
    convolutions / batched GEMMs that run slower than one class at a time (docs/protocol.md
    section 8); 'map' and 'loop' both run classes sequentially at the same speed
    (benchmarks/condense_step.py), but 'map' traces one class body instead of K, so it
    compiles ~4x faster (ConvNet-128, ipc 10: ~48 s vs ~180 s).
    """
    return strategy_lib.resolve(strategy, "class strategy", backend)


def check_network(fns: ModelFns) -> None:
    """Refuses networks DC cannot match faithfully here (ConfigError)."""
    if fns.has_batch_stats:
        # The reference warms BatchNorm statistics on real data then freezes them for
        # matching; we have not implemented that, so refuse rather than silently differ.
        raise errors.ConfigError(
            None,
            "condensation with BatchNorm networks is not supported; use a "
            "network without batchnorm (e.g. the default instancenorm ConvNet)",
        )


def iteration_units(config: CondenseConfig) -> int:
    """Progress ticks of one iteration (``Method.units``): its outer (matching) steps for dc / dsa, 1 for dm."""
    return METHODS[config.method].units(config)


def describe(fns: ModelFns, config: CondenseConfig) -> str:
    """'DC iteration (width 128, ipc 10, outer 10 x inner 50)': what a progress line is about."""
    width = f"width {fns.config.width}, " if fns.config is not None else ""
    loops = ", outer {} x inner {}".format(*config.loops) if METHODS[config.method].gradient_matching else ""
    return f"{config.method.upper()} iteration ({width}ipc {config.ipc}{loops})"


def evaluation_augment(config: CondenseConfig, small_set: str) -> str:
    """The augmentation ``config``'s synthetic set trains with when evaluated (docs/protocol.md sections 4-5).

    As the reference: DSA's (``augment.dsa_augment_name`` of ``config.dsa_strategy``) for a method that matches
    through DSA (dsa, dm); else ``small_set``, what any small training set gets (``augment.small_set_augment``).
    """
    return augment_lib.dsa_augment_name(config.dsa_strategy) if METHODS[config.method].dsa else small_set
