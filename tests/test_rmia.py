"""RMIA scores on synthetic probabilities (pure math, no models): brute force, ties, signal / no signal, errors."""

import dataclasses
import json

import jax
import numpy as np
import pytest

from dcjax import checkpoint
from dcjax.privacy import masks, metrics, rmia


def _normal(seed: int, shape) -> np.ndarray:
    """Standard normals from ``jax.random.key(seed)``: one fixed-size draw, sliced, so jax compiles it only once."""
    pool = np.asarray(jax.random.normal(jax.random.key(seed), (1 << 15,)), np.float64)
    return pool[: int(np.prod(shape))].reshape(shape)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _brute_force_keys(tx, tz, rx, rz, rk, config):
    """The paper's definition, literally: a double loop over (x, z) with LR = (px / Pr(x)) / (pz / Pr(z)).

    Returns one (dominated count, ratio_x = px / Pr(x)) pair per example: the lexicographic key of the tie-broken
    score (count first, the likelihood ratio of x among equal counts).
    """
    num_refs, num_x = rx.shape
    keys = []
    for i in range(num_x):
        ins = [rx[r, i] for r in range(num_refs) if rk[r, i]]
        outs = [rx[r, i] for r in range(num_refs) if not rk[r, i]]
        if config.online:
            pr_x = 0.5 * (np.mean(ins) + np.mean(outs)) if ins and outs else np.mean(ins or outs)
        else:
            mean_out = np.mean(outs) if outs else np.mean(rz)
            pr_x = 0.5 * ((1 + config.a) * mean_out + (1 - config.a))
        dominated = 0
        for j in range(tz.shape[0]):
            pr_z = 0.5 * ((1 + config.a) * np.mean(rz[:, j]) + (1 - config.a))
            dominated += (tx[i] / pr_x) / (tz[j] / pr_z) >= config.gamma
        keys.append((int(dominated), float(tx[i] / pr_x)))
    return keys


def _brute_force(tx, tz, rx, rz, rk, config):
    """The paper's score: the fraction of population samples each example dominates, [N]."""
    return np.array([count for count, _ in _brute_force_keys(tx, tz, rx, rz, rk, config)]) / tz.shape[0]


def _brute_force_leave_one_out(px, pz, keep, config):
    """[(count, ratio_x)] for every trial (target m, example i), row-major: each model the target in turn."""
    keys = []
    for m in range(px.shape[0]):
        others = [r for r in range(px.shape[0]) if r != m]
        keys += _brute_force_keys(px[m], pz[m], px[others], pz[others], keep[others], config)
    return keys


def _dense_rank(keys) -> np.ndarray:
    """Rank of each key among the distinct keys, sorted lexicographically (equal keys, equal ranks)."""
    distinct = sorted(set(keys))
    return np.array([distinct.index(k) for k in keys], np.float64)


def _assert_same_order(scores, ranks):
    """Every pair of trials is ordered (or tied) by ``scores`` exactly as by ``ranks``: the same ROC at every FPR."""
    s, r = np.ravel(scores), np.ravel(ranks)
    np.testing.assert_array_equal(np.sign(s[:, None] - s[None, :]), np.sign(r[:, None] - r[None, :]))


def _small_inputs(seed: int, num_refs: int = 6, num_x: int = 9, num_z: int = 13):
    g = _normal(seed, (num_refs + 1, num_x + num_z))
    p = _sigmoid(2 * g + _normal(seed + 1, (num_x + num_z,)))
    keep = masks.lira_keep_masks(jax.random.key(seed), num_refs, num_x)
    keep[:, 0] = True  # example 0: no OUT reference (online uses the IN mean, offline the population mean)
    keep[:, 1] = False  # example 1: no IN reference
    return p[0, :num_x], p[0, num_x:], p[1:, :num_x], p[1:, num_x:], keep


@pytest.mark.parametrize("online", [True, False])
@pytest.mark.parametrize("a, gamma", [(0.3, 1.0), (0.0, 0.5), (1.0, 2.0), (0.7, 1.3)])
def test_matches_brute_force(online, a, gamma):
    config = rmia.RMIAConfig(a=a, gamma=gamma, online=online, tie_break=False)
    for seed in (0, 10):
        args = _small_inputs(seed)
        got = rmia.rmia_scores(*args, config)
        assert got.shape == (9,) and got.dtype == np.float64
        np.testing.assert_array_equal(got, _brute_force(*args, config))
        # Tie-broken: within half a step above the paper's fraction, and ordered as (count, ratio_x).
        tied = rmia.rmia_scores(*args, dataclasses.replace(config, tie_break=True))
        keys = _brute_force_keys(*args, config)
        count = np.array([c for c, _ in keys])
        assert np.all((count / 13 <= tied) & (tied <= (count + 0.5) / 13))
        _assert_same_order(tied, _dense_rank(keys))
    # Scores are not all equal: the test would catch a constant output.
    assert np.unique(got).size > 2


