"""dcjax.privacy.canaries: mislabelled canaries (which examples, which wrong labels, reproducible from a key)."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from dcjax.privacy import canaries


def _labels(n: int = 50, k: int = 10) -> np.ndarray:
    return np.arange(n) % k


def test_mislabel_changes_exactly_the_canaries_to_other_classes():
    y = _labels()
    new, idx = canaries.mislabel(jax.random.PRNGKey(0), y, 7, 10)
    assert new.dtype == np.int32 and new.shape == y.shape
    assert idx.shape == (7,) and np.all(np.diff(idx) > 0)  # distinct and sorted
    changed = np.flatnonzero(new != y)
    np.testing.assert_array_equal(changed, idx)
    assert np.all((new >= 0) & (new < 10))
    assert y.tolist() == _labels().tolist()  # the input is not modified


def test_mislabel_is_deterministic_per_key():
    y = _labels()
    a = canaries.mislabel(jax.random.PRNGKey(1), y, 10, 10)
    b = canaries.mislabel(jax.random.PRNGKey(1), y, 10, 10)
    c = canaries.mislabel(jax.random.PRNGKey(2), y, 10, 10)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1]) or not np.array_equal(a[0], c[0])


def test_mislabel_zero_and_all():
    y = _labels(12, 2)
    new, idx = canaries.mislabel(jax.random.PRNGKey(0), y, 0, 2)
    np.testing.assert_array_equal(new, y)
    assert idx.size == 0
    new, idx = canaries.mislabel(jax.random.PRNGKey(0), y, 12, 2)
    # With two classes the only wrong label is the other one.
    np.testing.assert_array_equal(new, 1 - y)
    np.testing.assert_array_equal(idx, np.arange(12))


@pytest.mark.parametrize(
    "labels, num, k, match",
    [
        (np.arange(5), -1, 10, "num_canaries"),
        (np.arange(5), 6, 10, "num_canaries"),
        (np.zeros(5, np.int32), 1, 1, "num_classes"),
        (np.arange(5), 1, 3, "labels"),
        (np.zeros(5, np.float32), 1, 3, "labels"),
    ],
)
def test_mislabel_errors(labels, num, k, match):
    with pytest.raises(ValueError, match=match):
        canaries.mislabel(jax.random.PRNGKey(0), labels, num, k)
