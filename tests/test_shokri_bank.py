"""Shokri from the bank (dcjax.privacy.shokri_bank) on synthetic exports: M = 6 pipelines over N = 200 pool
examples, S = 100 of them Shokri's subsample (``_export``; tests/test_poster.py uses them too)."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from dcjax.privacy import attack_data, attack_run, attacks, masks, shokri, shokri_bank

M, N, S, K = 6, 200, 100, 4
FAST = shokri.AttackConfig(hidden=16, steps=300, lr=1e-2)
KEYS = attack_data.run_keys(0)


def _margins(rng, keep: np.ndarray, kind: str) -> np.ndarray:
    """[M, N] true-class margin of each pipeline on each example, by how membership shows in the outputs."""
    if kind == "members_confident":
        return np.where(keep, 4.0, 1.0)
    if kind == "members_unsure":  # The opposite relation: what classifiers trained on original models misread.
        return np.where(keep, 1.0, 4.0)
    assert kind == "null"  # Confidence is a coin independent of membership.
    return np.where(rng.random(keep.shape) < 0.5, 4.0, 1.0)


def _export(kind: str = "members_confident", seed: int = 0, **config) -> attack_data.AttackData:
    """A bank-mode export of synthetic logits; ``kind`` says how members' logits differ (``_margins``)."""
    rng = np.random.default_rng(seed + 1)
    keep = masks.lira_keep_masks(jax.random.key(7), M, N)
    labels = (np.arange(N) % K).astype(np.int32)
    margin = _margins(rng, keep, kind)
    logits = rng.normal(size=(M, 1, N, K)) + margin[:, None, :, None] * np.eye(K)[labels]
    examples = np.sort(rng.permutation(N)[:S]) if "examples" not in config else config.pop("examples")
    return attack_data.from_logits(
        config={"seed": 0, "attack": dataclasses.asdict(FAST), "recipe": {"kind": "original"}, **config},
        preprocessing={},
        pool_indices={"target": np.arange(N), "attacker": np.zeros(0), "population_test": np.zeros(0)},
        target_logits=logits.astype(np.float32),
        population_logits=np.zeros((M, 1, 0, K), np.float32),
        shadow_logits=np.zeros((0, 1, 0, K), np.float32),
        keep=keep,
        halves=np.zeros((0, 0), bool),
        target_labels=labels,
        attacker_labels=np.zeros(0, np.int32),
        population_labels=np.zeros(0, np.int32),
        canaries=np.zeros(0, np.int64),
        used=keep,
        nearest_distances=np.zeros((0, N)),
        synthetic_example=np.zeros(0, np.float32),
        test_accuracy=np.ones(M),
        seconds=np.ones(M),
        shokri_examples=examples,
    )


def _trials(d: attack_data.AttackData) -> int:
    """Balanced trials over every target: 2 min(#members, #non-members) of the subsample each."""
    member = d.keep[:, d.shokri_examples]
    return int(sum(2 * min(row.sum(), (~row).sum()) for row in member))


def _chance_tolerance(d: attack_data.AttackData) -> float:
    """4 binomial standard deviations of a mean accuracy of 0.5 over ``_trials``."""
    return 4 * 0.5 / np.sqrt(_trials(d))


@pytest.fixture(scope="module")
def informative():
    d = _export()
    return d, shokri_bank.train_classifiers(d, FAST, KEYS)


def test_the_halves_cut_every_class_in_two_by_key():
    labels = np.random.default_rng(0).integers(0, K, S)
    half = shokri_bank.crossfit_halves(jax.random.key(0), labels)
    for c in range(K):
        counts = np.bincount(half[labels == c], minlength=2)
        assert abs(counts[0] - counts[1]) <= 1 and counts.min() >= 1, (c, counts)
    np.testing.assert_array_equal(half, shokri_bank.crossfit_halves(jax.random.key(0), labels))
    assert not np.array_equal(half, shokri_bank.crossfit_halves(jax.random.key(1), labels))


def test_members_more_confident_give_accuracy_above_chance(informative):
    d, params = informative
    accuracy = shokri_bank.accuracy(params, d, FAST, KEYS)
    assert accuracy.shape == (M,)
    assert accuracy.mean() > 0.5 + _chance_tolerance(d), accuracy
    np.testing.assert_array_equal(accuracy, shokri_bank.shokri_accuracy(d, FAST, KEYS))  # Deterministic.


def test_random_membership_gives_chance_accuracy():
    d = _export("null")
    accuracy = shokri_bank.shokri_accuracy(d, FAST, KEYS)
    assert abs(accuracy.mean() - 0.5) <= _chance_tolerance(d), (accuracy, _chance_tolerance(d))


