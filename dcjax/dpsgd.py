"""Differentially private SGD (Abadi et al., CCS 2016) with Poisson-sampled batches.

Sampling (``poisson_batch``): every step includes each of the model's examples independently
with probability q (the batch size is random, mean q * n). ``q = B / n`` for the expected batch
size B and the PUBLIC dataset size n that ``DPConfig.num_examples`` records (a model's actual
private set may differ a little from n: only its expected batch changes, not q);
``steps = round(epochs * n / B)`` (``poisson_schedule``: epochs are expected passes).

Fixed shapes: so that one compiled step serves every step whatever its batch size, a step has
``capacity`` = B_max slots and a validity mask. B_max (``poisson_capacity``) is the smallest
size for which ``steps * P(Binomial(n_max, q) > B_max) <= overflow_budget``. On overflow (more
than B_max examples drawn) the examples beyond the first B_max, in pool order, are DROPPED from
that step. The truncated mechanism differs from true Poisson DP-SGD only on the overflow event,
whose probability is at most eta = ``overflow_probability(...)``, on a dataset and on each
neighbour (n_max covers the largest private set plus the one added example;
``check_capacity`` refuses a capacity that does not). So its output distribution is within
total-variation distance eta of the Poisson mechanism's on both, and an (epsilon, delta)
guarantee of the Poisson accountant becomes (epsilon, delta + (1 + e^epsilon) * eta) for the
training actually run (``dcjax.privacy.accounting.overflow_delta``).

Gradient (``private_grad_sum``): every example's gradient (``jax.vmap`` over examples, a scan
over chunks of examples so memory stays at one chunk of per-example gradients), scaled to
whole-model L2 norm at most ``l2_clip`` (factor ``min(1, l2_clip / (norm + eps))``), summed
over the valid slots, plus Gaussian noise of standard deviation ``noise_multiplier * l2_clip``
on every coordinate. ``dcjax.train`` divides that sum by the EXPECTED batch size q * n (a
constant, the standard Poisson DP-SGD estimator; dividing by the sampled size would make the
scale data-dependent). Everything after that (weight decay, momentum, learning rate) is
post-processing of this noisy sum and costs no privacy. The accounting (epsilon from noise, q
and steps) is ``dcjax.privacy.accounting``.

BatchNorm networks are refused: batch statistics mix the examples of a batch, so one
example influences every other example's gradient and clipping no longer bounds its
contribution.
"""

from __future__ import annotations

import dataclasses
from typing import Any
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from scipy.stats import binom

from dcjax import chunks
from dcjax import errors
from dcjax.models import ModelFns

NORM_EPS = 1e-6  # Keeps the clip factor finite for a zero gradient.