@pytest.mark.parametrize("online", [True, False])
def test_ties_count_as_dominated(online):
    # Every reference has probability 0.3 and a = 1 (0.5 * (2 * 0.3 + 0) = 0.3 exactly), so Pr(x) = Pr(z) = 0.3 in
    # both modes and LR = (0.5 / 0.3) / (0.25 / 0.3) = 2 exactly: LR >= gamma = 2 holds, LR > 2 would not.
    refs = np.full((4, 3), 0.3)
    keep = np.zeros((4, 3), bool)
    config = rmia.RMIAConfig(a=1.0, gamma=2.0, online=online, tie_break=False)
    got = rmia.rmia_scores(np.full(3, 0.5), np.full(5, 0.25), refs, np.full((4, 5), 0.3), keep, config)
    np.testing.assert_array_equal(got, 1.0)
    # Tie-broken: all 5 dominated, t = 0.5 * r / (1 + r) with r = 0.5 / 0.3 = 5 / 3, so t = 5 / 16.
    tied = dataclasses.replace(config, tie_break=True)
    got = rmia.rmia_scores(np.full(3, 0.5), np.full(5, 0.25), refs, np.full((4, 5), 0.3), keep, tied)
    np.testing.assert_allclose(got, (5 + 5 / 16) / 5, rtol=1e-15)
    stricter = dataclasses.replace(config, gamma=2.0 * (1 + 1e-12))
    got = rmia.rmia_scores(np.full(3, 0.5), np.full(5, 0.25), refs, np.full((4, 5), 0.3), keep, stricter)
    np.testing.assert_array_equal(got, 0.0)


def test_hand_computed_marginals_and_score():
    config = rmia.RMIAConfig(a=0.5, gamma=1.0, online=False, tie_break=False)
    ref_px = np.array([[0.2, 0.9], [0.4, 0.1], [0.6, 0.7]])
    keep = np.array([[False, True], [False, False], [True, False]])
    # Offline: OUT means 0.3 and 0.4 -> 0.5 * (1.5 * mean + 0.5).
    np.testing.assert_allclose(rmia.marginal_x(ref_px, keep, config), [0.475, 0.55], rtol=1e-15)
    # Online: 0.5 * (IN mean + OUT mean) = 0.5 * (0.6 + 0.3), 0.5 * (0.9 + 0.4).
    online = dataclasses.replace(config, online=True)
    np.testing.assert_allclose(rmia.marginal_x(ref_px, keep, online), [0.45, 0.65], rtol=1e-15)
    ref_pz = np.array([[0.1, 0.5, 0.2], [0.3, 0.5, 0.4], [0.2, 0.5, 0.3]])
    pr_z = rmia.marginal_z(ref_pz, config)
    np.testing.assert_allclose(pr_z, [0.4, 0.625, 0.475], rtol=1e-15)
    # Target: ratio_x = 0.5; ratio_z = 0.25, 1.0, 0.45 -> LR = 2, 0.5, 1.11 -> 2 of 3 dominated.
    target_px, target_pz = np.array([0.475, 0.55]) / 2, np.array([0.25, 1.0, 0.45]) * pr_z
    got = rmia.rmia_scores(target_px, target_pz, ref_px, ref_pz, keep, config)
    np.testing.assert_array_equal(got, [2 / 3, 2 / 3])
    # Tie-broken: t = 0.5 * 0.5 / 1.5 = 1 / 6 for both (same ratio_x, so still tied).
    got = rmia.rmia_scores(target_px, target_pz, ref_px, ref_pz, keep, dataclasses.replace(config, tie_break=True))
    np.testing.assert_allclose(got, [(2 + 1 / 6) / 3] * 2, rtol=1e-15)
    # gamma = 2.5: every LR is below it, nothing is dominated; gamma = 0.4: everything is.
    for gamma, expected in ((2.5, 0.0), (0.4, 1.0)):
        got = rmia.rmia_scores(target_px, target_pz, ref_px, ref_pz, keep, dataclasses.replace(config, gamma=gamma))
        np.testing.assert_array_equal(got, [expected, expected])


def _population_study(seed: int, signal: float, num_models: int = 16, num_x: int = 200, num_z: int = 100):
    """px [M, N], pz [M, P], keep [M, N]: logit = difficulty + noise (+ signal for members)."""
    keep = masks.lira_keep_masks(jax.random.key(seed), num_models, num_x)
    difficulty = 2 * _normal(seed + 1, (num_x + num_z,)) + 1
    logit = difficulty + 0.7 * _normal(seed + 2, (num_models, num_x + num_z))
    logit[:, :num_x] += signal * keep
    p = _sigmoid(logit)
    return p[:, :num_x], p[:, num_x:], keep


