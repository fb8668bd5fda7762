"""dcjax.sampling: the four integer neighbours of fractional sample points, in and outside the image."""

import jax.numpy as jnp
import numpy as np

from dcjax import sampling


def test_neighbours_gather_the_four_pixels_and_flag_the_outside_ones():
    images = jnp.arange(2 * 3 * 4 * 2, dtype=jnp.float32).reshape(2, 3, 4, 2)
    row0 = jnp.array([[0.0, 2.0], [-1.0, 1.0]])  # [B, P]: image 1's first point sits above the image.
    col0 = jnp.array([[0.0, 3.0], [1.0, 2.0]])
    corners = sampling.neighbours(images, row0, col0)
    assert [(int(c.row[0, 0] - row0[0, 0]), int(c.col[0, 0] - col0[0, 0])) for c in corners] == [
        (0, 0),
        (0, 1),
        (1, 0),
        (1, 1),
    ]
    for corner in corners:
        for b in range(2):
            for p in range(2):
                y, x = int(corner.row[b, p]), int(corner.col[b, p])
                inside = 0 <= y <= 2 and 0 <= x <= 3
                assert bool(corner.inside[b, p]) == inside
                clamped = images[b, min(max(y, 0), 2), min(max(x, 0), 3)]  # The edge pixel stands in outside.
                np.testing.assert_array_equal(corner.values[b, p], clamped)
