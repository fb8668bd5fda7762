"""Nearest-synthetic-image distances: a released synthetic set's own membership signal.

A synthetic image initialised from (or pulled towards) a real training image can stay close to it, so "how close
is this real example to the nearest released synthetic image" is a membership score that needs no model at all.
Distances are computed in float32 with jnp under ``jax.jit`` in fixed-size batches over the pool (one compiled
shape), and returned as float64 NumPy.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from dcjax.privacy import lira


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


@jax.jit
def _nearest_other_batch(pool: jnp.ndarray, pool_sq: jnp.ndarray, rows: jnp.ndarray) -> jnp.ndarray:
    """pool [N, D], pool_sq [N] = ||pool||^2, rows [B] indices into pool -> [B] distance from pool[rows[b]] to the
    nearest pool image other than itself (as ``_nearest_batch``: the expansion picks, the difference measures)."""
    batch = pool[rows]
    cross = jnp.matmul(batch, pool.T, precision=jax.lax.Precision.HIGHEST)
    sq = jnp.sum(batch * batch, axis=1, keepdims=True) + pool_sq[None, :] - 2.0 * cross
    sq = sq.at[jnp.arange(rows.shape[0]), rows].set(jnp.inf)  # Not itself (an identical other image still counts).
    diff = batch - pool[jnp.argmin(sq, axis=1)]
    return jnp.sqrt(jnp.maximum(jnp.sum(diff * diff, axis=1), 0.0))


def nearest_other_distances(pool, rows, batch_size: int = 256) -> np.ndarray:
    """Euclidean distance from each of the pool images ``rows`` to the nearest OTHER pool image (any class).

    The natural spacing of real images, the yardstick for how far a synthetic image sits from its nearest real one.

    Args:
      pool: [N, H, W, C] real images, N >= 2.
      rows: [n] distinct indices into pool.
      batch_size: rows per jitted call (the last batch is padded with row 0, every call one shape).

    Returns:
      float64 [n].
    """
    real = _check_images("pool", pool, "NHWC")
    rows = np.asarray(rows, np.int32).reshape(-1)
    if real.shape[0] < 2:
        raise ValueError(f"pool must hold at least 2 images, got {real.shape[0]}")
    if rows.size and not (0 <= rows.min() and rows.max() < real.shape[0]):
        raise ValueError(f"rows must index the pool's {real.shape[0]} images")
    flat = jnp.asarray(real.reshape(real.shape[0], -1))
    flat_sq = jnp.sum(flat * flat, axis=1)
    batch = max(1, min(batch_size, rows.size))
    out = [np.zeros((0,), np.float32)]
    for start in range(0, rows.size, batch):
        chunk = rows[start : start + batch]
        padded = np.pad(chunk, (0, batch - chunk.size))
        out.append(np.asarray(_nearest_other_batch(flat, flat_sq, jnp.asarray(padded)))[: chunk.size])
    return np.concatenate(out).astype(np.float64)


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
        chunk = real_flat[start : start + batch]
        padded = np.pad(chunk, ((0, batch - chunk.shape[0]), (0, 0)))
        out.append(np.asarray(_nearest_batch(syn_flat, syn_sq, jnp.asarray(padded)))[: chunk.shape[0]])
    return np.concatenate(out).astype(np.float64)


def nearest_distance_scores(synthetic_sets, pool, batch_size: int = 1024) -> np.ndarray:
    """Membership scores from nearest distances, one row per released synthetic set (target model).

    Args:
      synthetic_sets: [M, S, H, W, C], target m's released synthetic set.
      pool: [N, H, W, C] the example pool.
      batch_size: as for ``nearest_distances``.

    Returns:
      float64 [M, N] = minus the nearest distance (higher = closer = guess "member"), ready for
      ``dcjax.privacy.assess``.
    """
    sets = _check_images("synthetic_sets", synthetic_sets, "MSHWC")
    rows = [-nearest_distances(s, pool, batch_size) for s in sets]
    if not rows:
        return np.zeros((0, np.asarray(pool).shape[0]), np.float64)
    return np.stack(rows)


def nearest_distance_matrix(synthetic_sets, pool, batch_size: int = 1024) -> np.ndarray:
    """L2 distance of each pool image to the nearest synthetic image of each released set.

    Memory stays bounded: one set at a time, the pool in ``batch_size`` chunks ([batch, S] distances per call).

    Args:
      synthetic_sets: [M, S, H, W, C], model m's released synthetic set.
      pool: [N, H, W, C] real images.
      batch_size: as for ``nearest_distances``.

    Returns:
      float64 [M, N] distances (``nearest_distance_scores`` is minus this).
    """
    sets = _check_images("synthetic_sets", synthetic_sets, "MSHWC")
    rows = [nearest_distances(s, pool, batch_size) for s in sets]
    if not rows:
        return np.zeros((0, np.asarray(pool).shape[0]), np.float64)
    return np.stack(rows)


def _log_distance_phi(distances: np.ndarray, relative_floor: float) -> np.ndarray:
    """phi = -log(d + eps), eps = relative_floor * the median positive distance (1 if there is none).

    A scale-relative eps keeps verbatim copies (d = 0) finite and makes the calibrated scores invariant to the
    pixel scale: multiplying every distance by c shifts every phi by -log(c), and LiRA is shift-invariant.
    """
    positive = distances[distances > 0]
    eps = relative_floor * (float(np.median(positive)) if positive.size else 1.0)
    return -np.log(distances + eps)


def calibrated_nearest_scores(distances, keep, relative_floor: float = 1e-6) -> dict[str, np.ndarray]:
    """Nearest-synthetic distances calibrated per example with LiRA (leave-one-out, fixed variance).

    The raw score -d flags every real image that is naturally close to any synthetic set (near-duplicates, class
    prototypes) whether or not it was a member. Here the target's distance for example n is compared with the same
    distance under the shadows' synthetic sets, for which the attacker knows membership: phi = -log(d + eps) (see
    ``_log_distance_phi``), then ``lira.leave_one_out`` with equalised IN / OUT shadow counts.

    Args:
      distances: [M, N] nearest distances, e.g. ``nearest_distance_matrix``; finite and >= 0.
      keep: [M, N] bool IN mask (model m trained on / condensed from example n).
      relative_floor: eps relative to the median positive distance, > 0.

    Returns:
      {"nearest_synthetic_lira": online LiRA [M, N], "nearest_synthetic_offline": offline LiRA [M, N]}, float64,
      higher = member; the labels for ``metrics`` are ``keep``.
    """
    d = np.asarray(distances, dtype=np.float64)
    if d.ndim != 2 or not np.isfinite(d).all() or (d < 0).any():
        raise ValueError(f"distances must be a finite, non-negative [M, N] array, got shape {d.shape}")
    if not relative_floor > 0:
        raise ValueError(f"relative_floor must be > 0, got {relative_floor}")
    phi = _log_distance_phi(d, relative_floor)
    online = functools.partial(lira.lira_online, fixed_variance=True)
    offline = functools.partial(lira.lira_offline, fixed_variance=True)
    return {
        "nearest_synthetic_lira": lira.leave_one_out(phi, keep, online)[0],
        "nearest_synthetic_offline": lira.leave_one_out(phi, keep, offline)[0],
    }
