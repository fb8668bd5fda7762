"""The training engine: one model, M models over a model axis, determinism."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dcjax import engine
from dcjax import models
from dcjax import train


def _separable(num=40, classes=4, seed=0):
    """Class c is noise plus a bright 4x4 square in quadrant c: trivially separable.

    (A per-class constant level would not do: instance norm removes it.)
    """
    labels = jnp.arange(num, dtype=jnp.int32) % classes
    noise = 0.1 * jax.random.normal(jax.random.key(seed), (num, 8, 8, 1))
    quadrants = jnp.zeros((classes, 8, 8, 1))
    for c in range(classes):
        r, q = 4 * (c // 2 % 2), 4 * (c % 2)
        quadrants = quadrants.at[c, r : r + 4, q : q + 4].set(2.0)
    return noise + quadrants[labels], labels


@pytest.mark.slow
def test_training_fits_a_separable_problem(tiny):
    images, labels = _separable()
    cfg = train.TrainConfig(epochs=30, batch_size=16, lr=0.05)
    masks = jnp.ones((1, images.shape[0]), bool)
    variables, losses = engine.train_models(
        tiny, cfg, jax.random.split(jax.random.key(0), 1), (images, labels, masks), "map"
    )
    chex.assert_shape(losses, (1, 30))
    assert losses[0, -1] < 0.2 * losses[0, 0]
    assert float(engine.evaluate_many(tiny, variables, (images, labels))[0]) == 1.0


@pytest.mark.slow
def test_model_axis_strategies_equal_sequential_runs(tiny):
    """vmap, map and a Python loop train the same M models as M separate runs."""
    images, labels = _separable()
    cfg = train.TrainConfig(epochs=3, batch_size=16, augment="dc")
    masks = jnp.ones((3, 40), bool).at[1, :13].set(False).at[2, 30:].set(False)
    keys = jax.random.split(jax.random.key(1), 3)
    results = {s: engine.train_models(tiny, cfg, keys, (images, labels, masks), s) for s in ("vmap", "map", "loop")}
    schedule = train.make_schedule(cfg, 40)
    for m in range(3):
        single = jax.jit(train.train_from_init, static_argnums=(0, 1, 2))(
            tiny, cfg, schedule, keys[m], (images, labels, masks[m])
        )
        for strategy, stacked in results.items():
            chex.assert_trees_all_close(
                jax.tree.map(lambda x, m=m: x[m], stacked), single, rtol=1e-4, atol=1e-5, custom_message=strategy
            )


@pytest.mark.slow
def test_same_seed_gives_bitwise_identical_params(tiny):
    images, labels = _separable()
    cfg = train.TrainConfig(epochs=2, batch_size=16, augment="dc")
    masks = jnp.ones((2, 40), bool)
    run = lambda seed: engine.train_models(  # noqa: E731
        tiny, cfg, jax.random.split(jax.random.key(seed), 2), (images, labels, masks), "map"
    )
    first, again, other = run(3), run(3), run(4)
    chex.assert_trees_all_equal(first, again)
    pairs = zip(jax.tree.leaves(first[0]), jax.tree.leaves(other[0]))
    assert any(not np.array_equal(a, b) for a, b in pairs)


@pytest.mark.slow
def test_epoch_batches_cover_the_mask_once_and_pad_with_zero_weight():
    mask = jnp.zeros(20, bool).at[jnp.array([1, 4, 5, 9, 13, 17, 18])].set(True)
    schedule = train.Schedule(steps_per_epoch=2, batch_size=4)
    idx, w = train.epoch_batches(jax.random.key(0), mask, schedule)
    chex.assert_shape((idx, w), (2, 4))
    real = np.asarray(idx).ravel()[np.asarray(w).ravel() > 0]
    assert sorted(real.tolist()) == [1, 4, 5, 9, 13, 17, 18]
    assert bool(jnp.all(mask[idx]))  # Padding repeats masked-in examples only.
    assert float(w.sum()) == 7


@pytest.mark.parametrize("microbatch", [0, 3])
@pytest.mark.slow
def test_padding_only_step_leaves_the_state_unchanged(tiny, microbatch):
    images, labels = _separable(8)
    trainer = train.Trainer(tiny, train.make_optimizer(train.TrainConfig(), 0.1), microbatch=microbatch)
    variables = tiny.init(jax.random.key(0))
    state = train.TrainState(variables, trainer.optimizer.init(variables["params"]))
    new, _ = train.train_step(trainer, state, (images, labels, jnp.zeros(8)), jax.random.key(1))
    chex.assert_trees_all_equal(new, state)


@pytest.mark.slow
def test_microbatched_step_equals_whole_batch_step(tiny):
    """Chunked gradient accumulation (the CPU default) is the same SGD step."""
    images, labels = _separable(10)
    weights = jnp.ones(10).at[7:].set(0.0)  # Padding must stay out of the loss.
    variables = tiny.init(jax.random.key(0))
    outs = []
    for microbatch in (0, 4):  # 4 does not divide 10: exercises the zero padding too.
        trainer = train.Trainer(tiny, train.make_optimizer(train.TrainConfig(), 0.1), microbatch=microbatch)
        state = train.TrainState(variables, trainer.optimizer.init(variables["params"]))
        outs.append(
            jax.jit(train.train_step, static_argnums=0)(trainer, state, (images, labels, weights), jax.random.key(1))
        )
    chex.assert_trees_all_close(outs[0], outs[1], rtol=1e-5, atol=1e-6)


def test_microbatch_is_per_backend_and_off_for_batchnorm(tiny):
    assert train.resolve_microbatch(None, tiny, "cpu") == train.CPU_MICROBATCH
    assert train.resolve_microbatch(None, tiny, "gpu") == 0
    assert train.resolve_microbatch(5, tiny, "gpu") == 5
    bn = models.make_model(models.ModelConfig(name="convnet_bn", width=4, depth=1), (8, 8, 1), 4)
    assert train.resolve_microbatch(None, bn, "cpu") == 0
    lax_net = models.make_model(models.ModelConfig(width=4, depth=1, conv_impl="lax"), (8, 8, 1), 4)
    assert train.resolve_microbatch(None, lax_net, "cpu") == 0


def test_schedule_never_pads_a_small_set_to_the_full_batch():
    assert train.make_schedule(train.TrainConfig(batch_size=256), 100) == train.Schedule(1, 100)
    assert train.make_schedule(train.TrainConfig(batch_size=256), 600) == train.Schedule(3, 256)


@pytest.mark.parametrize(
    "kwargs", [{"epochs": 0}, {"batch_size": 0}, {"lr": -1.0}, {"augment": "bogus"}, {"microbatch": -1}]
)
def test_bad_train_config_is_rejected(kwargs):
    with pytest.raises(ValueError):
        train.TrainConfig(**kwargs)


def test_auto_strategy_is_per_backend():
    assert engine.resolve_strategy("auto", "cpu") == "map"
    assert engine.resolve_strategy("auto", "gpu") == "vmap"
    assert engine.resolve_strategy("auto", "tpu") == "vmap"
    with pytest.raises(ValueError, match="bogus"):
        engine.resolve_strategy("bogus")


@pytest.mark.slow
def test_sharded_bank_equals_unsharded_on_four_devices(tiny):
    """The model axis sharded over 4 (fake CPU) devices trains the same models."""
    assert jax.device_count() == 4, "tests/conftest.py sets 4 fake CPU devices"
    images, labels = _separable()
    cfg = train.TrainConfig(epochs=2, batch_size=16)
    masks = jax.random.bernoulli(jax.random.key(5), 0.5, (4, 40))
    keys = jax.random.split(jax.random.key(6), 4)
    plain = engine.train_models(tiny, cfg, keys, (images, labels, masks), "map")
    mesh = engine.model_mesh()
    sharded = engine.train_models(tiny, cfg, keys, (images, labels, masks), "auto", mesh=mesh)
    assert len(jax.tree.leaves(sharded[0])[0].sharding.device_set) == 4
    chex.assert_trees_all_close(sharded, plain, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="split evenly"):
        engine.train_models(tiny, cfg, keys[:3], (images, labels, masks[:3]), mesh=mesh)
