"""The shared mechanics: one strategy chooser, one chunk-padding rule, named key streams."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dcjax import chunks
from dcjax import condense
from dcjax.condense import run as condense_run
from dcjax import engine
from dcjax import keys
from dcjax import models
from dcjax import strategy
from dcjax import train
from dcjax.privacy import attack_data
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


@pytest.mark.parametrize("n, size, count", [(10, 4, 3), (8, 4, 2), (1, 4, 1)])
def test_chunks_pad_at_the_end_and_mark_the_real_items(n, size, count):
    x = jnp.arange(n * 2, dtype=jnp.float32).reshape(n, 2) + 1
    padded, valid = chunks.pad_to_chunks(x, size)
    chex.assert_shape(padded, (count, size, 2))
    chex.assert_shape(valid, (count, size))
    assert int(valid.sum()) == n and bool(valid.reshape(-1)[:n].all())
    np.testing.assert_array_equal(padded.reshape(-1, 2)[:n], x)
    assert float(jnp.abs(padded.reshape(-1, 2)[n:]).sum()) == 0.0


def test_a_chunk_size_below_one_is_refused():
    with pytest.raises(ValueError, match="chunk size must be >= 1"):
        chunks.num_chunks(5, 0)


def test_the_key_layouts_are_pinned():
    """Recorded results depend on these positions: appending is allowed, reordering is not."""
    root = jax.random.key(7)
    data = lambda k: jax.random.key_data(k)  # noqa: E731
    for i, name in enumerate(keys.CONDENSE):
        np.testing.assert_array_equal(data(condense_run._keys(7)[name]), data(jax.random.fold_in(root, i)))
    for i, name in enumerate(keys.ATTACK):
        np.testing.assert_array_equal(data(attack_data.run_keys(7)[name]), data(jax.random.fold_in(root, i)))
    assert keys.CONDENSE[:2] == ("init", "iterations") and keys.ATTACK[3] == "models"
    np.testing.assert_array_equal(data(keys.item(root, 5)), data(jax.random.fold_in(root, 5)))
