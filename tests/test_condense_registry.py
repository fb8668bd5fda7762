"""The method registry (``condense.METHODS``) and the condensation driver (``condense.drive``) shared by runs and banks.

A toy method registered for one test shows that a method is its iteration and its record: configs, the driver's
keys, a bank, a run, progress and memory estimates all take it without naming it anywhere else.
"""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dcjax import augment, condense, data, evaluation, models, train
from dcjax.condense import config as condense_config
from dcjax.condense import drive, memory
from dcjax.condense import run as condense_run
from dcjax.privacy import bank

K, SHAPE, TINY = 3, (8, 8, 1), models.ModelConfig(width=4, depth=1)


def _toy_iteration(fns, config, strategy, state, real_data, key):
    """Adds uniform(key) to every pixel: the images after T iterations tell which keys the driver used."""
    del fns, strategy, real_data
    images = state.images + config.lr_img * jax.random.uniform(key, state.images.shape)
    return state._replace(images=images), {"loss": jnp.sum(images)}


TOY = condense.Method(
    "toy",
    _toy_iteration,
    condense.MethodDefaults(iterations=3, lr_img=0.5, init="noise"),
    gradient_matching=False,
    dsa=False,
    kept_for_image_gradient=1.0,
)


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(condense_config.METHODS, "toy", TOY)
    return condense.CondenseConfig.paper("toy", ipc=2, batch_real=2)


def _expected(key, config, shape):
    """Noise init from fold_in(key, 0), then iteration t adds lr_img * uniform(fold_in(fold_in(key, 1), t)):
    the layout keys.CONDENSE documents, written out here so that the test does not reuse the driver's code."""
    images = jax.random.normal(jax.random.fold_in(key, 0), shape)
    for t in range(config.iterations):
        images = images + config.lr_img * jax.random.uniform(jax.random.fold_in(jax.random.fold_in(key, 1), t), shape)
    return np.asarray(images)


def _pool(n=24):
    labels = np.arange(n, dtype=np.int32) % K
    images = np.asarray(jax.random.normal(jax.random.key(0), (n,) + SHAPE)) + labels[:, None, None, None]
    return images, labels


def test_the_registry_holds_each_method_under_its_name_with_its_paper_defaults():
    assert list(condense.METHODS) == ["dc", "dsa", "dm"]  # The order the flags and messages offer them in.
    for name, method in condense.METHODS.items():
        assert method.name == name
        config = condense.CondenseConfig.paper(name)
        assert (config.iterations, config.lr_img, config.init) == dataclasses.astuple(method.defaults)
    with pytest.raises(ValueError, match="method must be one of dc, dsa, dm, got 'toy'"):
        condense.CondenseConfig(method="toy")


def test_evaluation_augmentation_is_dsa_s_for_methods_with_dsa_else_the_small_set_one():
    assert augment.small_set_augment("mnist") == "dc" and augment.small_set_augment("cifar10") == "none"
    digits, flipping = condense.CondenseConfig.paper("dm"), condense.CondenseConfig.paper("dsa", dsa_strategy="flip")
    assert condense.evaluation_augment(digits, "dc") == "dsa_digits"
    assert condense.evaluation_augment(flipping, "none") == "dsa"
    assert condense.evaluation_augment(condense.CondenseConfig.paper("dc"), "none") == "none"


def test_segments_cut_a_span_at_the_points_strictly_inside_it():
    assert drive.segments(0, 10, [0, 3, 3, 10, 12]) == [(0, 3), (3, 10)]
    assert drive.segments(4, 10, [2, 7]) == [(4, 7), (7, 10)]
    assert drive.segments(5, 5, [5]) == [] and drive.segments(0, 4, []) == [(0, 4)]


def test_a_bank_draws_each_run_s_own_keys():
    keys = jax.random.split(jax.random.key(3), 3)
    streams = drive.key_streams(keys)["iterations"]
    for m in range(3):
        alone = drive.iteration_key(drive.key_streams(keys[m])["iterations"], 5)
        expected = jax.random.fold_in(jax.random.fold_in(keys[m], 1), 5)
        assert jax.random.key_data(drive.iteration_key(streams, 5)[m]).tolist() == jax.random.key_data(alone).tolist()
        assert jax.random.key_data(alone).tolist() == jax.random.key_data(expected).tolist()


@pytest.mark.slow  # Compiles a bank's iteration (~6 s on a shared CPU).
def test_a_new_method_runs_in_a_bank_from_its_record_alone(toy):
    fns = models.make_model(TINY, SHAPE, K)
    images, labels = _pool()
    keep = np.zeros((2, len(labels)), bool)
    keep[0, ::2] = keep[1, 1::2] = True
    keys = jax.random.split(jax.random.key(1), 2)
    syn, init = bank.condense_models(fns, toy, keys, (images, labels, keep), "map")
    assert (init == -1).all()
    for m in range(2):
        np.testing.assert_allclose(syn[m], _expected(keys[m], toy, syn.shape[1:]), rtol=1e-6, atol=1e-6)
    assert condense.iteration_units(toy) == 1 and condense.describe(fns, toy) == "TOY iteration (width 4, ipc 2)"


def test_a_new_method_is_estimated_by_its_record(toy, monkeypatch):
    fns = models.make_model(TINY, SHAPE, K)
    estimate = memory.condensation_estimate(fns, toy, SHAPE, K, 24)
    assert estimate.parts["inner loop"] == 0  # No network training without gradient matching.
    monkeypatch.setitem(condense_config.METHODS, "toy", dataclasses.replace(TOY, kept_for_image_gradient=3.0))
    more = memory.condensation_estimate(fns, toy, SHAPE, K, 24)
    assert more.parts["synthetic gradient"] > estimate.parts["synthetic gradient"]


@pytest.mark.slow  # Trains an evaluation model (~5 s).
def test_a_new_method_runs_in_a_workdir_from_its_record_alone(toy, tmp_path):
    fns = models.make_model(TINY, SHAPE, K)
    images, labels = _pool()
    train_set, test_set = data.ArrayDataset(images, labels, K, "mnist"), data.ArrayDataset(images, labels, K, "mnist")
    config = condense_run.RunConfig(
        seed=2,
        model=TINY,
        condense=toy,
        eval_every=2,
        eval_baseline=False,
        checkpoint_every=2,
        eval=evaluation.EvalConfig(num_models=1, train=train.TrainConfig(epochs=1, augment="none")),
    )
    results = condense_run.run_condensation(config, fns, train_set, test_set, str(tmp_path))
    saved = np.load(tmp_path / condense_run.SYNTHETIC)["images"]
    np.testing.assert_allclose(saved, _expected(jax.random.key(2), toy, saved.shape), rtol=1e-6, atol=1e-6)
    assert [e["iteration"] for e in results["evals"]] == [0, 2, 3]  # Every 2, and the end.
    metrics = [json.loads(line) for line in (tmp_path / condense_run.METRICS).read_text().splitlines()]
    assert [m["iteration"] for m in metrics] == [0, 1, 2]
