"""LiRA queries (shifts), ROC points for reports and the log-log ROC figure."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dcjax import plots
from dcjax.privacy import assess, metrics, queries


def _one_pixel(h: int = 6, w: int = 5, r: int = 2, c: int = 2) -> jnp.ndarray:
    # Background 0.3 (like a normalised image) with one bright pixel, so shifts and edge fill are both visible.
    x = np.full((1, h, w, 1), 0.3, np.float32)
    x[0, r, c, 0] = 1.0
    return jnp.asarray(x)


@pytest.mark.parametrize("dy, dx", [(1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (-1, -1), (2, -1)])
def test_shift_moves_bright_pixel(dy, dx):
    x = _one_pixel()
    out = np.asarray(jax.jit(queries.shift_images, static_argnums=(1, 2))(x, dy, dx))
    assert out.shape == x.shape
    assert np.argwhere(out[0, ..., 0] == 1.0).tolist() == [[2 + dy, 2 + dx]]
    # Everything else, uncovered border included, is the edge (background) value, not zero.
    assert np.sum(out == 1.0) == 1 and np.all((out == 1.0) | (out == np.float32(0.3)))


def test_shift_fills_border_by_edge_replication():
    x = jnp.arange(2 * 4 * 3 * 2, dtype=jnp.float32).reshape(2, 4, 3, 2)
    out = np.asarray(queries.shift_images(x, 1, -1))
    xn = np.asarray(x)
    np.testing.assert_array_equal(out[:, 1:, :-1], xn[:, :-1, 1:])
    np.testing.assert_array_equal(out[:, 0, :-1], xn[:, 0, 1:])  # Top row repeats the first row.
    np.testing.assert_array_equal(out[:, 1:, -1], xn[:, :-1, -1])  # Right column repeats the last column.


def test_zero_shift_is_identity_and_bad_shift_raises():
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 5, 5, 1))
    np.testing.assert_array_equal(queries.shift_images(x, 0, 0), x)
    with pytest.raises(ValueError, match="dy"):
        queries.shift_images(x, 5, 0)


def test_make_queries_shape_and_identity_first():
    x = jax.random.normal(jax.random.PRNGKey(1), (3, 5, 4, 2))
    q = queries.make_queries(x, 5)
    assert q.shape == (5, 3, 5, 4, 2)
    np.testing.assert_array_equal(q[0], x)
    np.testing.assert_array_equal(q[1], queries.shift_images(x, *queries.SHIFTS[1]))


def test_query_shifts():
    assert queries.query_shifts(1) == ((0, 0),)
    assert queries.query_shifts(len(queries.SHIFTS)) == queries.SHIFTS
    assert len(set(queries.SHIFTS)) == len(queries.SHIFTS)
    for bad in (0, len(queries.SHIFTS) + 1):
        with pytest.raises(ValueError, match="num_queries"):
            queries.query_shifts(bad)


def _trials(m: int = 4, n: int = 30):
    k_keep, k_noise = jax.random.split(jax.random.PRNGKey(42))
    keep = np.array(jax.random.bernoulli(k_keep, 0.5, (m, n)))  # A writable copy: tests edit it.
    scores = keep + 0.3 * np.asarray(jax.random.normal(k_noise, (m, n)), np.float64)
    return scores, keep


def test_roc_points_thinning_keeps_endpoints_and_the_low_fpr_end():
    scores, keep = _trials(m=20, n=200)
    full_fpr, full_tpr = metrics.log_log_roc_points(scores, keep)
    assert full_fpr.size > 100
    pts = assess.roc_points(scores, keep, max_points=30)
    assert 2 <= len(pts["fpr"]) == len(pts["tpr"]) <= 32
    assert (pts["fpr"][0], pts["tpr"][0]) == (full_fpr[0], full_tpr[0])
    assert (pts["fpr"][-1], pts["tpr"][-1]) == (full_fpr[-1], full_tpr[-1])
    # Log-spaced: more distinct FPRs below 5 % than evenly spaced point indices would keep.
    evenly = full_fpr[np.round(np.linspace(0, full_fpr.size - 1, 30)).astype(int)]
    kept = np.asarray(pts["fpr"])
    assert np.unique(kept[kept < 0.05]).size > np.unique(evenly[evenly < 0.05]).size
    # Every kept point is a point of the full curve.
    full = set(zip(full_fpr.tolist(), full_tpr.tolist()))
    assert all(p in full for p in zip(pts["fpr"], pts["tpr"]))
    assert assess.roc_points(scores, keep, max_points=10_000)["fpr"] == full_fpr.tolist()


def test_roc_figure_writes_png_atomically(tmp_path):
    scores, keep = _trials()
    curves = {"lira": metrics.log_log_roc_points(scores, keep), "loss": metrics.log_log_roc_points(-scores, keep)}
    path = tmp_path / "roc.png"
    plots.roc_figure(str(path), curves, title="test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert os.listdir(tmp_path) == ["roc.png"]
