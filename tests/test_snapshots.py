"""dcjax.snapshots: the per-model states that let the checkpoints of one DP-SGD run train it once."""

import dataclasses
import re

import chex
import jax
import numpy as np
import pytest

from dcjax import dpsgd, models, snapshots, train

DP = dpsgd.DPConfig(num_examples=24, capacity=24, overflow_budget=1e-6)
RUN = train.TrainConfig(epochs=4, batch_size=7, dp=DP)


@pytest.fixture(scope="module")
def tiny():
    return models.make_model(models.ModelConfig(name="convnet", width=4, depth=1), (8, 8, 1), 4)


def _states(fns, seeds):
    """DPStates of len(seeds) models, stacked, with losses that tell them apart."""
    states = [train.initial_dp_state(fns, RUN, jax.random.key(s)) for s in seeds]
    states = [s._replace(loss_sums=s.loss_sums + seed) for s, seed in zip(states, seeds)]
    return jax.tree.map(lambda *xs: np.stack(xs), *states)


def test_a_snapshot_reads_back_as_it_was_saved(tiny, tmp_path):
    states = _states(tiny, (1, 2, 3))
    snapshots.save(str(tmp_path), 2, [4, 5, 6], states)
    back = snapshots.load(str(tmp_path), 2, [4, 5, 6], snapshots.like(tiny, RUN))
    chex.assert_trees_all_equal(back, states)
    # Any subset, in any order: each model is its own file.
    chex.assert_trees_all_equal(
        snapshots.load(str(tmp_path), 2, [6, 4], snapshots.like(tiny, RUN)),
        jax.tree.map(lambda x: x[np.array([2, 0])], states),
    )


def test_latest_is_the_last_epoch_at_or_before_the_checkpoint_that_every_model_has(tiny, tmp_path):
    directory = str(tmp_path)
    assert snapshots.latest(directory + "/absent", [0], 10) == 0
    states = _states(tiny, (1, 2))
    for epochs in (1, 3, 7):
        snapshots.save(directory, epochs, [0, 1], states)
    snapshots.save(directory, 5, [0], jax.tree.map(lambda x: x[:1], states))  # A chunk killed half-saved.
    (tmp_path / "ep4x").mkdir()  # Not a snapshot.
    assert [snapshots.latest(directory, [0, 1], e) for e in (0, 1, 2, 5, 6, 7, 100)] == [0, 1, 1, 3, 3, 7, 7]
    assert snapshots.latest(directory, [0], 6) == 5
    assert snapshots.latest(directory, [0, 2], 7) == 0


def test_a_snapshot_of_another_network_or_a_damaged_one_is_refused_by_name(tiny, tmp_path):
    snapshots.save(str(tmp_path), 1, [0], _states(tiny, (1,)))
    wider = models.make_model(models.ModelConfig(name="convnet", width=8, depth=1), (8, 8, 1), 4)
    with pytest.raises(snapshots.SnapshotError, match="model_000.npz: a snapshot of another network"):
        snapshots.load(str(tmp_path), 1, [0], snapshots.like(wider, RUN))
    longer = snapshots.like(tiny, dataclasses.replace(RUN, epochs=5))  # Losses of a 5-epoch run.
    with pytest.raises(snapshots.SnapshotError, match="another network or training"):
        snapshots.load(str(tmp_path), 1, [0], longer)
    (tmp_path / "ep1" / "model_000.npz").write_bytes(b"truncated")
    with pytest.raises(snapshots.SnapshotError, match="model_000.npz: unreadable"):
        snapshots.load(str(tmp_path), 1, [0], snapshots.like(tiny, RUN))


def test_a_snapshot_directory_serves_one_run_only(tmp_path):
    directory = str(tmp_path / "snaps")
    run = {"seed": 0, "train": {"epochs": 4, "lr": 0.1}}
    snapshots.prepare(directory, run)
    snapshots.prepare(directory, run)  # The same run's next point.
    with pytest.raises(snapshots.SnapshotError, match="another run \\(differs at train.lr\\).*--overwrite"):
        snapshots.prepare(directory, {"seed": 0, "train": {"epochs": 4, "lr": 0.2}})


def test_the_shared_file_helpers_check_what_each_file_records_and_find_complete_progress(tmp_path):
    """write_models/read_models/complete, as the condensation layout uses them: fields beside the leaves, checked."""
    states = {"images": np.arange(12, dtype=np.float32).reshape(2, 3, 2), "step": np.array([4, 5], np.int32)}
    template = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), states)
    path = lambda model, t: str(tmp_path / f"m{model}_t{t}.npz")  # noqa: E731
    snapshots.write_models([path(3, 2), path(7, 2)], states, "s_{}", identity="row", iteration=2)
    back = snapshots.read_models([path(7, 2), path(3, 2)], template, "s_{}", {"identity": "row", "iteration": 2})
    chex.assert_trees_all_equal(back, jax.tree.map(lambda x: x[::-1], states))
    with pytest.raises(snapshots.SnapshotError, match="m3_t2.npz: a snapshot saved by other settings"):
        snapshots.read_models([path(3, 2)], template, "s_{}", {"identity": "other", "iteration": 2})
    wider = jax.tree.map(lambda x: jax.ShapeDtypeStruct((*x.shape, 1), x.dtype), template)
    with pytest.raises(snapshots.SnapshotError, match="m3_t2.npz: a snapshot of another network or training"):
        snapshots.read_models([path(3, 2)], wider, "s_{}")
    snapshots.write_models([path(3, 5)], jax.tree.map(lambda x: x[:1], states), "s_{}")  # Model 7 lacks t=5.
    pattern = re.compile(r"m(\d+)_t(\d+)\.npz")
    assert snapshots.complete(str(tmp_path), pattern, path, [3, 7], 10) == [2]
    assert snapshots.complete(str(tmp_path), pattern, path, [3], 10) == [5, 2]
    assert snapshots.complete(str(tmp_path), pattern, path, [3], 4) == [2]
    assert snapshots.complete(str(tmp_path / "absent"), pattern, path, [3], 10) == []
