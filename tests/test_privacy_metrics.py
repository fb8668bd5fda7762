"""Membership-inference metrics against brute-force definitions (pure NumPy math, no models)."""

import functools
import json

import jax
import numpy as np
import pytest

from dcjax.privacy import metrics


def _normal(seed: int, n: int) -> np.ndarray:
    """n standard normals from ``jax.random.key(seed)``: one fixed-size draw, sliced, so jax compiles it once."""
    return np.asarray(jax.random.normal(jax.random.key(seed), (1 << 15,)), np.float64)[:n]


def _tied_data(seed: int, n: int = 300):
    """Scores on a coarse grid (many ties), members shifted up a little; about 40% members (labels 0/1 ints)."""
    labels = (_normal(seed + 100, n) < -0.25).astype(int)
    scores = np.round(_normal(seed, n) * 2 + labels) / 2
    return scores, labels


def _brute_points(scores, labels):
    """(fpr, tpr) at +inf and every distinct score, high to low, predicting member when score >= t."""
    thresholds = np.r_[np.inf, np.unique(scores)[::-1]]
    pos, neg = scores[labels == 1], scores[labels == 0]
    tpr = np.array([(pos >= t).mean() for t in thresholds])
    fpr = np.array([(neg >= t).mean() for t in thresholds])
    return fpr, tpr, thresholds


