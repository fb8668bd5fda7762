"""Shokri et al. attack classifier on synthetic prediction vectors (no shadow models are trained here)."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dcjax.privacy import shokri

NUM_CLASSES = 3
# Few steps and a large learning rate keep each fit well under a second on CPU.
FAST = shokri.AttackConfig(hidden=16, steps=300, lr=1e-2)


def _synthetic(key, n: int, informative: bool = True):
    """Logits [n, K], classes [n], member [n] where members get a larger true-class margin (if informative).

    With ``informative=False`` the margin is independent of membership, so nothing can be learned.
    """
    k_cls, k_mem, k_noise, k_margin = jax.random.split(key, 4)
    classes = np.asarray(jax.random.randint(k_cls, (n,), 0, NUM_CLASSES))
    member = np.asarray(jax.random.bernoulli(k_mem, 0.5, (n,)))
    # In the null case "high" is an independent coin, so the margin says nothing about membership.
    high = member if informative else np.asarray(jax.random.bernoulli(k_margin, 0.5, (n,)))
    margin = np.where(high, 5.0, 1.5)
    noise = np.asarray(jax.random.normal(k_noise, (n, NUM_CLASSES)))
    logits = noise + margin[:, None] * np.eye(NUM_CLASSES)[classes]
    return logits, classes, member


def _fit_and_score(config, train_key, test_key, informative=True, n=900):
    logits, classes, member = _synthetic(train_key, n, informative)
    params = shokri.train_attack_models(
        jax.random.key(0), shokri.attack_features(logits, config), classes, member, NUM_CLASSES, config
    )
    logits_t, classes_t, member_t = _synthetic(test_key, n, informative)
    idx = shokri.balanced_indices(jax.random.key(1), member_t)
    scores = shokri.attack_scores(params, shokri.attack_features(logits_t[idx], config), classes_t[idx])
    return shokri.attack_accuracy(scores, member_t[idx]), scores


@pytest.mark.parametrize(
    "field, value", [("hidden", -1), ("steps", 0), ("lr", 0.0), ("features", "loss"), ("weight_decay", -1.0)]
)
def test_config_validation(field, value):
    with pytest.raises(ValueError, match=field):
        shokri.AttackConfig(**{field: value})


def test_features_shapes_and_extremes():
    logits = jnp.array([[1e4, 0.0, -1e4], [0.0, 0.0, 0.0], [3.0, -2.0, 1.0]])
    prob = shokri.attack_features(logits, shokri.AttackConfig(features="prob"))
    assert prob.shape == (3, 3) and prob.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(prob).sum(1), 1.0, rtol=1e-6)
    logprob = shokri.attack_features(logits, shokri.AttackConfig(features="logprob"))
    assert logprob.shape == (3, 3) and logprob.dtype == jnp.float32
    assert np.isfinite(logprob).all()
    assert float(logprob.min()) == -shokri.LOGPROB_FLOOR
    np.testing.assert_allclose(np.exp(logprob[1:]), prob[1:], rtol=1e-5)
    with pytest.raises(ValueError, match="logits"):
        shokri.attack_features(jnp.zeros((4,)), FAST)


@pytest.mark.parametrize("hidden, features", [(16, "prob"), (0, "prob"), (16, "logprob")])
@pytest.mark.slow
def test_learns_confidence_gap(hidden, features):
    config = shokri.AttackConfig(hidden=hidden, features=features, steps=300, lr=1e-2)
    accuracy, scores = _fit_and_score(config, jax.random.key(10), jax.random.key(11))
    assert accuracy > 0.8
    assert scores.dtype == np.float64 and ((scores >= 0) & (scores <= 1)).all()


@pytest.mark.slow
def test_null_stays_at_chance():
    accuracy, _ = _fit_and_score(FAST, jax.random.key(20), jax.random.key(21), informative=False)
    assert abs(accuracy - 0.5) < 0.1


def _opposite_rules(key, n: int):
    """2 classes, 2 features: class 0 members have feature 0 high, class 1 members have it low."""
    k_cls, k_mem, k_noise = jax.random.split(key, 3)
    classes = np.asarray(jax.random.randint(k_cls, (n,), 0, 2))
    member = np.asarray(jax.random.bernoulli(k_mem, 0.5, (n,)))
    sign = np.where(member == (classes == 0), 1.0, -1.0)
    x = 0.3 * np.asarray(jax.random.normal(k_noise, (n, 2)), np.float32)
    x[:, 0] += sign
    return x, classes, member


@pytest.mark.parametrize("hidden", [0, 16])
@pytest.mark.slow
def test_per_class_routing(hidden):
    config = shokri.AttackConfig(hidden=hidden, steps=300, lr=1e-2)
    x, classes, member = _opposite_rules(jax.random.key(30), 400)
    params = shokri.train_attack_models(jax.random.key(0), x, classes, member, 2, config)
    chex.assert_tree_shape_prefix(params, (2,))
    x_t, classes_t, member_t = _opposite_rules(jax.random.key(31), 400)
    scores = shokri.attack_scores(params, x_t, classes_t)
    # The sign of the rule flips with the class, so feature 0 alone (pooled) is at chance.
    assert abs(shokri.attack_accuracy(x_t[:, 0], member_t, threshold=0.0) - 0.5) < 0.1
    for c in (0, 1):
        rows = classes_t == c
        assert shokri.attack_accuracy(scores[rows], member_t[rows]) > 0.95


@pytest.mark.slow
def test_unbalanced_class_not_biased():
    # 9x more OUT than IN rows and an uninformative feature: balanced BCE keeps scores near 0.5, not near 0.1.
    n = 1000
    x = np.asarray(jax.random.normal(jax.random.key(40), (n, 2)), np.float32)
    member = np.arange(n) % 10 == 0
    params = shokri.train_attack_models(jax.random.key(0), x, np.zeros(n, int), member, 1, FAST)
    assert abs(np.mean(shokri.attack_scores(params, x, np.zeros(n, int))) - 0.5) < 0.1


@pytest.mark.slow
def test_deterministic_per_key():
    logits, classes, member = _synthetic(jax.random.key(50), 300)
    x = shokri.attack_features(logits, FAST)
    a = shokri.train_attack_models(jax.random.key(7), x, classes, member, NUM_CLASSES, FAST)
    b = shokri.train_attack_models(jax.random.key(7), x, classes, member, NUM_CLASSES, FAST)
    chex.assert_trees_all_equal(a, b)
    c = shokri.train_attack_models(jax.random.key(8), x, classes, member, NUM_CLASSES, FAST)
    assert not np.array_equal(a["net"]["out"]["w"], c["net"]["out"]["w"])


def test_class_without_out_rows_raises():
    x = np.zeros((6, 2), np.float32)
    classes = np.array([0, 0, 0, 1, 1, 1])
    member = np.array([1, 0, 1, 1, 1, 1], bool)
    with pytest.raises(ValueError, match="class 1"):
        shokri.train_attack_models(jax.random.key(0), x, classes, member, 2, FAST)
    # A class with no rows at all has no OUT rows either.
    with pytest.raises(ValueError, match="class 2"):
        shokri.train_attack_models(jax.random.key(0), x, classes, np.array([1, 0] * 3, bool), 3, FAST)
    with pytest.raises(ValueError, match="classes"):
        shokri.train_attack_models(jax.random.key(0), x, classes + 1, member, 2, FAST)


def test_init_attack_params_shapes():
    mlp = shokri.init_attack_params(jax.random.key(0), 5, 8)
    chex.assert_shape([mlp["net"]["hidden"]["w"], mlp["net"]["out"]["w"]], [(5, 8), (8, 1)])
    linear = shokri.init_attack_params(jax.random.key(0), 5, 0)
    assert "hidden" not in linear["net"] and linear["net"]["out"]["w"].shape == (5, 1)


@pytest.mark.parametrize("num_members, n", [(3, 10), (8, 10)])
def test_balanced_indices(num_members, n):
    member = np.zeros(n, bool)
    member[np.asarray(jax.random.permutation(jax.random.key(60), n))[:num_members]] = True
    idx = shokri.balanced_indices(jax.random.key(61), member)
    smaller = min(num_members, n - num_members)
    assert idx.size == 2 * smaller and np.unique(idx).size == idx.size
    assert np.all(np.diff(idx) > 0)
    assert member[idx].sum() == smaller
    np.testing.assert_array_equal(idx, shokri.balanced_indices(jax.random.key(61), member))
    # Every record of the smaller side is always kept.
    side = member if num_members <= n - num_members else ~member
    assert set(np.flatnonzero(side)) <= set(idx)
    with pytest.raises(ValueError, match="member"):
        shokri.balanced_indices(jax.random.key(0), np.ones(4, bool))


def test_balanced_indices_depends_on_key():
    member = np.arange(100) < 10
    draws = {tuple(shokri.balanced_indices(jax.random.key(k), member)) for k in range(5)}
    assert len(draws) > 1


def test_attack_accuracy_hand_computed():
    scores = np.array([0.9, 0.5, 0.49, 0.1, 0.7, 0.2])
    member = np.array([1, 1, 1, 0, 0, 0], bool)
    # Decisions (>= 0.5): M M N N M N -> correct: yes yes no yes no yes = 4 / 6.
    assert shokri.attack_accuracy(scores, member) == pytest.approx(4 / 6)
    # With threshold 0.8: M N N N N N -> correct: yes no no yes yes yes = 4 / 6; at 0.05 all M -> 3 / 6.
    assert shokri.attack_accuracy(scores, member, threshold=0.8) == pytest.approx(4 / 6)
    assert shokri.attack_accuracy(scores, member, threshold=0.05) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="member"):
        shokri.attack_accuracy(scores, member[:5])