@dataclasses.dataclass(frozen=True, kw_only=True)
class DPConfig:
    """DP-SGD settings: clip C, noise std = noise_multiplier * C, Poisson sampling of batches.

    num_examples: n, the public size of the private dataset that the sampling rate refers to
      (q = min(B, n) / n for the training's expected batch size B).
    capacity: B_max, slots per step (``poisson_capacity``).
    overflow_budget: eta, the most total overflow probability the guarantee allows;
      ``train.make_schedule`` refuses data whose largest private set B_max does not cover.
    """

    l2_clip: float = 1.0
    noise_multiplier: float = 1.0
    num_examples: int
    capacity: int
    overflow_budget: float

    def __post_init__(self):
        if not 0 < self.l2_clip < np.inf:  # Also rejects NaN.
            raise errors.ConfigError("l2_clip", f"must be > 0 and finite, got {self.l2_clip}")
        if not 0 <= self.noise_multiplier < np.inf:
            raise errors.ConfigError("noise_multiplier", f"must be >= 0 and finite, got {self.noise_multiplier}")
        for name in ("num_examples", "capacity"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise errors.ConfigError(name, f"must be an integer >= 1, got {value!r}")
        if not 0 < self.overflow_budget < 1:
            raise errors.ConfigError("overflow_budget", f"must be in (0, 1), got {self.overflow_budget}")


def poisson_schedule(num_examples: int, batch_size: int, epochs: int) -> tuple[float, int, int]:
    """(q, steps, expected batch q * n) of Poisson DP-SGD with expected batch B for ``epochs`` passes.

    q = b / n with b = min(B, n); steps = round(epochs / q) = round(epochs * n / b), halves
    rounded up (integer arithmetic, so no float error decides it); the expected batch q * n = b.
    """
    for name, value in (("num_examples", num_examples), ("batch_size", batch_size), ("epochs", epochs)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    b = min(batch_size, num_examples)
    return b / num_examples, (2 * epochs * num_examples + b) // (2 * b), b


def overflow_probability(num_examples: int, sample_rate: float, steps: int, capacity: int) -> float:
    """Union bound on P(some step draws more than ``capacity`` of ``num_examples`` examples).

    steps * P(Binomial(num_examples, q) > capacity), capped at 1 (scipy's survival function,
    accurate in the far tail).
    """
    return float(min(1.0, steps * binom.sf(capacity, num_examples, sample_rate)))


def poisson_capacity(num_examples: int, sample_rate: float, steps: int, budget: float) -> int:
    """The smallest B_max with ``overflow_probability(num_examples, q, steps, B_max) <= budget``.

    Pass num_examples = the largest private set + 1 (the neighbour with one added example).
    Always <= num_examples (no more can be drawn).
    """
    if not 0 < budget < 1:
        raise ValueError(f"budget must be in (0, 1), got {budget}")
    sizes = np.arange(num_examples + 1)
    tails = steps * binom.sf(sizes, num_examples, sample_rate)
    return max(1, int(np.argmax(tails <= budget)))  # tails[num_examples] = 0: always found.


def check_capacity(config: DPConfig, batch_size: int, epochs: int, max_examples: int) -> float:
    """ConfigError unless B_max keeps overflow within budget for ``max_examples`` + 1 examples.

    Returns the overflow probability bound eta at max_examples + 1.
    """
    q, steps, _ = poisson_schedule(config.num_examples, batch_size, epochs)
    eta = overflow_probability(max_examples + 1, q, steps, config.capacity)
    if eta > config.overflow_budget:
        need = poisson_capacity(max_examples + 1, q, steps, config.overflow_budget)
        raise errors.ConfigError(
            None,
            f"capacity {config.capacity} is too small for private sets of up to {max_examples} "
            f"examples: overflow probability {eta:.3g} > overflow_budget "
            f"{config.overflow_budget:.3g}; need capacity >= {need}",
        )
    return eta


def poisson_batch(key: jax.Array, mask: jax.Array, sample_rate: float, capacity: int):
    """One Poisson-sampled batch in ``capacity`` fixed slots.

    Args:
      key: sampling key of this step.
      mask: [N] bool, the model's examples in the pool.
      sample_rate: q, static.
      capacity: B_max, static.

    Returns:
      indices [capacity] int32 into the pool; weights [capacity] float32, 1 for the drawn
      examples (in pool order, in the first slots), 0 for padding (index 0). Drawn examples
      beyond the first ``capacity`` are dropped (see the module docstring).
    """
    included = mask & jax.random.bernoulli(key, sample_rate, mask.shape)
    slot = jnp.cumsum(included.astype(jnp.int32)) - 1
    slot = jnp.where(included & (slot < capacity), slot, capacity)  # Out of range: dropped.
    pool = jnp.arange(mask.shape[0], dtype=jnp.int32)
    indices = jnp.zeros(capacity, jnp.int32).at[slot].set(pool, mode="drop")
    weights = (jnp.arange(capacity) < jnp.sum(included)).astype(jnp.float32)
    return indices, weights


def check_network(fns: ModelFns) -> None:
    """ConfigError for networks whose examples are not independent (BatchNorm)."""
    if fns.has_batch_stats:
        raise errors.ConfigError(
            None, "DP-SGD needs per-example gradients; BatchNorm mixes examples (use instancenorm)"
        )


def example_loss(fns: ModelFns, variables: dict[str, Any]) -> Callable:
    """loss(params, image [H,W,C], label []) -> cross-entropy of one example (eval-mode forward)."""

    def loss(params, image, label):
        logits = fns.apply({**variables, "params": params}, image[None])
        return optax.softmax_cross_entropy_with_integer_labels(logits, label[None])[0]

    return loss


def global_norms(grads) -> jax.Array:
    """Whole-model L2 norm of each example's gradient: pytree of [k, ...] leaves -> [k]."""
    squares = [jnp.sum(jnp.reshape(g, (g.shape[0], -1)) ** 2, axis=1) for g in jax.tree.leaves(grads)]
    return jnp.sqrt(sum(squares))


def clipped_example_grads(loss: Callable, params, images: jax.Array, labels: jax.Array, l2_clip: float):
    """Per-example losses and clipped gradients of k examples.

    Args:
      loss: loss(params, image, label) of one example (``example_loss``).
      params: parameter pytree.
      images: [k, H, W, C]; labels: [k] int.
      l2_clip: C.

    Returns:
      (losses [k], clipped gradients: params-shaped leaves with a leading [k] axis,
      norms before clipping [k]).
    """
    losses, grads = jax.vmap(jax.value_and_grad(loss), in_axes=(None, 0, 0))(params, images, labels)
    norms = global_norms(grads)
    factor = jnp.minimum(1.0, l2_clip / (norms + NORM_EPS))
    clipped = jax.tree.map(lambda g: g * factor.reshape((-1,) + (1,) * (g.ndim - 1)), grads)
    return losses, clipped, norms


def clipped_grad_sum(loss: Callable, params, batch, l2_clip: float, chunk: int):
    """Sum over real examples of clipped per-example gradients, ``chunk`` examples at a time.

    Args:
      loss: per-example loss (``example_loss``).
      params: parameter pytree.
      batch: (images [B,H,W,C], labels [B], weights [B] in {0, 1}; 0 marks padding).
      l2_clip: C.
      chunk: examples per vmapped chunk (> 0); B is zero-padded to a multiple of it.

    Returns:
      (sum of weight * loss, sum of weight * clipped gradient, norms before clipping [B];
      0 in chunks made only of padding).
    """
    b = batch[0].shape[0]
    per_chunk = tuple(chunks.pad_to_chunks(a, chunk)[0] for a in batch)

    def compute(carry, xs):
        images, labels, weights = xs
        losses, clipped, norms = clipped_example_grads(loss, params, images, labels, l2_clip)
        summed = jax.tree.map(lambda g: jnp.tensordot(weights, g, axes=1), clipped)
        return (carry[0] + jnp.sum(weights * losses), jax.tree.map(jnp.add, carry[1], summed)), norms

    def body(carry, xs):
        # Poisson batches fill their first slots, so the last chunks are often all padding:
        # skipping them makes a step cost its drawn batch, not B_max (a real branch under a
        # scan/lax.map; under vmap both sides run, with the same result).
        skip = lambda carry, xs: (carry, jnp.zeros(chunk, jnp.float32))  # noqa: E731
        return jax.lax.cond(jnp.any(xs[2] > 0), compute, skip, carry, xs)

    init = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params))
    (loss_sum, grad_sum), norms = jax.lax.scan(body, init, per_chunk)
    return loss_sum, grad_sum, norms.reshape(-1)[:b]


