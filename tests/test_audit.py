"""Empirical DP epsilon lower bounds (dcjax.privacy.audit) against closed forms and simulated attacks."""

import jax
import numpy as np
import pytest
from scipy import stats

from dcjax.privacy import audit


def _trials(seed: int, num_examples: int, shift: float, num_models: int = 8):
    """scores float64 [M, N] = noise + shift * keep, keep bool [M, N] with every example IN for M / 2 models.

    Both come from one fixed-size jax draw (compiled once), sliced; M * N <= 2^15.
    """
    draws = np.asarray(jax.random.normal(jax.random.key(seed), (2, 1 << 15)), np.float64)
    size = num_models * num_examples
    rank = np.argsort(draws[0, :size].reshape(num_models, num_examples), axis=0)
    keep = np.argsort(rank, axis=0) < num_models // 2
    return draws[1, :size].reshape(num_models, num_examples) + shift * keep, keep


def _max_bound(num_pos: int, num_neg: int, alpha: float) -> float:
    """No outcome on these counts can beat 0 errors: log(1 / smallest CP upper bound) of either error rate."""
    return max(-np.log(1 - (alpha / 2) ** (1 / num_neg)), -np.log(1 - (alpha / 2) ** (1 / num_pos)))


def test_clopper_pearson_known_values():
    low, high = audit.clopper_pearson(0, 10, 0.05)
    assert low == 0.0 and high == pytest.approx(1 - 0.025 ** (1 / 10), rel=1e-10)
    low, high = audit.clopper_pearson(10, 10, 0.05)
    assert low == pytest.approx(0.025 ** (1 / 10), rel=1e-10) and high == 1.0
    low, high = audit.clopper_pearson(5, 10, 0.05)  # the textbook (0.1871, 0.8129)
    assert low == pytest.approx(0.187086, abs=1e-6) and high == pytest.approx(0.812914, abs=1e-6)
    # Exactness: each bound leaves probability alpha / 2 in its tail.
    low, high = audit.clopper_pearson(7, 40, 0.1)
    assert stats.binom.cdf(7, 40, high) == pytest.approx(0.05, rel=1e-8)
    assert stats.binom.sf(6, 40, low) == pytest.approx(0.05, rel=1e-8)
    with pytest.raises(ValueError, match="k <= n"):
        audit.clopper_pearson(11, 10, 0.05)
    with pytest.raises(ValueError, match="alpha"):
        audit.clopper_pearson(1, 10, 0.0)


def test_epsilon_lower_bound_closed_form():
    u = 1 - 0.025 ** (1 / 500)  # CP upper bound of both error rates at 0 / 500
    expected = np.log((1 - 1e-5 - u) / u)
    assert audit.epsilon_lower_bound(500, 0, 0, 500, delta=1e-5) == pytest.approx(expected, rel=1e-12)
    assert expected > 4.8
    # 0 false positives out of 500 but 250 / 500 misses: only the first inequality gives a positive term.
    fnr_hi = audit.clopper_pearson(250, 500, 0.05)[1]
    assert audit.epsilon_lower_bound(250, 250, 0, 500, delta=1e-5) == pytest.approx(
        np.log((1 - 1e-5 - fnr_hi) / u), rel=1e-12
    )
    assert audit.epsilon_lower_bound(250, 250, 250, 250, delta=1e-5) == 0.0  # chance
    assert audit.epsilon_lower_bound(0, 500, 500, 0, delta=1e-5) == 0.0  # always wrong: both numerators < 0
    with pytest.raises(ValueError, match="member"):
        audit.epsilon_lower_bound(0, 0, 3, 4, delta=1e-5)


def test_bound_never_exceeds_the_maximum_for_the_counts():
    for tp in range(0, 21, 4):
        for fp in range(0, 31, 5):
            bound = audit.epsilon_lower_bound(tp, 20 - tp, fp, 30 - fp, delta=1e-5)
            assert 0.0 <= bound <= _max_bound(20, 30, 0.05) + 1e-12
    assert audit.epsilon_lower_bound(20, 0, 0, 30, delta=0.0) == pytest.approx(
        np.log((1 - (1 - 0.025 ** (1 / 20))) / (1 - 0.025 ** (1 / 30)))
    )


