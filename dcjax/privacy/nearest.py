"""Nearest-synthetic-image distances: a released synthetic set's own membership signal.

A synthetic image initialised from (or pulled towards) a real training image can stay close to it, so "how close
is this real example to the nearest released synthetic image" is a membership score that needs no model at all.
Distances are computed in float32 with jnp under ``jax.jit`` in fixed-size batches over the pool (one compiled
shape), and returned as float64 NumPy.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


@jax.jit
def _nearest_batch(synthetic: jnp.ndarray, synthetic_sq: jnp.ndarray, batch: jnp.ndarray) -> jnp.ndarray:
    """synthetic [S, D], synthetic_sq [S] = ||synthetic||^2, batch [B, D] -> [B] distance to nearest synthetic.

    The ||a||^2 + ||b||^2 - 2 a.b expansion turns the search into one matmul; HIGHEST precision keeps
    accelerators from using reduced-precision (TF32 / bf16) passes, which would swamp small distances.
    """
    cross = jnp.matmul(batch, synthetic.T, precision=jax.lax.Precision.HIGHEST)
    sq = jnp.sum(batch * batch, axis=1, keepdims=True) + synthetic_sq[None, :] - 2.0 * cross
    nearest = jnp.argmin(sq, axis=1)
    # The expansion cancels catastrophically for near-duplicates (a copy would come out as sqrt(rounding) > 0),
    # so it only picks the winner; the distance itself is recomputed from the difference, clamped as a guard.
    diff = batch - synthetic[nearest]
    return jnp.sqrt(jnp.maximum(jnp.sum(diff * diff, axis=1), 0.0))


def _check_images(name: str, x, layout: str) -> np.ndarray:
    """x -> float32 array with len(layout) dims, e.g. layout "NHWC"; raises ValueError naming ``name``."""
    a = np.asarray(x, dtype=np.float32)
    if a.ndim != len(layout):
        raise ValueError(f"{name} must be [{', '.join(layout)}], got shape {a.shape}")
    return a


def nearest_distances(synthetic, pool, batch_size: int = 1024) -> np.ndarray:
    """Euclidean distance from each pool image to its nearest synthetic image.

    Args:
      synthetic: [S, H, W, C] released synthetic images, S >= 1.
      pool: [N, H, W, C] real images, same H, W, C.
      batch_size: pool images per jitted call; the last batch is zero-padded so every call has the same shape.

    Returns:
      float64 [N].
    """
    syn = _check_images("synthetic", synthetic, "SHWC")
    real = _check_images("pool", pool, "NHWC")
    if syn.shape[0] < 1:
        raise ValueError("synthetic must contain at least one image")
    if syn.shape[1:] != real.shape[1:]:
        raise ValueError(f"pool image shape {real.shape[1:]} does not match synthetic {syn.shape[1:]}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = real.shape[0]
    if n == 0:
        return np.zeros((0,), np.float64)
    syn_flat = jnp.asarray(syn.reshape(syn.shape[0], -1))
    syn_sq = jnp.sum(syn_flat * syn_flat, axis=1)
    real_flat = real.reshape(n, -1)
    # Never pad a small pool up to a large batch: the batch is at most N.
    batch = min(batch_size, n)
    out = []
    for start in range(0, n, batch):
        chunk = real_flat[start:start + batch]
        padded = np.pad(chunk, ((0, batch - chunk.shape[0]), (0, 0)))
        out.append(np.asarray(_nearest_batch(syn_flat, syn_sq, jnp.asarray(padded)))[:chunk.shape[0]])
    return np.concatenate(out).astype(np.float64)


def nearest_distance_scores(synthetic_sets, pool, batch_size: int = 1024) -> np.ndarray:
    """Membership scores from nearest distances, one row per released synthetic set (target model).

    Args:
      synthetic_sets: [M, S, H, W, C], target m's released synthetic set.
      pool: [N, H, W, C] the example pool.
      batch_size: as for ``nearest_distances``.

    Returns:
      float64 [M, N] = minus the nearest distance (higher = closer = guess "member"), ready for
      ``report.slice_metrics(scores, keep, ...)``.
    """
    sets = _check_images("synthetic_sets", synthetic_sets, "MSHWC")
    rows = [-nearest_distances(s, pool, batch_size) for s in sets]
    if not rows:
        return np.zeros((0, np.asarray(pool).shape[0]), np.float64)
    return np.stack(rows)