@pytest.mark.parametrize("online", [True, False])
def test_chance_without_signal_and_power_with_signal(online):
    config = rmia.RMIAConfig(online=online)
    px, pz, keep = _population_study(0, signal=0.0)
    scores = rmia.leave_one_out_rmia(px, pz, keep, config)
    assert scores.shape == (16, 200) and np.all((scores >= 0) & (scores <= 1 + 0.5 / 100))
    assert metrics.auc(scores, keep) == pytest.approx(0.5, abs=0.05)
    px, pz, keep = _population_study(1, signal=1.5)
    assert metrics.auc(rmia.leave_one_out_rmia(px, pz, keep, config), keep) > 0.75


def test_leave_one_out_uses_the_other_models():
    px, pz, keep = _population_study(2, signal=1.0, num_models=6, num_x=20, num_z=15)
    config = rmia.RMIAConfig()
    scores = rmia.leave_one_out_rmia(px, pz, keep, config)
    for m in (0, 3):
        others = np.arange(6) != m
        np.testing.assert_array_equal(
            scores[m], rmia.rmia_scores(px[m], pz[m], px[others], pz[others], keep[others], config)
        )
    assert not np.array_equal(scores[0], rmia.rmia_scores(px[0], pz[0], px, pz, keep, config))


def test_true_class_probability():
    logits = 3 * _normal(3, (2, 5, 3, 4))  # [M, N, Q, K]
    labels = np.arange(5) % 4
    z = logits - logits.max(-1, keepdims=True)
    softmax = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    expected = np.take_along_axis(softmax, labels[None, :, None, None], -1)[..., 0]
    np.testing.assert_allclose(rmia.true_class_probability(logits, labels, example_axis=1), expected, rtol=1e-12)
    extreme = rmia.true_class_probability(np.array([[1e4, -1e4], [-1e4, 1e4]]), np.array([0, 0]))
    np.testing.assert_array_equal(extreme, [1.0, 0.0])


def test_validation_errors():
    for kwargs in ({"a": -0.1}, {"a": 1.5}, {"gamma": 0.0}, {"gamma": -1.0}, {"gamma": float("nan")}):
        with pytest.raises(ValueError, match="a must|gamma must"):
            rmia.RMIAConfig(**kwargs)
    with pytest.raises(dataclasses.FrozenInstanceError):
        rmia.RMIAConfig().gamma = 2.0
    tx, tz, rx, rz, keep = _small_inputs(4)
    config = rmia.RMIAConfig()
    with pytest.raises(ValueError, match="probabilities"):
        rmia.rmia_scores(tx + 1.0, tz, rx, rz, keep, config)
    with pytest.raises(ValueError, match="probabilities"):
        rmia.rmia_scores(tx, tz, np.where(keep, np.nan, rx), rz, keep, config)
    with pytest.raises(ValueError, match="shapes do not match"):
        rmia.rmia_scores(tx[:-1], tz, rx, rz, keep, config)
    with pytest.raises(ValueError, match="ref_keep shape"):
        rmia.rmia_scores(tx, tz, rx, rz, keep[:, :-1], config)
    with pytest.raises(ValueError, match="no population_mean"):
        rmia.marginal_x(rx, keep, dataclasses.replace(config, online=False))
    with pytest.raises(ValueError, match=">= 2 models"):
        rmia.leave_one_out_rmia(rx[:1], rz[:1], keep[:1], config)


def _toy_export(seed: int = 5, num_models: int = 6, num_x: int = 10, num_z: int = 7):
    """px [M, N], pz [M, P], keep [M, N] of a toy export whose members often dominate every population sample.

    Strong membership signal (+4 logits when IN) against population samples no model trained on: an IN example's
    ratio_x is near 1 / Pr(x) ~ 2 while every ratio_z stays near 1, so many trials tie at the top fraction. Example
    1 duplicates example 0 (same probabilities, same keep column), so some trials tie in ratio_x as well.
    """
    keep = masks.lira_keep_masks(jax.random.key(seed), num_models, num_x)
    keep[:, 1] = keep[:, 0]
    difficulty = _normal(seed + 1, (num_x + num_z,)) - 1
    logit = difficulty + 0.5 * _normal(seed + 2, (num_models, num_x + num_z))
    logit[:, :num_x] += 4.0 * keep
    p = _sigmoid(logit)
    p[:, 1] = p[:, 0]
    return p[:, :num_x], p[:, num_x:], keep


