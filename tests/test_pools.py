"""dcjax.privacy.pools: the target and attacker pools, keep masks, canaries and population, cut from the seed."""

import numpy as np
import pytest

from dcjax import data
from dcjax.privacy import attack_run, bank, pools

K = 10


def _config(**changes) -> attack_run.AttackRunConfig:
    settings = dict(num_models=6, target_pool=40, num_shadow=2, attacker_pool=30, num_canaries=4, num_population=7)
    return attack_run.AttackRunConfig(**{**settings, **changes})


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
