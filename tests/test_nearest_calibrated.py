"""Nearest-synthetic distances calibrated against the shadows' released sets (LiRA on -log distance)."""

import jax
import numpy as np
import pytest

from dcjax.privacy import masks, metrics, nearest

SHAPE = (4, 4, 3)  # H, W, C


def _normal(seed: int, shape) -> np.ndarray:
    """float32 standard normals from ``jax.random.key(seed)``: one fixed-size draw, sliced (jax compiles once)."""
    pool = np.asarray(jax.random.normal(jax.random.key(seed), (1 << 16,)))
    return pool[: int(np.prod(shape))].reshape(shape).copy()


def _planted_study(seed: int, num_models: int = 8, num_planted: int = 60, num_duplicates: int = 30):
    """(synthetic sets [M, S, H, W, C], pool [N, H, W, C], keep [M, N]).

    Pool examples [0, num_planted) are copied (plus noise) into the set of every model that has them IN; a
    non-member slot holds a random image. The last ``num_duplicates`` examples have a near-duplicate in EVERY set,
    member or not (think class prototypes), so the raw distance calls them members everywhere.
    """
    n = num_planted + num_duplicates
    pool = _normal(seed, (n,) + SHAPE)
    keep = masks.lira_keep_masks(jax.random.key(seed + 1), num_models, n)
    noise = _normal(seed + 2, (num_models, n) + SHAPE)
    filler = _normal(seed + 3, (num_models, num_planted) + SHAPE)
    planted = np.where(
        keep[:, :num_planted, None, None, None], pool[:num_planted] + 0.3 * noise[:, :num_planted], filler
    )
    duplicates = pool[num_planted:] + 0.05 * noise[:, num_planted:]
    return np.concatenate([planted, duplicates], axis=1), pool, keep


def test_distance_matrix_matches_per_set_distances():
    sets, pool, _ = _planted_study(0, num_models=2, num_planted=6, num_duplicates=3)
    got = nearest.nearest_distance_matrix(sets, pool, batch_size=4)
    assert got.shape == (2, 9) and got.dtype == np.float64
    for m in range(2):
        np.testing.assert_array_equal(got[m], nearest.nearest_distances(sets[m], pool, batch_size=4))
    np.testing.assert_array_equal(-got, nearest.nearest_distance_scores(sets, pool, batch_size=4))
    with pytest.raises(ValueError, match="synthetic_sets"):
        nearest.nearest_distance_matrix(sets[0], pool)


@pytest.mark.slow
def test_calibration_detects_planted_images_despite_near_duplicates():
    sets, pool, keep = _planted_study(1)
    distances = nearest.nearest_distance_matrix(sets, pool)
    raw = metrics.auc(-distances, keep)
    scores = nearest.calibrated_nearest_scores(distances, keep)
    assert sorted(scores) == ["nearest_synthetic_lira", "nearest_synthetic_offline"]
    for name, s in scores.items():
        assert s.shape == (8, 90) and s.dtype == np.float64 and np.all(np.isfinite(s))
        assert metrics.auc(s[:, :60], keep[:, :60]) > 0.95, name  # the planted examples themselves
        # The near-duplicates look the same to members and non-members: calibrated, they carry no signal.
        assert metrics.auc(s[:, 60:], keep[:, 60:]) == pytest.approx(0.5, abs=0.15), name
        # Every planted member is found before any non-member is flagged (raw: the near-duplicates come first).
        assert metrics.tpr_at_fpr(s, keep, 0.01) > 0.5, name
    # Online also pushes planted non-members down; offline only tests "closer than the shadows' OUT sets", so its
    # planted non-members look like the near-duplicates (AUC about 2/3 + 1/6 with these group sizes).
    assert metrics.auc(scores["nearest_synthetic_lira"], keep) > 0.9
    assert metrics.auc(scores["nearest_synthetic_offline"], keep) > raw + 0.05
    # The raw score ranks every near-duplicate, member or not, above the planted members.
    assert raw < 0.78
    assert metrics.tpr_at_fpr(-distances, keep, 0.01) < 0.05


def test_calibrated_scores_chance_without_signal():
    # Synthetic sets independent of membership.
    pool = _normal(2, (150,) + SHAPE)
    sets = _normal(3, (8, 20) + SHAPE)
    keep = masks.lira_keep_masks(jax.random.key(4), 8, 150)
    scores = nearest.calibrated_nearest_scores(nearest.nearest_distance_matrix(sets, pool), keep)
    for name, s in scores.items():
        assert metrics.auc(s, keep) == pytest.approx(0.5, abs=0.05), name


def test_calibrated_scores_scale_invariant_and_finite_at_zero():
    sets, pool, keep = _planted_study(5, num_models=6, num_planted=10, num_duplicates=4)
    distances = nearest.nearest_distance_matrix(sets, pool)
    distances[keep] *= 0.0  # verbatim copies: distance exactly 0
    base = nearest.calibrated_nearest_scores(distances, keep)
    scaled = nearest.calibrated_nearest_scores(7.0 * distances, keep)
    for name in base:
        assert np.all(np.isfinite(base[name]))
        np.testing.assert_allclose(scaled[name], base[name], rtol=1e-9, atol=1e-9)


def test_calibrated_scores_errors():
    keep = masks.lira_keep_masks(jax.random.key(0), 4, 5)
    with pytest.raises(ValueError, match="non-negative"):
        nearest.calibrated_nearest_scores(-np.ones((4, 5)), keep)
    with pytest.raises(ValueError, match="M, N"):
        nearest.calibrated_nearest_scores(np.ones(5), keep[0])
    with pytest.raises(ValueError, match="finite"):
        nearest.calibrated_nearest_scores(np.full((4, 5), np.nan), keep)
    with pytest.raises(ValueError, match="relative_floor"):
        nearest.calibrated_nearest_scores(np.ones((4, 5)), keep, relative_floor=0.0)
    with pytest.raises(ValueError, match="keep shape"):
        nearest.calibrated_nearest_scores(np.ones((4, 5)), keep[:, :4])
