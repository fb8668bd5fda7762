"""The pools of a membership-inference run, cut from the seed: who is in which pool, and what fits.

A run's train split holds a *target pool* (N examples; LiRA keep masks over M models) and a disjoint *attacker
pool* (Na examples; a random half per Shokri shadow), plus canaries relabelled inside the target pool; RMIA's
population is a key-drawn subset of the test split (docs/protocol.md section 7). Without shadows (num_shadow =
attacker_pool = 0) Shokri learns from the bank itself, on a key-drawn subsample of the target pool
(``shokri_examples``). Every function here is a pure
function of the run's config (a ``config.AttackRunConfig``) and the labels: the run, the study, the memory
estimate and the launchers' up-front checks all cut the same pools from the same seed.
"""

from __future__ import annotations

import jax
import numpy as np

from dcjax import data as data_lib
from dcjax import errors
from dcjax.privacy import attack_data, canaries, masks
from dcjax.privacy.config import AttackRunConfig


def make_split(config: AttackRunConfig, labels: np.ndarray, num_classes: int) -> dict:
    """Pools, labels and keep masks, all from the seed.

    Returns {"target" [N], "attacker" [Na]: dataset indices; "target_labels" [N] (with canaries
    relabelled); "canaries" [C]: their positions in the target pool; "keep" [M, N] LiRA masks;
    "halves" [k, Na] Shokri IN halves ([0, 0] without shadows)}.
    """
    keys = attack_data.run_keys(config.seed)
    parts = data_lib.split_indices(
        keys["pools"], len(labels), {"target": config.target_pool, "attacker": config.attacker_pool}
    )
    target_labels, canary_idx = canaries.mislabel(
        keys["canaries"], labels[parts["target"]], config.num_canaries, num_classes
    )
    keep = masks.lira_keep_masks(keys["keep"], config.num_models, config.target_pool)
    halves = np.zeros((0, config.attacker_pool), bool)
    if config.num_shadow:
        halves = np.stack(
            [
                masks.half_split_mask(jax.random.fold_in(keys["halves"], i), config.attacker_pool)
                for i in range(config.num_shadow)
            ]
        )
    return {**parts, "target_labels": target_labels, "canaries": canary_idx, "keep": keep, "halves": halves}


def check_recipe_fits(config: AttackRunConfig, train) -> None:
    """Fails fast (ConfigError), before anything runs or is written, if some model's private half has too
    few examples of a class for the recipe (subset size, DC real batch or real init)."""
    if config.target_pool + config.attacker_pool > len(train.labels):
        raise errors.ConfigError(
            "target_pool",
            f"+ attacker_pool = {config.target_pool + config.attacker_pool} "
            f"exceeds the {len(train.labels)} training examples",
        )
    split = make_split(config, train.labels, train.num_classes)
    check_attack_classes(config, train.labels[split["attacker"]], split["halves"], train.num_classes)
    check_shokri_sample(config, split["target_labels"], train.num_classes)
    setting, need = config.recipe.per_class_need()
    if not need:
        return
    pools = (
        ("target_pool", split["target_labels"], split["keep"]),
        ("attacker_pool", train.labels[split["attacker"]], split["halves"]),
    )
    for pool, labels, keep in pools:
        if not len(keep):  # No shadows, so no attacker pool to feed.
            continue
        smallest = min(np.bincount(labels[k], minlength=train.num_classes).min() for k in keep)
        if smallest < need:
            raise errors.ConfigError(
                setting,
                f"={need} exceeds the smallest class of a model's private half "
                f"in the {pool} ({smallest} examples); lower {setting} or enlarge {pool}",
            )


def check_attack_classes(config: AttackRunConfig, labels: np.ndarray, halves: np.ndarray, num_classes: int) -> None:
    """Shokri's per-class attack needs, for every class, IN and OUT rows over the shadows' halves of the attacker
    pool; checked from the split, before any model trains (otherwise the whole bank trains and then fails).

    labels: [Na] attacker-pool labels; halves: [k, Na] the shadows' IN masks. Without shadows (k = 0) there is
    nothing to check here: Shokri from the bank is ``check_shokri_sample``'s.
    """
    member = np.asarray(halves, bool)
    if not len(member):
        return
    num_in = np.array([(member & (labels == c)).sum() for c in range(num_classes)])
    num_out = np.array([(~member & (labels == c)).sum() for c in range(num_classes)])
    bad = np.flatnonzero((num_in == 0) | (num_out == 0))
    if bad.size:
        c = int(bad[0])
        raise errors.ConfigError(
            "attacker_pool",
            f"={config.attacker_pool} leaves class {c} with {num_in[c]} IN and {num_out[c]} OUT rows "
            f"over the {len(member)} Shokri shadows (its attack needs both for every class); enlarge attacker_pool",
        )


def shokri_examples(config: AttackRunConfig) -> np.ndarray:
    """Target-pool positions [S] (sorted int32) that Shokri from the bank sees; [0] when the run has shadows.

    A key-drawn subsample (S = shokri_sample): the classifiers' rows are every other pipeline's outputs on it.
    """
    if not config.shokri_from_bank:
        return np.zeros(0, np.int32)
    key = jax.random.fold_in(attack_data.run_keys(config.seed)["shokri_sample"], 0)
    perm = np.asarray(jax.random.permutation(key, config.target_pool))
    return np.sort(perm[: config.shokri_sample]).astype(np.int32)


def check_shokri_sample(config: AttackRunConfig, target_labels: np.ndarray, num_classes: int) -> None:
    """Shokri from the bank trains a classifier per class on each cross-fit half of its subsample: every class
    needs 2 examples in it (one per half; each is IN and OUT for >= 2 of the other M - 1 >= 5 pipelines).

    target_labels: [N] the pool's labels as trained on. Nothing to check for a run with shadows.
    """
    if not config.shokri_from_bank:
        return
    counts = np.bincount(target_labels[shokri_examples(config)], minlength=num_classes)
    if counts.min() < 2:
        c = int(counts.argmin())
        raise errors.ConfigError(
            "shokri_sample",
            f"={config.shokri_sample} draws {counts[c]} examples of class {c} (Shokri from the bank "
            "needs 2 of every class, one per cross-fit half); enlarge shokri_sample",
        )


def model_chunks(config: AttackRunConfig) -> list[list[int]]:
    """Model indices grouped into chunks trained together; a chunk never mixes the two pools."""
    m, k = config.num_models, config.num_shadow
    size = config.models_per_chunk
    if not size:
        size = jax.device_count() if jax.default_backend() == "cpu" else max(m, k)
    groups = (list(range(m)), list(range(m, m + k)))
    return [g[i : i + size] for g in groups for i in range(0, len(g), size)]


def population_indices(config: AttackRunConfig, num_test: int) -> np.ndarray:
    """Test-set indices [P] of RMIA's population samples: a key-drawn subset, sorted."""
    if config.num_population > num_test:
        raise errors.ConfigError("num_population", f"={config.num_population} exceeds the {num_test} test examples")
    perm = np.asarray(jax.random.permutation(attack_data.run_keys(config.seed)["population"], num_test))
    return np.sort(perm[: config.num_population]).astype(np.int64)
