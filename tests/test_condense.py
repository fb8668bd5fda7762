"""DC condensation: the jitted iteration, class strategies, determinism, resume."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import helpers
from helpers import K, SHAPE, TINY

from dcjax import condense
from dcjax.condense import run as condense_run
from dcjax import data
from dcjax import evaluation
from dcjax import models
from dcjax import train

IPC = 2
SMALL = condense.CondenseConfig(
    ipc=IPC, iterations=3, outer_loop=3, inner_loop=2, batch_real=4, batch_train=4, init="real"
)


def test_loops_follow_the_reference_table():
    assert condense.CondenseConfig(ipc=1).loops == (1, 1)
    assert condense.CondenseConfig(ipc=10).loops == (10, 50)
    assert condense.CondenseConfig(ipc=50).loops == (50, 10)
    assert condense.CondenseConfig(ipc=10, outer_loop=2, inner_loop=3).loops == (2, 3)


@pytest.mark.slow
def test_class_strategies_and_microbatching_give_the_same_loss_and_gradients(fns):
    images, labels = helpers.pool()
    variables = fns.init(jax.random.key(1))
    syn = jax.random.normal(jax.random.key(2), (K * IPC,) + SHAPE)
    real = jnp.stack([images[labels == c][:4] for c in range(K)])
    results = {}
    for strategy in ("vmap", "map", "loop"):
        for microbatch in (0, 3):
            cfg = dataclasses.replace(SMALL, microbatch=microbatch)
            fn = lambda s: condense.matching_loss(fns, cfg, strategy, s, (variables, real), jax.random.key(3))  # noqa
            results[strategy, microbatch] = jax.jit(jax.value_and_grad(fn))(syn)
    for key, result in results.items():
        chex.assert_trees_all_close(result, results["vmap", 0], rtol=1e-4, atol=1e-6, custom_message=str(key))
    assert float(results["loop", 0][0]) > 0


def _iterate(fns, config, steps, key=0):
    images, labels = helpers.pool()
    index = data.build_class_index(np.asarray(labels), K)
    state, init_idx = condense.init_synthetic(config, jax.random.key(key), images, index)
    step = condense.make_iteration_fn(fns, config, "map")
    losses = []
    for t in range(steps):
        state, out = step(state, (images, index), jax.random.fold_in(jax.random.key(key), t))
        losses.append(float(out["loss"]))
    return state, init_idx, losses, step


@pytest.mark.slow
def test_iteration_traces_once_and_changes_the_images(fns):
    state0, init_idx, _, _ = _iterate(fns, SMALL, 0)
    state, _, losses, step = _iterate(fns, SMALL, 3)
    assert step._cache_size() == 1  # Three calls, one compilation.
    assert not np.allclose(state.images, state0.images)
    assert np.all(np.isfinite(losses))
    images, labels = helpers.pool()
    # Real init copies the recorded real examples of the right class.
    np.testing.assert_array_equal(state0.images, images[init_idx])
    np.testing.assert_array_equal(labels[init_idx], condense.synthetic_labels(K, IPC))


@pytest.mark.slow
def test_pure_iteration_is_traced_once(fns):
    images, labels = helpers.pool()
    index = data.build_class_index(np.asarray(labels), K)
    state, _ = condense.init_synthetic(SMALL, jax.random.key(0), images, index)
    pure = chex.assert_max_traces(lambda s, d, k: condense.dc_iteration(fns, SMALL, "map", s, d, k), n=1)
    step = jax.jit(pure)
    for t in range(3):
        state, _ = step(state, (images, index), jax.random.key(t))


@pytest.mark.slow
def test_iteration_is_deterministic(fns):
    a = _iterate(fns, SMALL, 2, key=5)
    b = _iterate(fns, SMALL, 2, key=5)
    chex.assert_trees_all_equal(a[0], b[0])
    assert a[2] == b[2]


@pytest.mark.slow
def test_noise_init_and_last_outer_step_skip(fns):
    config = dataclasses.replace(SMALL, init="noise", outer_loop=1, inner_loop=1)
    state, init_idx, losses, _ = _iterate(fns, config, 1)
    assert np.all(np.asarray(init_idx) == -1)
    assert np.isfinite(losses[0])


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"ipc": 0}, "ipc"),
        ({"distance": "l1"}, "distance"),
        ({"init": "zeros"}, "init"),
        ({"outer_loop": 0}, "outer_loop"),
        ({"class_strategy": "pmap"}, "strategy"),
    ],
)
def test_bad_condense_config_is_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        condense.CondenseConfig(**kwargs)


def test_paper_config_takes_the_methods_defaults_then_the_changes():
    dm = condense.CondenseConfig.paper("dm", ipc=1)
    assert (dm.method, dm.iterations, dm.lr_img, dm.init, dm.ipc) == ("dm", 20000, 1.0, "real", 1)
    dc = condense.CondenseConfig.paper("dc", lr_img=0.5)
    assert (dc.iterations, dc.lr_img, dc.init) == (1000, 0.5, "noise")
    assert condense.CondenseConfig.paper("dsa").init == "real"
    with pytest.raises(ValueError, match="method must be one of dc, dsa, dm, got 'kip'"):
        condense.CondenseConfig.paper("kip")


def test_batch_real_larger_than_smallest_class_is_rejected():
    index = data.build_class_index(np.array([0, 0, 1, 1, 1, 2, 2]), 3)
    with pytest.raises(ValueError, match="batch_real"):
        condense.check_batch_real(condense.CondenseConfig(batch_real=3), index)


def _run_config(iterations=4):
    return condense_run.RunConfig(
        seed=3,
        model=TINY,
        condense=dataclasses.replace(SMALL, iterations=iterations),
        eval=evaluation.EvalConfig(num_models=2, train=train.TrainConfig(epochs=2)),
        eval_every=2,
        checkpoint_every=1,
    )


class _Killed(Exception):
    pass


@pytest.mark.users_emitters  # A run resumed mid-way against the straight run, bit for bit (tests/conftest.py).
@pytest.mark.slow
def test_killed_run_resumes_to_a_bitwise_identical_result(fns, tmp_path, monkeypatch):
    train_set, test_set = helpers.dataset(30, 0), helpers.dataset(12, 1)
    config = _run_config()
    straight = condense_run.run_condensation(config, fns, train_set, test_set, str(tmp_path / "a"))
    real_save = condense_run.checkpoint.Checkpointer.save

    def save_then_die(self, step, tree):
        real_save(self, step, tree)
        if step == 2:
            raise _Killed()

    monkeypatch.setattr(condense_run.checkpoint.Checkpointer, "save", save_then_die)
    with pytest.raises(_Killed):
        condense_run.run_condensation(config, fns, train_set, test_set, str(tmp_path / "b"))
    monkeypatch.undo()
    resumed = condense_run.run_condensation(config, fns, train_set, test_set, str(tmp_path / "b"))
    with np.load(tmp_path / "a" / "synthetic.npz") as a, np.load(tmp_path / "b" / "synthetic.npz") as b:
        for name in ("images", "labels", "init_indices"):
            np.testing.assert_array_equal(a[name], b[name])
    assert straight["final"] == resumed["final"]
    for name in (
        "synthetic.png",
        "loss.png",
        "accuracy.png",
        "config.json",
        "metrics.jsonl",
        "evals.jsonl",
        "results.json",
    ):
        assert (tmp_path / "b" / name).exists(), name
    assert [e["iteration"] for e in resumed["evals"]] == [0, 2, 4]
    # Where its floats come from: the commit and CPU, and the per-backend lowering choices it made.
    assert resumed["provenance"]["cpu"] and resumed["provenance"]["backend"] == jax.default_backend()
    microbatch = train.resolve_microbatch(config.condense.microbatch, fns)
    assert resumed["lowering"] == {**models.lowering(config.model), "microbatch": microbatch}


@pytest.mark.slow
def test_finished_workdir_is_not_overwritten(fns, tmp_path):
    train_set, test_set = helpers.dataset(30, 0), helpers.dataset(12, 1)
    config = dataclasses.replace(_run_config(1), eval_baseline=False)
    condense_run.run_condensation(config, fns, train_set, test_set, str(tmp_path))
    with pytest.raises(condense_run.workdir_lib.WorkdirError, match="overwrite"):
        condense_run.run_condensation(config, fns, train_set, test_set, str(tmp_path))
    condense_run.run_condensation(config, fns, train_set, test_set, str(tmp_path), overwrite=True)


def test_auto_class_strategy_is_per_backend():
    assert condense.resolve_class_strategy("auto", "cpu") == "map"
    assert condense.resolve_class_strategy("auto", "gpu") == "vmap"
    assert condense.resolve_class_strategy("loop", "gpu") == "loop"


def test_means_init_averages_disjoint_random_groups_of_each_class_and_copies_no_image():
    labels = np.array([0] * 7 + [1] * 9 + [2] * 8, np.int32)[np.random.default_rng(0).permutation(24)]
    images = jax.random.normal(jax.random.key(4), (24,) + SHAPE)
    index = data.build_class_index(labels, K)
    config = dataclasses.replace(SMALL, init="means", ipc=3)
    state, init_idx = condense.init_synthetic(config, jax.random.key(1), images, index)
    groups = condense.mean_groups(jax.random.key(1), index, 3)
    np.testing.assert_array_equal(init_idx, -1)  # No real image used as pixels.
    for c, group in enumerate(groups):
        count = int((labels == c).sum())
        assert group.shape == (3, count // 3)
        assert (labels[group] == c).all() and len(set(group.ravel().tolist())) == group.size  # Disjoint, own class.
        for i in range(3):  # Image c*ipc + i is the mean of group i, recomputed here in float64.
            mean = np.asarray(images, np.float64)[group[i]].mean(axis=0)
            np.testing.assert_allclose(state.images[c * 3 + i], mean, rtol=1e-5, atol=1e-6)
    other = condense.mean_groups(jax.random.key(2), index, 3)
    assert any(not np.array_equal(a, b) for a, b in zip(groups, other))  # Key-drawn groups.
    # Class 0 has 7 images: groups of 2, one image left out; every other image of the class is in exactly one group.
    assert np.setdiff1d(np.flatnonzero(labels == 0), groups[0]).size == 1
    with pytest.raises(ValueError, match="ipc=8 with init=means exceeds"):
        condense.check_batch_real(dataclasses.replace(config, ipc=8, batch_real=1), index)


def test_paired_difference_pairs_by_evaluation_model_with_a_t_interval():
    """evaluation.paired_difference (benchmarks/paired_accuracy.py, the ladder's gain over its initial set)."""
    diffs, mean, low, high = evaluation.paired_difference([0.90, 0.80, 0.70], [0.91, 0.82, 0.73])
    assert diffs == pytest.approx([1.0, 2.0, 3.0]) and mean == pytest.approx(2.0)
    # Standard deviation 1 over 3 pairs: half-width t(0.975, 2) / sqrt(3) = 4.303 / 1.732.
    assert (low, high) == pytest.approx((2.0 - 2.4841, 2.0 + 2.4841), abs=1e-3)
    with pytest.raises(ValueError, match="equal lists"):
        evaluation.paired_difference([0.9, 0.8], [0.9])
