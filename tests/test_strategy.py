"""dcjax.strategy: one backend-strategy chooser (auto is map on CPU, vmap on accelerators; unsupported is an error)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import helpers
from helpers import K

from dcjax import condense
from dcjax import engine
from dcjax import models
from dcjax import strategy
from dcjax import train
from dcjax.privacy import bank


@pytest.mark.parametrize("backend, expected", [("cpu", "map"), ("gpu", "vmap"), ("tpu", "vmap")])
def test_auto_is_map_on_cpu_and_vmap_on_accelerators(backend, expected):
    assert strategy.resolve("auto", "model-axis strategy", backend) == expected
    assert engine.resolve_strategy("auto", backend) == condense.resolve_class_strategy("auto", backend) == expected


def test_an_unknown_strategy_names_the_setting():
    with pytest.raises(ValueError, match="unknown class strategy 'scan'"):
        condense.resolve_class_strategy("scan")


def test_an_unsupported_strategy_is_an_error_not_a_substitute():
    with pytest.raises(ValueError, match="'loop' is not supported here"):
        strategy.resolve("loop", "model-axis strategy", supported=("vmap", "map"))
    with pytest.raises(ValueError, match="'loop' is not supported"):
        engine.map_models(lambda x: x, "loop", jnp.zeros(2))


def test_a_sharded_bank_refuses_the_python_loop(fns_d1):
    images, labels = helpers.pool(8)
    with pytest.raises(ValueError, match="model-axis strategy 'loop' is not supported"):
        engine.train_models(
            fns_d1,
            train.TrainConfig(epochs=1, batch_size=4),
            jax.random.split(jax.random.key(0), 4),
            (images, labels, jnp.ones((4, 8), bool)),
            "loop",
            mesh=engine.model_mesh(),
        )


def test_loop_prediction_is_one_model_after_another(fns_d1):
    variables = jax.vmap(fns_d1.init)(jax.random.split(jax.random.key(1), 3))
    images, _ = helpers.pool(10)
    looped = engine.predict_models(fns_d1, variables, images, "loop", batch_size=4)
    chex.assert_shape(looped, (3, 10, K))
    mapped = engine.predict_models(fns_d1, variables, images, "map", batch_size=4)
    chex.assert_trees_all_close(looped, mapped, rtol=1e-6)
    single = engine.predict(fns_d1, jax.tree.map(lambda x: x[2], variables), images, 4)
    chex.assert_trees_all_close(looped[2], single, rtol=1e-6)


def test_prediction_runs_forward_only_in_chunks_and_keeps_every_image(fns_d1, monkeypatch):
    """engine.predict: the network's logits (to float rounding) from the forward-only lowering, in chunks of at most
    models.forward_chunk images, the last chunk's padding dropped."""
    monkeypatch.setattr(models, "CPU_FORWARD_CHUNK", 3)  # 10 images: chunks of 3, the last one padded.
    variables, (images, _) = fns_d1.init(jax.random.key(1)), helpers.pool(10)
    logits = engine.predict(fns_d1, variables, images, batch_size=1000)
    chex.assert_shape(logits, (10, K))
    chex.assert_trees_all_close(logits, fns_d1.apply(variables, images), rtol=1e-5, atol=1e-6)
    per_image = jnp.concatenate([fns_d1.apply(variables, images[i : i + 1]) for i in range(10)])
    chex.assert_trees_all_close(logits, per_image, rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # Three condensations of two models (~15 s).
def test_a_looped_bank_condenses_the_same_sets_as_a_mapped_one(fns_d1):
    images, labels = helpers.pool()
    keep = np.zeros((2, images.shape[0]), bool)
    keep[0, ::2] = keep[1, 1::2] = True
    config = condense.CondenseConfig(ipc=1, iterations=2, batch_real=4, init="real", method="dm", lr_img=1.0)
    model_keys = jax.random.split(jax.random.key(2), 2)
    pool = (np.asarray(images), np.asarray(labels), keep)
    looped = bank.condense_models(fns_d1, config, model_keys, pool, "loop")
    mapped = bank.condense_models(fns_d1, config, model_keys, pool, "map")
    np.testing.assert_array_equal(looped[1], mapped[1])
    chex.assert_trees_all_close(looped[0], mapped[0], rtol=1e-5, atol=1e-6)