@pytest.mark.parametrize("online", [True, False])
def test_leave_one_out_orders_trials_as_brute_force(online):
    px, pz, keep = _toy_export()
    config = rmia.RMIAConfig(online=online)
    keys = _brute_force_leave_one_out(px, pz, keep, config)
    ranks = _dense_rank(keys).reshape(keep.shape)
    # The toy must exercise the tie-break: several trials dominate all P = 7 samples, with different ratios.
    top = {ratio for count, ratio in keys if count == 7}
    assert len(top) >= 5, len(top)
    scores = rmia.leave_one_out_rmia(px, pz, keep, config)
    _assert_same_order(scores, ranks)
    # Hence the same ROC point for point (and every TPR at every FPR) as the brute-force ranking.
    for got, want in zip(metrics.roc_curve(scores, keep)[:2], metrics.roc_curve(ranks, keep)[:2]):
        np.testing.assert_array_equal(got, want)
    # Without the tie-break the ranking is by count alone, the paper's fraction: it ties what the ratio separates.
    counts = np.array([c for c, _ in keys], np.float64).reshape(keep.shape)
    untied = rmia.leave_one_out_rmia(px, pz, keep, dataclasses.replace(config, tie_break=False))
    np.testing.assert_array_equal(untied, counts / 7)


@pytest.mark.parametrize("online", [True, False])
def test_tie_break_resolves_low_fpr(online):
    # P = 20 population samples against a strong signal: most members (and ~100 non-members) dominate all 20, so the
    # paper's fraction puts them in one tie at the top and no threshold reaches 0.1 % FPR (1600 non-member trials,
    # floor 1 / 1600) with any member above it. The likelihood ratio ranks that tie and recovers the tail.
    px, pz, keep = _population_study(3, signal=2.0, num_z=20)
    config = rmia.RMIAConfig(online=online)
    untied = rmia.leave_one_out_rmia(px, pz, keep, dataclasses.replace(config, tie_break=False))
    top = untied == untied.max()
    assert (top & keep).sum() > 500 and (top & ~keep).sum() > 0.001 * (~keep).sum()
    assert metrics.tpr_at_fpr(untied, keep, 0.001) == 0.0
    tied = rmia.leave_one_out_rmia(px, pz, keep, config)
    assert metrics.tpr_at_fpr(tied, keep, 0.001) > 0.05
    # The primary key is unchanged: same fraction band, so the tie-break only reorders within a count.
    np.testing.assert_array_equal(np.floor(tied * 20 + 1e-9), untied * 20)


@pytest.mark.parametrize("num_z", [1, 2, 3, 7, 1000, 4097, 2**20 + 1, 2**40 + 3])
def test_tie_break_never_reorders_fractions(num_z):
    # Worst cases after rounding: count k with the largest ratio (t rounds to 1/2) against count k + 1 with ratio 0
    # (t = 0). Every band edge for small P; for large P the lowest, highest and some middle counts.
    k = np.arange(num_z) if num_z <= 5000 else np.r_[0:100, num_z // 2 - 50 : num_z // 2 + 50, num_z - 100 : num_z]
    huge, zero = np.full(k.shape, 1 / np.finfo(np.float64).tiny), np.zeros(k.shape)
    high = rmia.tie_broken_score(k, huge, num_z)
    low_next = rmia.tie_broken_score(k + 1, zero, num_z)
    assert np.all(high < low_next)
    np.testing.assert_array_equal(low_next, (k + 1) / num_z)  # ratio 0: exactly the paper's fraction
    # Within a count, larger ratios never score lower, over 600 orders of magnitude and at the extremes.
    ratios = np.r_[0.0, np.logspace(-300, 300, 20001), huge[0]]
    for count in (0, num_z // 2, num_z):
        assert np.all(np.diff(rmia.tie_broken_score(np.full(ratios.shape, count), ratios, num_z)) >= 0)


def test_config_records_tie_break_and_reads_old_configs():
    # A config recorded before tie_break existed (no "rmia" key, or one without tie_break) reads back tie-broken.
    assert rmia.RMIAConfig(**{}).tie_break is True
    assert rmia.RMIAConfig(**{"a": 0.3, "gamma": 1.0, "online": True}).tie_break is True
    # Each run's config.json records the choice (AttackRunConfig.rmia is serialised with dataclasses.asdict).
    assert json.loads(checkpoint.to_json(dataclasses.asdict(rmia.RMIAConfig(tie_break=False)))) == {
        "a": 0.3,
        "gamma": 1.0,
        "online": True,
        "tie_break": False,
    }
    with pytest.raises(ValueError, match="tie_break must be a bool"):
        rmia.RMIAConfig(tie_break="false")
