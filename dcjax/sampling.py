"""Sampling image batches at fractional source coordinates: the four integer neighbours of every sample point.

Both affine samplers use it: ``augment._warp`` (pixel coordinates, a fill value outside, nearest or bilinear, for
the DC-style training augmentation) and ``dsa._affine_sample`` (normalised coordinates, zero outside, bilinear and
differentiable, for DSA). Each weights the neighbours its own way, so their outputs are bitwise what they were
before this module existed (checked on 2026-12-04: both samplers' outputs and DSA's gradient, and tests/golden.py's
digests of the CPU tiers).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class Neighbour(NamedTuple):
    """One of the four integer neighbours of every sample point (all [B, P]; values [B, P, C] float32)."""

    row: jax.Array
    col: jax.Array
    inside: jax.Array  # Whether (row, col) lies in the image; values there are clamped-edge placeholders otherwise.
    values: jax.Array


def neighbours(images: jax.Array, row0: jax.Array, col0: jax.Array) -> list[Neighbour]:
    """The neighbours (row0 + dy, col0 + dx), dy and dx in (0, 1) in that order, of P points per image.

    images: [B, H, W, C]; row0, col0: [B, P] floored float32 source coordinates. Outside the image, ``values`` holds
    the nearest edge pixel and ``inside`` is False: callers weight or replace them.
    """
    b, h, w, c = images.shape
    flat = images.reshape(b, h * w, c).astype(jnp.float32)
    out = []
    for dy in (0, 1):
        for dx in (0, 1):
            y, x = row0 + dy, col0 + dx
            inside = (y >= 0) & (y <= h - 1) & (x >= 0) & (x <= w - 1)
            idx = (jnp.clip(y, 0, h - 1) * w + jnp.clip(x, 0, w - 1)).astype(jnp.int32)
            out.append(Neighbour(y, x, inside, jnp.take_along_axis(flat, idx[:, :, None], axis=1)))
    return out