def test_target_m_never_trains_its_own_classifiers_and_each_half_trains_on_itself_only(informative):
    """Leave one out: changing pipeline 0's logits leaves target 0's classifiers as they were (and moves the
    others'); cross-fitted: changing the other pipelines' logits on half 1 leaves every half-0 classifier."""
    d, params = informative
    logits = d.shokri_target_logits.copy()
    logits[0] += 3.0
    moved = shokri_bank.train_classifiers(dataclasses.replace(d, shokri_target_logits=logits), FAST, KEYS)
    leaves = lambda tree: jax.tree_util.tree_leaves(tree)  # noqa: E731
    for a, b in zip(leaves(params[0]), leaves(moved[0])):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(leaves(params[1]), leaves(moved[1])))
    labels = d.target_labels[d.shokri_examples]
    half = shokri_bank.crossfit_halves(jax.random.fold_in(KEYS["shokri_sample"], 1), labels)
    logits = d.shokri_target_logits.copy()
    logits[:, half == 1] = 0.0
    moved = shokri_bank.train_classifiers(dataclasses.replace(d, shokri_target_logits=logits), FAST, KEYS)
    for m in range(M):
        for a, b in zip(leaves(params[m][0]), leaves(moved[m][0])):
            np.testing.assert_array_equal(a, b)


@pytest.mark.slow  # Trains two sets of attack classifiers (~4 s).
def test_cross_fitting_keeps_an_example_s_other_memberships_out_of_its_own_score():
    """Each example IN for exactly M/2 pipelines: when target m has it IN, the others have it IN M/2 - 1 times
    and OUT M/2 times. A classifier that trained on that example's rows (its outputs the same for every
    pipeline, whatever the membership) learns "mostly OUT" and calls target m's members non-members: far
    below chance. Cross-fitted, it never scores an example it trained on: chance."""
    d = _export("null")
    rng = np.random.default_rng(3)
    per_example = 3 * rng.normal(size=(S, K))  # Identifies the example; says nothing of membership.
    logits = (per_example + 0.1 * rng.normal(size=(M, S, K))).astype(np.float32)
    d = dataclasses.replace(d, shokri_target_logits=logits)
    config = shokri.AttackConfig(hidden=32, steps=400, lr=3e-2)  # Capacity to memorise 100 examples.
    tolerance = _chance_tolerance(d)
    assert abs(shokri_bank.shokri_accuracy(d, config, KEYS).mean() - 0.5) <= tolerance
    features = np.asarray(shokri.attack_features(logits.reshape(-1, K), config)).reshape(M, S, K)
    labels, member = d.target_labels[d.shokri_examples], d.keep[:, d.shokri_examples]
    leaked = []
    for m in range(M):  # The same classifiers without cross-fitting: trained on every subsample example.
        others = np.arange(M) != m
        params = shokri.train_attack_models(
            KEYS["attack"], features[others].reshape(-1, K), np.tile(labels, M - 1), member[others].ravel(), K, config
        )
        idx = shokri.balanced_indices(jax.random.fold_in(KEYS["balance"], m), member[m])
        leaked.append(shokri.attack_accuracy(shokri.attack_scores(params, features[m], labels)[idx], member[m, idx]))
    assert np.mean(leaked) < 0.5 - tolerance, leaked


def test_an_export_with_shadows_has_no_bank_inputs():
    d = dataclasses.replace(_export(), shokri_examples=np.zeros(0, np.int32))
    with pytest.raises(ValueError, match="shokri_examples"):
        shokri_bank.train_classifiers(d, FAST, KEYS)


def test_evaluate_export_reports_the_bank_accuracy_and_no_shokri_score(informative, tmp_path):
    d, params = informative
    path = str(tmp_path / attack_data.EXPORT)
    attack_data.save(path, d)
    loaded = attack_data.load(path)
    assert loaded.shokri_from_bank and "shokri" not in attacks.attack_names(loaded)
    config = dict(d.config, num_resamples=5, rmia={})
    scores, results = attack_run.evaluate_export(dataclasses.replace(loaded, config=config))
    assert "shokri" not in scores and "loss" in scores
    summary = results["shokri_accuracy"]
    np.testing.assert_array_equal(summary["per_target"], shokri_bank.accuracy(params, d, FAST, KEYS))
    assert summary["mode"] == f"bank, leave-one-out, {S} examples, cross-fitted"
    assert results["utility"]["shadow_test_accuracy_mean"] is None
