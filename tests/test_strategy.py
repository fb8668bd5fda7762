"""dcjax.strategy: one backend-strategy chooser (auto is map on CPU, vmap on accelerators; unsupported is an error)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dcjax import condense
from dcjax import engine
from dcjax import models
from dcjax import strategy
from dcjax import train
from dcjax.privacy import bank

K, SHAPE = 3, (8, 8, 1)


@pytest.fixture(scope="module")
def fns():
    return models.make_model(models.ModelConfig(width=8, depth=1), SHAPE, K)


def _pool(n=30):
    labels = jnp.arange(n, dtype=jnp.int32) % K
    return jax.random.normal(jax.random.key(0), (n,) + SHAPE) + labels[:, None, None, None], labels


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


def test_a_sharded_bank_refuses_the_python_loop(fns):
    images, labels = _pool(8)
    with pytest.raises(ValueError, match="model-axis strategy 'loop' is not supported"):
        engine.train_models(
            fns,
            train.TrainConfig(epochs=1, batch_size=4),
            jax.random.split(jax.random.key(0), 4),
            (images, labels, jnp.ones((4, 8), bool)),
            "loop",
            mesh=engine.model_mesh(),
        )


def test_loop_prediction_is_one_model_after_another(fns):
    variables = jax.vmap(fns.init)(jax.random.split(jax.random.key(1), 3))
    images, _ = _pool(10)
    looped = engine.predict_models(fns, variables, images, "loop", batch_size=4)
    chex.assert_shape(looped, (3, 10, K))
    chex.assert_trees_all_close(looped, engine.predict_models(fns, variables, images, "map", batch_size=4), rtol=1e-6)
    single = engine.predict(fns, jax.tree.map(lambda x: x[2], variables), images, 4)
    chex.assert_trees_all_close(looped[2], single, rtol=1e-6)


def test_prediction_runs_forward_only_in_chunks_and_keeps_every_image(fns, monkeypatch):
    """engine.predict: the network's logits (to float rounding) from the forward-only lowering, in chunks of at most
    models.forward_chunk images, the last chunk's padding dropped."""
    monkeypatch.setattr(models, "CPU_FORWARD_CHUNK", 3)  # 10 images: chunks of 3, the last one padded.
    variables, (images, _) = fns.init(jax.random.key(1)), _pool(10)
    logits = engine.predict(fns, variables, images, batch_size=1000)
    chex.assert_shape(logits, (10, K))
    chex.assert_trees_all_close(logits, fns.apply(variables, images), rtol=1e-5, atol=1e-6)
    per_image = jnp.concatenate([fns.apply(variables, images[i : i + 1]) for i in range(10)])
    chex.assert_trees_all_close(logits, per_image, rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # Three condensations of two models (~15 s).
def test_a_looped_bank_condenses_the_same_sets_as_a_mapped_one(fns):
    images, labels = _pool()
    keep = np.zeros((2, images.shape[0]), bool)
    keep[0, ::2] = keep[1, 1::2] = True
    config = condense.CondenseConfig(ipc=1, iterations=2, batch_real=4, init="real", method="dm", lr_img=1.0)
    model_keys = jax.random.split(jax.random.key(2), 2)
    pool = (np.asarray(images), np.asarray(labels))
    looped = bank.condense_models(fns, config, model_keys, pool, keep, "loop")
    mapped = bank.condense_models(fns, config, model_keys, pool, keep, "map")
    np.testing.assert_array_equal(looped[1], mapped[1])
    chex.assert_trees_all_close(looped[0], mapped[0], rtol=1e-5, atol=1e-6)