def _brute_auc(scores, labels):
    """Mann-Whitney: P(member > non-member) + P(tie) / 2 over all pairs."""
    diff = scores[labels == 1][:, None] - scores[labels == 0][None, :]
    return float(np.mean((diff > 0) + 0.5 * (diff == 0)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_auc_bacc_tpr_match_brute_force(seed):
    scores, labels = _tied_data(seed)
    assert len(np.unique(scores)) < len(scores) // 3  # the data really has ties
    fpr, tpr, thr = metrics.roc_curve(scores, labels)
    b_fpr, b_tpr, b_thr = _brute_points(scores, labels)
    np.testing.assert_allclose(fpr, b_fpr, atol=1e-12)
    np.testing.assert_allclose(tpr, b_tpr, atol=1e-12)
    np.testing.assert_array_equal(thr, b_thr)
    assert (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert metrics.auc(scores, labels) == pytest.approx(_brute_auc(scores, labels), abs=1e-12)
    assert metrics.balanced_accuracy(scores, labels) == pytest.approx(np.max(1 - (b_fpr + 1 - b_tpr) / 2))
    for target in (0.0, 0.01, 0.05, 0.3, 1.0):
        expected = np.max(b_tpr[b_fpr <= target + 1e-12])
        assert metrics.tpr_at_fpr(scores, labels, target) == pytest.approx(expected)


def test_tpr_at_zero_fpr_is_above_every_nonmember():
    scores = np.array([5.0, 4.0, 4.0, 3.0, 2.0, 1.0])
    labels = np.array([1, 1, 0, 1, 0, 0])
    # Only 5.0 is strictly above every non-member (the member at 4.0 ties a non-member).
    assert metrics.tpr_at_fpr(scores, labels, 0.0) == pytest.approx(1 / 3)
    assert metrics.tpr_at_fpr(scores, labels, 1 / 3) == pytest.approx(1.0)


def test_perfect_separation():
    scores = np.r_[np.arange(10.0) + 100, np.arange(20.0)]
    labels = np.r_[np.ones(10, int), np.zeros(20, int)]
    assert metrics.auc(scores, labels) == 1.0
    assert metrics.tpr_at_fpr(scores, labels, 0.0) == 1.0
    assert metrics.balanced_accuracy(scores, labels) == 1.0
    # Reversed scores: the attack is perfectly wrong.
    assert metrics.auc(-scores, labels) == 0.0


def test_identical_distributions_give_chance():
    n = 20000
    scores = _normal(3, n)
    labels = _normal(103, n) > 0
    assert metrics.auc(scores, labels) == pytest.approx(0.5, abs=0.02)
    assert metrics.balanced_accuracy(scores, labels) < 0.53


def test_all_tied_scores():
    scores = np.zeros(8)
    labels = np.array([0, 1] * 4)
    fpr, tpr, _ = metrics.roc_curve(scores, labels)
    np.testing.assert_array_equal(fpr, [0, 1])
    np.testing.assert_array_equal(tpr, [0, 1])
    assert metrics.auc(scores, labels) == 0.5
    assert metrics.tpr_at_fpr(scores, labels, 0.5) == 0.0


def test_accepts_2d_trials_and_bool_labels():
    scores, labels = _tied_data(4, n=200)
    expected = metrics.auc(scores, labels)
    assert metrics.auc(scores.reshape(10, 20), labels.reshape(10, 20).astype(bool)) == pytest.approx(expected)


def test_fpr_floor():
    assert metrics.fpr_floor(np.array([1, 0, 0, 0, 1])) == pytest.approx(1 / 3)
    assert metrics.fpr_floor(np.zeros(1000, int)) == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="no non-members"):
        metrics.fpr_floor(np.ones(4, int))


def _shifted(seed: int, n: int, shift: float = 1.0):
    labels = np.arange(n) % 2
    scores = _normal(seed, n) + shift * labels
    return scores, labels


def test_bootstrap_ci_contains_estimate_deterministic_and_narrows():
    key = jax.random.key(7)
    small, large = _shifted(0, 100), _shifted(1, 2000)
    for fn in (metrics.auc, metrics.balanced_accuracy):
        low, high = metrics.bootstrap_ci(fn, *small, key)
        assert low <= fn(*small) <= high
        assert (low, high) == metrics.bootstrap_ci(fn, *small, key)
        low_l, high_l = metrics.bootstrap_ci(fn, *large, key)
        assert low_l <= fn(*large) <= high_l
        assert high_l - low_l < (high - low) / 2
    other = metrics.bootstrap_ci(metrics.auc, *small, jax.random.key(8))
    assert other != metrics.bootstrap_ci(metrics.auc, *small, key)
    tpr_fn = functools.partial(metrics.tpr_at_fpr, fpr_target=0.1)
    low, high = metrics.bootstrap_ci(tpr_fn, *large, key, num_resamples=50, level=0.9)
    assert 0.0 <= low <= high <= 1.0


def test_summarize_json_friendly():
    scores, labels = _shifted(2, 1000)
    out = metrics.summarize(scores, labels, jax.random.key(0), num_resamples=50)
    json.dumps(out)  # must not raise
    for name in ("auc", "balanced_accuracy", "tpr_at_0", "tpr_at_0.001", "tpr_at_0.01"):
        assert type(out[name]) is float and type(out[f"{name}_ci_low"]) is float
        assert 0.0 <= out[f"{name}_ci_low"] <= out[f"{name}_ci_high"] <= 1.0
    # Percentile CIs of smooth metrics cover the point estimate (tpr at a tiny FPR is a max, so not always).
    for name in ("auc", "balanced_accuracy"):
        assert out[f"{name}_ci_low"] <= out[name] <= out[f"{name}_ci_high"]
    assert out["auc"] == pytest.approx(metrics.auc(scores, labels))
    assert out["tpr_at_0.01"] == pytest.approx(metrics.tpr_at_fpr(scores, labels, 0.01))
    assert out["num_members"] == 500 and out["num_nonmembers"] == 500
    assert type(out["num_members"]) is int
    assert out["fpr_floor"] == pytest.approx(1 / 500)


def test_log_log_roc_points():
    scores, labels = _shifted(5, 400)
    fpr, tpr = metrics.log_log_roc_points(scores, labels, floor=1e-4)
    assert fpr.min() >= 1e-4 and tpr.min() >= 1e-4
    assert fpr[0] == 1e-4 and fpr[-1] == 1.0 and tpr[-1] == 1.0
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)


@pytest.mark.parametrize("fn", [metrics.auc, metrics.balanced_accuracy, metrics.roc_curve,
                                functools.partial(metrics.tpr_at_fpr, fpr_target=0.01)])
def test_bad_inputs_raise(fn):
    with pytest.raises(ValueError, match="shape"):
        fn(np.zeros(5), np.array([0, 1, 0, 1]))
    with pytest.raises(ValueError, match="labels must be 0"):
        fn(np.zeros(4), np.array([0, 1, 2, 1]))
    with pytest.raises(ValueError, match="no members"):
        fn(np.arange(4.0), np.zeros(4, int))
    with pytest.raises(ValueError, match="no non-members"):
        fn(np.arange(4.0), np.ones(4, int))
    with pytest.raises(ValueError, match="finite"):
        fn(np.array([0.0, np.nan, 1.0, 2.0]), np.array([0, 1, 0, 1]))


def test_bad_parameters_raise():
    scores, labels = _shifted(6, 20)
    with pytest.raises(ValueError, match="fpr_target"):
        metrics.tpr_at_fpr(scores, labels, 1.5)
    with pytest.raises(ValueError, match="level"):
        metrics.bootstrap_ci(metrics.auc, scores, labels, jax.random.key(0), level=1.0)
    with pytest.raises(ValueError, match="num_resamples"):
        metrics.bootstrap_ci(metrics.auc, scores, labels, jax.random.key(0), num_resamples=0)
    with pytest.raises(ValueError, match="no members"):
        metrics.summarize(scores, np.zeros(20, int), jax.random.key(0))
