"""dcjax.privacy.bank: the shadow bank's member masks and per-model class index."""

import dataclasses
import os

import jax
import numpy as np
import pytest

from dcjax import condense, models, snapshots
from dcjax import keys as keys_lib
from dcjax.condense import drive
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


def _condense_inputs():
    """A tiny network, pool and two models' IN halves (3 classes of 8x8 images)."""
    fns = models.make_model(models.ModelConfig(width=4, depth=1), (8, 8, 1), 3)
    labels = np.arange(24, dtype=np.int32) % 3
    images = np.asarray(jax.random.normal(jax.random.key(0), (24, 8, 8, 1))) + labels[:, None, None, None]
    keep = np.zeros((2, 24), bool)
    keep[0, ::2] = keep[1, 1::2] = True
    return fns, (images, labels), keep, jax.random.split(jax.random.key(1), 2)


@pytest.mark.users_emitters  # A run resumed mid-way against the straight run, bit for bit (tests/conftest.py).
@pytest.mark.slow  # Three DC condensations of two models (~12 s): the fast tier stays under 2 minutes.
def test_ladder_snapshots_resume_to_the_straight_run_bitwise(tmp_path, monkeypatch):
    """Points at 2 then 4 iterations sharing snapshots: the second resumes at 2 and equals a straight 4-iteration run.

    DC with momentum: a resume that dropped the image optimizer's state would differ.
    """
    fns, pool, keep, keys = _condense_inputs()
    config = condense.CondenseConfig(ipc=1, iterations=4, batch_real=2, outer_loop=2, inner_loop=1, init="noise")
    steps = []
    real_step = drive.models_iteration
    monkeypatch.setattr(drive, "models_iteration", lambda *a: steps.append(1) or real_step(*a))
    shared = snapshots.Snapshots(str(tmp_path / "snap"), save_at=(2, 4), identity="row", models=(3, 7))

    def run(iterations, cache=None):
        steps.clear()
        cfg = dataclasses.replace(config, iterations=iterations)
        images, init = bank.condense_models(fns, cfg, keys, (*pool, keep), snapshots=cache)
        return images, init, len(steps)

    zero = run(0, shared)  # A ladder's iteration 0: the initial sets, nothing run, nothing saved.
    assert zero[2] == 0 and not os.path.exists(tmp_path / "snap")
    np.testing.assert_array_equal(zero[0], run(0)[0])
    first, second = run(2, shared), run(4, shared)
    assert (first[2], second[2]) == (2, 2)  # The second point ran only iterations 3 and 4.
    assert sorted(os.listdir(tmp_path / "snap")) == [f"model_{m:03d}_it_{t:05d}.npz" for m in (3, 7) for t in (2, 4)]
    for ladder, straight in ((first, run(2)), (second, run(4))):
        assert straight[2] in (2, 4)
        np.testing.assert_array_equal(ladder[0], straight[0])
        np.testing.assert_array_equal(ladder[1], straight[1])
    assert run(3, shared)[2] == 1  # Off the ladder: from the snapshot at 2.
    (tmp_path / "snap" / "model_007_it_00004.npz").write_bytes(b"truncated")
    assert run(4, shared)[2] == 2  # A damaged file: the newest complete iteration before it.
    assert run(4, dataclasses.replace(shared, identity="other"))[2] == 4  # Another setting's cache is not used.


def test_means_init_in_a_bank_averages_each_models_own_members_and_uses_none():
    fns, (images, labels), keep, keys = _condense_inputs()
    config = condense.CondenseConfig(ipc=2, iterations=0, batch_real=2, init="means")
    syn, init = bank.condense_models(fns, config, keys, (images, labels, keep))
    data = bank.recipe_data(bank.Recipe("condense", condense=config), fns, keys, (images, labels, keep))
    assert (init == -1).all() and not data.used.any()  # No private image reaches a training set as pixels.
    for m in range(2):
        index = bank.member_class_index(labels, keep[m], 3, width=8)
        init_key = keys_lib.streams(keys[m], keys_lib.CONDENSE)["init"]
        groups = np.concatenate(condense.mean_groups(init_key, index, 2))  # [K * ipc, group size]
        assert keep[m, groups].all()  # Only model m's own members.
        np.testing.assert_allclose(syn[m], images[groups].mean(axis=1), rtol=1e-5, atol=1e-6)
