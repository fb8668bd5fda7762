"""Differentially private SGD gradients (Abadi et al., CCS 2016): clip each example, add noise.

For a batch of B slots, ``private_grads`` computes every example's gradient (``jax.vmap``
over examples, a scan over chunks of examples so memory stays at one chunk of per-example
gradients), scales each to whole-model L2 norm at most ``l2_clip``
(factor ``min(1, l2_clip / (norm + eps))``), sums them over the real examples, adds
Gaussian noise of standard deviation ``noise_multiplier * l2_clip`` to every coordinate and
divides by B. Everything after that (weight decay, momentum, learning rate) is
post-processing of this noisy sum and costs no privacy. The accounting (epsilon from
noise, sampling rate and steps) is ``dcjax.privacy.accounting``.

BatchNorm networks are refused: batch statistics mix the examples of a batch, so one
example influences every other example's gradient and clipping no longer bounds its
contribution.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from dcjax.models import ModelFns

NORM_EPS = 1e-6  # Keeps the clip factor finite for a zero gradient.


@dataclasses.dataclass(frozen=True)
class DPConfig:
    """DP-SGD settings: per-example L2 clip norm C, noise std = noise_multiplier * C."""

    l2_clip: float = 1.0
    noise_multiplier: float = 1.0

    def __post_init__(self):
        if not self.l2_clip > 0:
            raise ValueError(f"l2_clip must be > 0, got {self.l2_clip}")
        if not self.noise_multiplier >= 0:
            raise ValueError(f"noise_multiplier must be >= 0, got {self.noise_multiplier}")


def check_network(fns: ModelFns) -> None:
    """ValueError for networks whose examples are not independent (BatchNorm)."""
    if fns.has_batch_stats:
        raise ValueError("DP-SGD needs per-example gradients; BatchNorm mixes examples (use instancenorm)")


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


def clipped_example_grads(loss: Callable, params, images: jax.Array, labels: jax.Array,
                          l2_clip: float):
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
      (sum of weight * loss, sum of weight * clipped gradient, norms before clipping [B]).
    """
    b = batch[0].shape[0]
    n = -(-b // chunk)
    chunks = tuple(jnp.pad(a, [(0, n * chunk - b)] + [(0, 0)] * (a.ndim - 1)).reshape(
        (n, chunk) + a.shape[1:]) for a in batch)

    def body(carry, xs):
        images, labels, weights = xs
        losses, clipped, norms = clipped_example_grads(loss, params, images, labels, l2_clip)
        summed = jax.tree.map(lambda g: jnp.tensordot(weights, g, axes=1), clipped)
        return (carry[0] + jnp.sum(weights * losses), jax.tree.map(jnp.add, carry[1], summed)), norms

    init = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params))
    (loss_sum, grad_sum), norms = jax.lax.scan(body, init, chunks)
    return loss_sum, grad_sum, norms.reshape(-1)[:b]


def add_noise(key: jax.Array, tree, std: float):
    """tree + N(0, std^2) independently on every coordinate (one subkey per leaf)."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, len(leaves))
    noisy = [x + std * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
    return jax.tree.unflatten(treedef, noisy)


def private_grads(fns: ModelFns, config: DPConfig, variables: dict[str, Any], batch,
                  key: jax.Array, chunk: int = 0):
    """The DP-SGD gradient of one batch.

    Args:
      fns: the network (no BatchNorm).
      config: clip norm and noise multiplier.
      variables: {"params": ...} (and any other non-batch-statistics collections).
      batch: (images [B,H,W,C], labels [B] int, weights [B] in {0, 1}; 0 marks padding).
      key: noise key.
      chunk: examples per vmapped chunk; 0 means all B at once.

    Returns:
      (mean loss over real examples, for logging only: it is NOT privatised;
       noisy gradient pytree shaped like params;
       {"clipped_fraction": share of real examples whose norm exceeded the clip,
        "mean_norm": mean pre-clip norm over real examples}).
    """
    check_network(fns)
    images, labels, weights = batch
    b = images.shape[0]
    loss_sum, grad_sum, norms = clipped_grad_sum(example_loss(fns, variables), variables["params"],
                                                 batch, config.l2_clip, chunk or b)
    noisy = add_noise(key, grad_sum, config.noise_multiplier * config.l2_clip)
    # Divide by the FIXED batch size, not by the number of real examples: a data-dependent
    # denominator would itself depend on whether an example is present, so the released
    # gradient's sensitivity would no longer be bounded by l2_clip / B.
    grads = jax.tree.map(lambda g: g / b, noisy)
    count = jnp.maximum(jnp.sum(weights), 1.0)
    stats = {"clipped_fraction": jnp.sum(weights * (norms > config.l2_clip)) / count,
             "mean_norm": jnp.sum(weights * norms) / count}
    return loss_sum / count, grads, stats