def test_perfect_attack_on_many_examples():
    scores, keep = _trials(0, 1000, shift=100.0)
    out = audit.audit_epsilon(scores, keep, np.arange(1000), jax.random.key(0))
    assert out["num_trials"] == 500 and out["tp"] + out["fn"] + out["fp"] + out["tn"] == 500
    # The threshold sits just above a selection-half non-member score, so an evaluated one may pass it.
    assert out["fn"] == 0 and out["fp"] <= 2
    assert 3.0 < out["epsilon_lower_bound"] <= _max_bound(out["tp"] + out["fn"], out["fp"] + out["tn"], 0.05)
    assert out["delta"] == 1e-5 and out["alpha"] == 0.05 and out["selected_fpr"] in (0.1, 0.05, 0.01, 0.001)
    few = audit.audit_epsilon(scores, keep, np.arange(40), jax.random.key(0))
    assert few["num_trials"] == 20 and few["epsilon_lower_bound"] < out["epsilon_lower_bound"]
    config = audit.AuditConfig(delta=0.0, alpha=0.05)
    given = audit.audit_epsilon(scores, keep, np.arange(1000), jax.random.key(0), threshold=50.0, config=config)
    assert given["num_trials"] == 1000 and given["threshold"] == 50.0 and given["selected_fpr"] is None
    assert given["fn"] == 0 and given["fp"] == 0 and 400 < given["tp"] < 600
    assert given["epsilon_lower_bound"] > out["epsilon_lower_bound"]  # twice the evaluated trials


def test_one_trial_per_example_even_when_each_example_has_many():
    scores, keep = _trials(1, 300, shift=100.0, num_models=64)
    out = audit.audit_epsilon(scores, keep, np.arange(300), jax.random.key(1), threshold=50.0)
    assert out["num_trials"] == 300  # not 64 * 300 pooled trials
    assert out["epsilon_lower_bound"] <= _max_bound(out["tp"] + out["fn"], out["fp"] + out["tn"], 0.05)


def test_no_signal_gives_zero_with_high_probability():
    scores, keep = _trials(2, 400, shift=0.0)
    bounds = [
        audit.audit_epsilon(scores, keep, np.arange(400), jax.random.key(i))["epsilon_lower_bound"] for i in range(20)
    ]
    assert sum(b > 0 for b in bounds) <= 2  # each is positive with probability <= alpha = 0.05
    assert all(b >= 0 for b in bounds)


def test_deterministic_in_the_key():
    scores, keep = _trials(3, 200, shift=1.5)
    cols = np.arange(200)
    out = audit.audit_epsilon(scores, keep, cols, jax.random.key(5))
    assert out == audit.audit_epsilon(scores, keep, cols, jax.random.key(5))
    others = [audit.audit_epsilon(scores, keep, cols, jax.random.key(i)) for i in range(6, 9)]
    assert any((o["tp"], o["fp"], o["threshold"]) != (out["tp"], out["fp"], out["threshold"]) for o in others)
    assert out["epsilon_lower_bound"] > 0  # a real signal on 100 evaluated trials


def test_bad_inputs_raise():
    scores, keep = _trials(4, 20, shift=1.0)
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="columns"):
        audit.audit_epsilon(scores, keep, np.array([1, 1, 2]), key)
    with pytest.raises(ValueError, match="columns"):
        audit.audit_epsilon(scores, keep, np.array([0, 25]), key)
    with pytest.raises(ValueError, match="keep shape"):
        audit.audit_epsilon(scores, keep[:, :5], np.arange(5), key)
    nan_scores = np.where(keep, np.nan, scores)
    with pytest.raises(ValueError, match="finite"):
        audit.audit_epsilon(nan_scores, keep, np.arange(20), key)
