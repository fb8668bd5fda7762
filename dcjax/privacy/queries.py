"""LiRA query augmentation for digits (docs/protocol.md section 7: "the image plus a few augmentations").

Digits are not mirror-symmetric (a flipped 2 or 7 is not a digit), so the queries are small translations only.
Each query is scored by every model; ``lira`` then averages the per-query likelihood ratios.
"""

from __future__ import annotations

import jax.numpy as jnp

from dcjax import errors

# (dy, dx) in pixels; the identity comes first so ``make_queries(x, 1)`` is the plain image.
SHIFTS = ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (-1, -1), (1, -1), (-1, 1))


def query_shifts(num_queries: int) -> tuple[tuple[int, int], ...]:
    """The first ``num_queries`` (dy, dx) shifts of ``SHIFTS``; raises ConfigError outside [1, len(SHIFTS)]."""
    if not 1 <= num_queries <= len(SHIFTS):
        raise errors.ConfigError("num_queries", f"must be in [1, {len(SHIFTS)}], got {num_queries}")
    return SHIFTS[:num_queries]


def shift_images(images, dy: int, dx: int) -> jnp.ndarray:
    """Moves image content by (dy, dx) pixels: output[:, r, c] = images[:, r - dy, c - dx].

    The uncovered border repeats the nearest edge pixel: normalised images have a non-zero background, so a zero
    fill would draw a visible bar the models never saw in training. Pure jnp and jit-able with static dy, dx.

    Args:
      images: [N, H, W, C].
      dy, dx: python ints with |dy| < H and |dx| < W (positive = down / right).

    Returns:
      [N, H, W, C], same dtype.
    """
    x = jnp.asarray(images)
    if x.ndim != 4:
        raise ValueError(f"images must be [N, H, W, C], got shape {x.shape}")
    h, w = x.shape[1], x.shape[2]
    if abs(dy) >= h or abs(dx) >= w:
        raise ValueError(f"shift (dy={dy}, dx={dx}) must be smaller than the image size ({h}, {w})")
    py, px = abs(dy), abs(dx)
    padded = jnp.pad(x, ((0, 0), (py, py), (px, px), (0, 0)), mode="edge")
    # padded[p + k] = images[clamp(k)], so output row r = images[r - dy] starts at padded index p - dy.
    return padded[:, py - dy : py - dy + h, px - dx : px - dx + w, :]


def make_queries(images, num_queries: int) -> jnp.ndarray:
    """Stacks the query views of every image: [N, H, W, C] -> [Q, N, H, W, C]; query 0 is the image itself."""
    return jnp.stack([shift_images(images, dy, dx) for dy, dx in query_shifts(num_queries)])
