"""Shokri from the bank: the attack classifiers of target m learn from the OTHER pipelines of its row.

At the poster's scale there is no attacker pool (num_shadow = attacker_pool = 0): every target-pool example is
some pipeline's training data. Shokri's shadows are then the other M - 1 pipelines (leave one out), trained the
target's way, whose membership of each pool example the attacker knows (their keep masks). Their query-0
prediction vectors on a key-drawn subsample of S pool examples (``pools.shokri_examples``, stored in the export)
are the attack-training rows, labelled by keep.

Cross-fitting: the subsample is cut into two halves (by key, stratified by class so that each half has every
class); for target m the classifiers trained on half A of the other pipelines score m's examples in half B, and
vice versa. No classifier is evaluated on an example it trained on (as another pipeline's row), as with a
disjoint attacker pool. Accuracy as the poster reports it: each target's balanced accuracy on the subsample
(``shokri.balanced_indices`` by the run's "balance" key, ``shokri.attack_accuracy``). There is no per-example
score: it would cover S of the N examples, so the attacks table leaves Shokri out.

Keys: the run's "shokri_sample" stream (item 0 the subsample, item 1 the halves); the classifiers of target m on
half h get item(item(attack, m), h); "balance" item m draws target m's balanced set.
"""

from __future__ import annotations

import jax
import numpy as np

from dcjax.privacy import shokri
from dcjax.privacy.attack_data import AttackData

HALVES = 2


def mode(d: AttackData) -> str:
    """How the accuracy was measured, for results: e.g. "bank, leave-one-out, 2000 examples, cross-fitted"."""
    return f"bank, leave-one-out, {d.shokri_examples.size} examples, cross-fitted"


def crossfit_halves(key: jax.Array, labels: np.ndarray) -> np.ndarray:
    """int [S] half (0 or 1) of each subsample example: in a key-drawn order, each class's examples alternate.

    labels: [S] the examples' labels. A class with c examples puts ceil(c / 2) in one half and floor(c / 2) in the
    other, so a class with >= 2 examples (``pools.check_shokri_sample``) has an example in both.
    """
    order = np.asarray(jax.random.permutation(key, labels.size))
    by_class = order[np.argsort(labels[order], kind="stable")]  # Grouped by class, key order within each.
    starts = np.searchsorted(labels[by_class], labels[by_class])  # First position of each one's class.
    half = np.empty(labels.size, np.int64)
    half[by_class] = (np.arange(labels.size) - starts) % HALVES
    return half


def _inputs(d: AttackData, config: shokri.AttackConfig, keys: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features [M, S, K], labels [S], half [S]) of an export's subsample."""
    if not d.shokri_from_bank:
        raise ValueError("this export has no Shokri-from-the-bank inputs (shokri_examples); it has shadows or none")
    labels = d.target_labels[d.shokri_examples]
    features = np.stack([np.asarray(shokri.attack_features(t, config)) for t in d.shokri_target_logits])
    return features, labels, crossfit_halves(jax.random.fold_in(keys["shokri_sample"], 1), labels)


def train_classifiers(d: AttackData, config: shokri.AttackConfig, keys: dict) -> list[list[dict]]:
    """params[m][h]: target m's per-class classifiers trained on half h of the other M - 1 pipelines' outputs.

    d: an export with ``shokri_from_bank``; keys: the run's named keys (``attack_data.run_keys``).
    """
    features, labels, half = _inputs(d, config, keys)
    member = d.keep[:, d.shokri_examples]  # [M, S]
    params = []
    for m in range(d.num_models):
        others = np.arange(d.num_models) != m
        per_half = []
        for h in range(HALVES):
            rows = half == h
            key = jax.random.fold_in(jax.random.fold_in(keys["attack"], m), h)
            x, y = features[others][:, rows], member[others][:, rows]  # [M-1, S_h, K], [M-1, S_h]
            classes = np.tile(labels[rows], d.num_models - 1)
            per_half.append(
                shokri.train_attack_models(key, x.reshape(-1, x.shape[-1]), classes, y.ravel(), d.num_classes, config)
            )
        params.append(per_half)
    return params


def accuracy(params: list[list[dict]], d: AttackData, config: shokri.AttackConfig, keys: dict) -> np.ndarray:
    """Balanced accuracy [M] of each target m of ``d`` under ``params[m]`` (``train_classifiers``, possibly of
    another export with the same pool, keep masks and subsample): half h's classifiers score the other half."""
    features, labels, half = _inputs(d, config, keys)
    out = []
    for m in range(d.num_models):
        scores = np.empty(labels.size)
        for h in range(HALVES):
            rows = half != h  # The half these classifiers did not train on.
            scores[rows] = shokri.attack_scores(params[m][h], features[m, rows], labels[rows])
        member = d.keep[m, d.shokri_examples]
        idx = shokri.balanced_indices(jax.random.fold_in(keys["balance"], m), member)
        out.append(shokri.attack_accuracy(scores[idx], member[idx]))
    return np.asarray(out)


def shokri_accuracy(d: AttackData, config: shokri.AttackConfig, keys: dict) -> np.ndarray:
    """Shokri from the bank's balanced accuracy per target [M] of an export (classifiers from its own bank)."""
    return accuracy(train_classifiers(d, config, keys), d, config, keys)
