"""dcjax.privacy.pools: the target and attacker pools, keep masks, canaries and population, cut from the seed."""

import dataclasses

import numpy as np
import pytest

from dcjax import data
from dcjax.privacy import bank, pools
from dcjax.privacy.config import AttackRunConfig

K = 10


def _config(**changes) -> AttackRunConfig:
    settings = dict(num_models=6, target_pool=40, num_shadow=2, attacker_pool=30, num_canaries=4, num_population=7)
    return AttackRunConfig(**{**settings, **changes})


def test_the_pools_are_disjoint_and_their_masks_fit_them():
    labels = np.arange(100, dtype=np.int32) % K
    split = pools.make_split(_config(), labels, K)
    assert split["target"].shape == (40,) and split["attacker"].shape == (30,)
    assert not set(split["target"]) & set(split["attacker"])
    assert split["keep"].shape == (6, 40) and (split["keep"].sum(0) == 3).all()  # Each example IN for M/2 models.
    assert split["halves"].shape == (2, 30) and (split["halves"].sum(1) == 15).all()
    relabelled = np.flatnonzero(split["target_labels"] != labels[split["target"]])
    np.testing.assert_array_equal(np.sort(split["canaries"]), relabelled)


def test_the_split_is_a_function_of_the_seed():
    labels = np.arange(100, dtype=np.int32) % K
    same = pools.make_split(_config(), labels, K), pools.make_split(_config(), labels, K)
    other = pools.make_split(_config(seed=1), labels, K)
    for name in ("target", "attacker", "target_labels", "canaries", "keep", "halves"):
        np.testing.assert_array_equal(same[0][name], same[1][name])
    assert not np.array_equal(same[0]["target"], other["target"])


def test_model_chunks_never_mix_the_two_pools():
    chunks = pools.model_chunks(_config(num_models=6, num_shadow=3, models_per_chunk=4))
    assert chunks == [[0, 1, 2, 3], [4, 5], [6, 7, 8]]


def test_population_is_a_sorted_seeded_subset_of_the_test_split():
    population = pools.population_indices(_config(), 50)
    assert population.shape == (7,) and (np.diff(population) > 0).all() and population.max() < 50
    np.testing.assert_array_equal(population, pools.population_indices(_config(), 50))
    with pytest.raises(ValueError, match="num_population=7 exceeds the 5 test examples"):
        pools.population_indices(_config(), 5)


def test_a_subset_recipe_larger_than_a_private_half_is_refused_by_name():
    labels = np.arange(1000, dtype=np.int32) % K
    train = data.ArrayDataset(np.zeros((1000, 2, 2, 1), np.float32), labels, K, "mnist")
    big = dict(target_pool=400, attacker_pool=400)  # ~20 of each class in every model's private half.
    pools.check_recipe_fits(_config(recipe=bank.Recipe("subset", per_class=5), **big), train)
    with pytest.raises(ValueError, match="per_class=40 exceeds the smallest class of a model's private half"):
        pools.check_recipe_fits(_config(recipe=bank.Recipe("subset", per_class=40), **big), train)
    small = data.ArrayDataset(train.images[:60], labels[:60], K, "mnist")
    with pytest.raises(ValueError, match="target_pool \\+ attacker_pool = 70 exceeds the 60 training examples"):
        pools.check_recipe_fits(_config(), small)


def test_without_shadows_shokri_learns_from_a_seeded_subsample_of_the_target_pool():
    labels = np.arange(100, dtype=np.int32) % K
    config = _config(num_shadow=0, attacker_pool=0, target_pool=60, shokri_sample=50, num_canaries=0)
    split = pools.make_split(config, labels, K)
    assert split["attacker"].shape == (0,) and split["halves"].shape == (0, 0)
    np.testing.assert_array_equal(split["keep"], pools.make_split(_config(target_pool=60), labels, K)["keep"])
    examples = pools.shokri_examples(config)
    assert examples.dtype == np.int32 and examples.shape == (50,) and (np.diff(examples) > 0).all()
    assert examples.max() < 60
    np.testing.assert_array_equal(examples, pools.shokri_examples(config))
    assert not np.array_equal(examples, pools.shokri_examples(dataclasses.replace(config, seed=1)))
    assert pools.shokri_examples(_config()).shape == (0,)  # With shadows: no subsample.
    assert pools.model_chunks(dataclasses.replace(config, models_per_chunk=4)) == [[0, 1, 2, 3], [4, 5]]
    labels = np.arange(1000, dtype=np.int32) % K
    train = data.ArrayDataset(np.zeros((1000, 2, 2, 1), np.float32), labels, K, "mnist")
    subset = bank.Recipe("subset", per_class=5)  # Fed by the target pool alone: there is no attacker pool.
    pools.check_recipe_fits(dataclasses.replace(config, target_pool=400, shokri_sample=200, recipe=subset), train)


def test_a_shokri_subsample_missing_a_class_pair_is_refused_by_name():
    labels = np.arange(100, dtype=np.int32) % K
    train = data.ArrayDataset(np.zeros((100, 2, 2, 1), np.float32), labels, K, "mnist")
    with pytest.raises(ValueError, match="shokri_sample=4 draws . examples of class .*enlarge shokri_sample"):
        pools.check_recipe_fits(_config(num_shadow=0, attacker_pool=0, shokri_sample=4), train)