def add_noise(key: jax.Array, tree, std: float):
    """tree + N(0, std^2) independently on every coordinate (one subkey per leaf)."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, len(leaves))
    noisy = [x + std * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
    return jax.tree.unflatten(treedef, noisy)


def private_grad_sum(fns: ModelFns, config: DPConfig, variables: dict[str, Any], batch, key: jax.Array, chunk: int = 0):
    """The noisy clipped-gradient SUM of one (Poisson-sampled, padded) batch.

    The caller divides it by the expected batch size q * n (``train._dp_step``), a constant.

    Args:
      fns: the network (no BatchNorm).
      config: clip norm and noise multiplier.
      variables: {"params": ...} (and any other non-batch-statistics collections).
      batch: (images [B,H,W,C], labels [B] int, weights [B] in {0, 1}; 0 marks padding).
      key: noise key.
      chunk: examples per vmapped chunk; 0 means all B at once.

    Returns:
      (mean loss over real examples, for logging only: it is NOT privatised;
       sum of clipped gradients + N(0, (noise_multiplier * l2_clip)^2), shaped like params;
       {"clipped_fraction": share of real examples whose norm exceeded the clip,
        "mean_norm": mean pre-clip norm over real examples}).
    """
    check_network(fns)
    images, labels, weights = batch
    loss_sum, grad_sum, norms = clipped_grad_sum(
        example_loss(fns, variables), variables["params"], batch, config.l2_clip, chunk or images.shape[0]
    )
    noisy = add_noise(key, grad_sum, config.noise_multiplier * config.l2_clip)
    count = jnp.maximum(jnp.sum(weights), 1.0)
    stats = {
        "clipped_fraction": jnp.sum(weights * (norms > config.l2_clip)) / count,
        "mean_norm": jnp.sum(weights * norms) / count,
    }
    return loss_sum / count, noisy, stats
