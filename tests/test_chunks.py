"""dcjax.chunks: the one chunk-padding rule (zero padding at the end, a mask of the real items)."""

import chex
import jax.numpy as jnp
import numpy as np
import pytest

from dcjax import chunks


@pytest.mark.parametrize("n, size, count", [(10, 4, 3), (8, 4, 2), (1, 4, 1)])
def test_chunks_pad_at_the_end_and_mark_the_real_items(n, size, count):
    x = jnp.arange(n * 2, dtype=jnp.float32).reshape(n, 2) + 1
    padded, valid = chunks.pad_to_chunks(x, size)
    chex.assert_shape(padded, (count, size, 2))
    chex.assert_shape(valid, (count, size))
    assert int(valid.sum()) == n and bool(valid.reshape(-1)[:n].all())
    np.testing.assert_array_equal(padded.reshape(-1, 2)[:n], x)
    assert float(jnp.abs(padded.reshape(-1, 2)[n:]).sum()) == 0.0


def test_a_chunk_size_below_one_is_refused():
    with pytest.raises(ValueError, match="chunk size must be >= 1"):
        chunks.num_chunks(5, 0)
