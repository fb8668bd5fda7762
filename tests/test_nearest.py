"""dcjax.privacy.nearest: distances from each pool image to its nearest synthetic image, and their scores."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from dcjax.privacy import nearest


def _images(key: int, n: int) -> np.ndarray:
    return np.array(jax.random.normal(jax.random.PRNGKey(key), (n, 4, 3, 2)))  # writable copy


@pytest.mark.slow
def test_nearest_distances_match_brute_force_and_padding():
    syn, pool = _images(0, 6), _images(1, 11)
    pool[3] = syn[4]  # a pool image that was released verbatim
    brute = np.sqrt(((pool.reshape(11, 1, -1).astype(np.float64) - syn.reshape(1, 6, -1)) ** 2).sum(-1)).min(1)
    for batch_size in (4, 11, 1024):  # 4 pads the last batch
        got = nearest.nearest_distances(syn, pool, batch_size=batch_size)
        assert got.dtype == np.float64 and got.shape == (11,)
        np.testing.assert_allclose(got, brute, rtol=1e-5, atol=1e-5)
        assert got[3] == 0.0


def test_nearest_distances_is_zero_for_synthetic_images():
    syn = _images(2, 5)
    np.testing.assert_array_equal(nearest.nearest_distances(syn, syn[::-1], batch_size=2), np.zeros(5))


def test_nearest_distances_errors():
    with pytest.raises(ValueError, match="pool"):
        nearest.nearest_distances(_images(0, 2), _images(1, 2)[..., :1])
    with pytest.raises(ValueError, match="synthetic"):
        nearest.nearest_distances(_images(0, 2)[0], _images(1, 2))
    with pytest.raises(ValueError, match="batch_size"):
        nearest.nearest_distances(_images(0, 2), _images(1, 2), batch_size=0)


@pytest.mark.slow
def test_nearest_distance_scores_shape_and_sign():
    sets = np.stack([_images(3, 4), _images(4, 4)])
    pool = _images(5, 7)
    pool[0] = sets[1, 2]
    scores = nearest.nearest_distance_scores(sets, pool)
    assert scores.shape == (2, 7) and scores.dtype == np.float64
    assert np.all(scores <= 0)
    np.testing.assert_allclose(scores[0], -nearest.nearest_distances(sets[0], pool))
    assert scores[1, 0] == 0.0 and scores[1, 0] > scores[0, 0]  # the released copy is the "member" guess


def test_nearest_other_distances_skip_only_the_image_itself():
    pool = _images(3, 9)
    pool[7] = pool[2]  # An identical other image: distance 0 for both.
    flat = pool.reshape(9, -1).astype(np.float64)
    brute = np.sqrt(((flat[:, None] - flat[None]) ** 2).sum(-1))
    np.fill_diagonal(brute, np.inf)
    rows = np.array([5, 2, 0, 7, 8])
    for batch_size in (2, 5, 256):  # 2 pads the last batch.
        got = nearest.nearest_other_distances(pool, rows, batch_size=batch_size)
        assert got.dtype == np.float64 and got.shape == (5,)
        np.testing.assert_allclose(got, brute[rows].min(1), rtol=1e-5, atol=1e-5)
        assert got[1] == got[3] == 0.0 and (got[[0, 2, 4]] > 0).all()
    with pytest.raises(ValueError, match="at least 2"):
        nearest.nearest_other_distances(pool[:1], [0])
    with pytest.raises(ValueError, match="rows"):
        nearest.nearest_other_distances(pool, [9])
