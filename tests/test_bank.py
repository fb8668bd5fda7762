"""dcjax.privacy.bank: the shadow bank's member masks and per-model class index."""

import jax
import numpy as np
import pytest

from dcjax.privacy import bank


NUM_CLASSES = 10


def test_subset_masks_pick_per_class_members_only():
    labels = np.arange(200, dtype=np.int32) % NUM_CLASSES
    keep = np.zeros((3, 200), bool)
    keep[:, :100] = True  # Every class present 10 times.
    keys = jax.random.split(jax.random.key(0), 3)
    masks = bank.subset_masks(keys, labels, keep, 2, NUM_CLASSES)
    assert not (masks & ~keep).any()
    for m in masks:
        assert (np.bincount(labels[m], minlength=NUM_CLASSES) == 2).all()
    assert not np.array_equal(masks[0], masks[1])  # Per-model keys.
    with pytest.raises(ValueError, match="per_class"):
        bank.subset_masks(keys, labels, keep, 11, NUM_CLASSES)


def test_member_class_index_has_fixed_width_and_only_members():
    labels = np.arange(100, dtype=np.int32) % NUM_CLASSES
    member = np.arange(100) < 57
    index = bank.member_class_index(labels, member, NUM_CLASSES, width=10)
    table = np.asarray(index.table)
    assert table.shape == (NUM_CLASSES, 10)
    assert member[table].all()
    assert (labels[table] == np.arange(NUM_CLASSES)[:, None]).all()
    np.testing.assert_array_equal(index.counts, np.bincount(labels[member]))
