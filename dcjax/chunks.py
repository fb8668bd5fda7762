"""Fixed-shape chunks of a leading axis: the one padding rule behind every chunked loop in dcjax.

jit needs one shape per call, so an axis of N items processed ``size`` at a time is zero-padded at the end to
the next multiple of ``size``; ``valid`` marks the real items so callers can give the padding no weight.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def num_chunks(n: int, size: int) -> int:
    """ceil(n / size): the chunks that hold n items."""
    if size < 1:
        raise ValueError(f"chunk size must be >= 1, got {size}")
    return -(-n // size)


def pad_to_chunks(x: jax.Array, size: int) -> tuple[jax.Array, jax.Array]:
    """[N, ...] -> (chunks [ceil(N/size), size, ...], zero-padded at the end; valid [ceil(N/size), size] bool)."""
    n = x.shape[0]
    count = num_chunks(n, size)
    padded = jnp.pad(x, [(0, count * size - n)] + [(0, 0)] * (x.ndim - 1))
    valid = jnp.arange(count * size) < n
    return padded.reshape((count, size) + x.shape[1:]), valid.reshape(count, size)
