"""RMIA scores on synthetic probabilities (pure math, no models): brute force, ties, signal / no signal, errors."""

import dataclasses

import jax
import numpy as np
import pytest

from dcjax.privacy import masks, metrics, rmia


def _normal(seed: int, shape) -> np.ndarray:
    """Standard normals from ``jax.random.key(seed)``: one fixed-size draw, sliced, so jax compiles it only once."""
    pool = np.asarray(jax.random.normal(jax.random.key(seed), (1 << 15,)), np.float64)
    return pool[: int(np.prod(shape))].reshape(shape)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _brute_force(tx, tz, rx, rz, rk, config):
    """The paper's definition, literally: a double loop over (x, z) with LR = (px / Pr(x)) / (pz / Pr(z))."""
    num_refs, num_x = rx.shape
    scores = np.zeros(num_x)
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
        scores[i] = dominated / tz.shape[0]
    return scores


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
    config = rmia.RMIAConfig(a=a, gamma=gamma, online=online)
    for seed in (0, 10):
        args = _small_inputs(seed)
        got = rmia.rmia_scores(*args, config)
        assert got.shape == (9,) and got.dtype == np.float64
        np.testing.assert_array_equal(got, _brute_force(*args, config))
    # Scores are not all equal: the test would catch a constant output.
    assert np.unique(got).size > 2


@pytest.mark.parametrize("online", [True, False])
def test_ties_count_as_dominated(online):
    # Every reference has probability 0.3 and a = 1 (0.5 * (2 * 0.3 + 0) = 0.3 exactly), so Pr(x) = Pr(z) = 0.3 in
    # both modes and LR = (0.5 / 0.3) / (0.25 / 0.3) = 2 exactly: LR >= gamma = 2 holds, LR > 2 would not.
    refs = np.full((4, 3), 0.3)
    keep = np.zeros((4, 3), bool)
    config = rmia.RMIAConfig(a=1.0, gamma=2.0, online=online)
    got = rmia.rmia_scores(np.full(3, 0.5), np.full(5, 0.25), refs, np.full((4, 5), 0.3), keep, config)
    np.testing.assert_array_equal(got, 1.0)
    stricter = dataclasses.replace(config, gamma=2.0 * (1 + 1e-12))
    got = rmia.rmia_scores(np.full(3, 0.5), np.full(5, 0.25), refs, np.full((4, 5), 0.3), keep, stricter)
    np.testing.assert_array_equal(got, 0.0)


def test_hand_computed_marginals_and_score():
    config = rmia.RMIAConfig(a=0.5, gamma=1.0, online=False)
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
    assert scores.shape == (16, 200) and np.all((scores >= 0) & (scores <= 1))
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
