"""DP-SGD: per-example clipping, noise, the training hook and the privacy accountant."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dcjax import augment
from dcjax import dpsgd
from dcjax import engine
from dcjax import models
from dcjax import train
from dcjax.privacy import accounting

TINY = models.ModelConfig(name="convnet", width=8, depth=1)


@pytest.fixture(scope="module")
def tiny():
    return models.make_model(TINY, (8, 8, 1), 4)


def _batch(num=10, seed=0):
    images = jax.random.normal(jax.random.key(seed), (num, 8, 8, 1))
    labels = jnp.arange(num, dtype=jnp.int32) % 4
    return images, labels


def _grads_one_by_one(fns, variables, images, labels):
    """Each example's gradient computed on its own (a Python loop, no vmap): the reference."""
    grad = jax.jit(jax.grad(dpsgd.example_loss(fns, variables)))
    return [grad(variables["params"], x, y) for x, y in zip(images, labels)]


def _norm(tree):
    return float(jnp.sqrt(sum(jnp.sum(x ** 2) for x in jax.tree.leaves(tree))))


def _clip(tree, clip):
    factor = min(1.0, clip / (_norm(tree) + dpsgd.NORM_EPS))
    return jax.tree.map(lambda g: g * factor, tree)


def test_clipping_bounds_every_example_and_leaves_small_ones_alone(tiny):
    images, labels = _batch()
    variables = tiny.init(jax.random.key(1))
    raw = _grads_one_by_one(tiny, variables, images, labels)
    clip = float(np.median([_norm(g) for g in raw]))  # About half the examples get clipped.
    loss = dpsgd.example_loss(tiny, variables)
    _, clipped, norms = dpsgd.clipped_example_grads(loss, variables["params"], images, labels, clip)
    for i, g in enumerate(raw):
        mine = jax.tree.map(lambda c: c[i], clipped)
        assert _norm(mine) <= clip + 1e-5
        np.testing.assert_allclose(float(norms[i]), _norm(g), rtol=1e-5)
        if _norm(g) + dpsgd.NORM_EPS <= clip:
            chex.assert_trees_all_close(mine, g, rtol=1e-5, atol=1e-7)
    assert 0 < int(jnp.sum(norms > clip)) < len(raw)


@pytest.mark.parametrize("chunk", [0, 4])  # 4 does not divide 10: exercises the chunk padding.
def test_noiseless_dp_gradient_is_the_clipped_sum_over_real_examples_divided_by_b(tiny, chunk):
    images, labels = _batch()
    weights = jnp.ones(10).at[7:].set(0.0)  # The last 3 slots are padding.
    variables = tiny.init(jax.random.key(2))
    config = dpsgd.DPConfig(l2_clip=0.5, noise_multiplier=0.0)
    loss, grads, stats = jax.jit(dpsgd.private_grads, static_argnums=(0, 1, 5))(
        tiny, config, variables, (images, labels, weights), jax.random.key(3), chunk)
    real = [_clip(g, 0.5) for g in _grads_one_by_one(tiny, variables, images[:7], labels[:7])]
    expected = jax.tree.map(lambda *g: sum(g) / 10.0, *real)  # Fixed denominator B = 10.
    chex.assert_trees_all_close(grads, expected, rtol=1e-5, atol=1e-7)
    chex.assert_trees_all_close(loss, jnp.mean(jax.vmap(dpsgd.example_loss(tiny, variables),
                                                        (None, 0, 0))(variables["params"], images[:7],
                                                                      labels[:7])), rtol=1e-6)
    assert 0.0 <= float(stats["clipped_fraction"]) <= 1.0 and float(stats["mean_norm"]) > 0


def test_without_clipping_or_noise_the_dp_gradient_is_the_ordinary_gradient(tiny):
    """A second code path: with a huge clip, no noise and no padding, DP-SGD's gradient is
    the mean gradient of the ordinary (non-DP) training step."""
    images, labels = _batch(8)
    weights = jnp.ones(8)
    variables = tiny.init(jax.random.key(4))
    config = dpsgd.DPConfig(l2_clip=1e6, noise_multiplier=0.0)
    _, dp_grads, _ = jax.jit(dpsgd.private_grads, static_argnums=(0, 1, 5))(
        tiny, config, variables, (images, labels, weights), jax.random.key(5), 3)
    trainer = train.Trainer(tiny, train.make_optimizer(train.TrainConfig(), 0.1), microbatch=0)
    _, plain, _ = jax.jit(train._loss_and_grads, static_argnums=0)(trainer, variables, images, labels,
                                                                   weights)
    chex.assert_trees_all_close(dp_grads, plain, rtol=1e-4, atol=1e-7)


def test_noise_has_the_calibrated_std_and_comes_only_from_the_key(tiny):
    images, labels = _batch()
    batch = (images, labels, jnp.ones(10))
    variables = tiny.init(jax.random.key(6))
    step = jax.jit(dpsgd.private_grads, static_argnums=(0, 1, 5))
    noisy_config = dpsgd.DPConfig(l2_clip=0.7, noise_multiplier=2.0)
    _, clean, _ = step(tiny, dpsgd.DPConfig(0.7, 0.0), variables, batch, jax.random.key(7), 0)
    _, noisy, _ = step(tiny, noisy_config, variables, batch, jax.random.key(7), 0)
    _, again, _ = step(tiny, noisy_config, variables, batch, jax.random.key(7), 0)
    _, other, _ = step(tiny, noisy_config, variables, batch, jax.random.key(8), 0)
    noise = np.concatenate([np.ravel(a - b) for a, b in zip(jax.tree.leaves(noisy), jax.tree.leaves(clean))])
    assert noise.size > 500
    np.testing.assert_allclose(noise.std(), 2.0 * 0.7 / 10, rtol=0.1)  # sigma * C / B.
    assert abs(noise.mean()) < 4 * noise.std() / np.sqrt(noise.size)
    chex.assert_trees_all_equal(noisy, again)  # Same key: bitwise the same gradient.
    assert not np.array_equal(jax.tree.leaves(noisy)[0], jax.tree.leaves(other)[0])


@pytest.mark.parametrize("n,batch,noise,epochs,delta,expected", [
    # tensorflow/privacy, tensorflow_privacy/privacy/analysis/compute_dp_sgd_privacy_test.py,
    # test_compute_dp_sgd_privacy 'Test0' and 'Test1' (values from the TF Privacy maintainers'
    # dp_accounting-based RDP computation, printed to full double precision; steps =
    # ceil(epochs * n / batch), which is epochs * ceil(n / batch) here as batch divides n).
    (60000, 150, 1.3, 15, 1e-5, 0.7242234026109595),
    (100000, 100, 1.0, 30, 1e-7, 1.4154988495444845),
])
def test_epsilon_matches_published_values(n, batch, noise, epochs, delta, expected):
    q, steps = accounting.dpsgd_steps(n, batch, epochs)
    assert accounting.epsilon(noise, q, steps, delta) == pytest.approx(expected, rel=1e-6)


def test_epsilon_is_below_the_tf_privacy_mnist_tutorial_value():
    # tensorflow/privacy tutorials/README.md ("Select Parameters", first row): N = 60000,
    # batch 256, noise 1.12, 60 epochs, delta 1e-5 -> eps 2.92 with the older RDP-to-DP
    # conversion; the improved conversion dp_accounting uses can only lower it.
    eps = accounting.epsilon(1.12, 256 / 60000, 60 * (60000 // 256), 1e-5)
    assert 2.0 < eps <= 2.92


def test_noise_for_epsilon_round_trips_and_is_monotone():
    q, steps = accounting.dpsgd_steps(500, 64, 40)  # The CPU tier's DP rows.
    assert (q, steps) == (0.128, 320)
    noises = [accounting.noise_for_epsilon(e, q, steps, 1e-5) for e in (1.0, 4.0, 8.0)]
    for e, noise in zip((1.0, 4.0, 8.0), noises):
        assert e - 1e-3 <= accounting.epsilon(noise, q, steps, 1e-5) <= e
    assert noises[0] > noises[1] > noises[2] > 0
    assert accounting.epsilon(0.0, q, steps, 1e-5) == float("inf")


@pytest.mark.parametrize("kwargs,field", [({"l2_clip": 0.0}, "l2_clip"), ({"l2_clip": -1.0}, "l2_clip"),
                                          ({"noise_multiplier": -0.1}, "noise_multiplier"),
                                          ({"noise_multiplier": float("nan")}, "noise_multiplier")])
def test_bad_dp_configs_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        dpsgd.DPConfig(**kwargs)


@pytest.mark.parametrize("call,match", [
    (lambda: accounting.epsilon(1.0, 0.0, 10, 1e-5), "sample_rate"),
    (lambda: accounting.epsilon(1.0, 1.5, 10, 1e-5), "sample_rate"),
    (lambda: accounting.epsilon(1.0, 0.1, 0, 1e-5), "steps"),
    (lambda: accounting.epsilon(1.0, 0.1, 10, 1.0), "delta"),
    (lambda: accounting.epsilon(-1.0, 0.1, 10, 1e-5), "noise_multiplier"),
    (lambda: accounting.noise_for_epsilon(0.0, 0.1, 10, 1e-5), "target_epsilon"),
    (lambda: accounting.noise_for_epsilon(float("inf"), 0.1, 10, 1e-5), "target_epsilon"),
    (lambda: accounting.dpsgd_steps(0, 64, 1), "num_examples"),
    (lambda: train.TrainConfig(dp=0.5), "dp"),
])
def test_bad_accounting_and_train_settings_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_batchnorm_networks_are_refused():
    bn = models.make_model(models.ModelConfig(name="convnet_bn", width=4, depth=1), (8, 8, 1), 4)
    images, labels = _batch(4)
    with pytest.raises(ValueError, match="BatchNorm"):
        dpsgd.private_grads(bn, dpsgd.DPConfig(), bn.init(jax.random.key(0)),
                            (images, labels, jnp.ones(4)), jax.random.key(1))
    config = train.TrainConfig(epochs=1, batch_size=4, dp=dpsgd.DPConfig())
    with pytest.raises(ValueError, match="BatchNorm"):
        train.train_from_init(bn, config, train.make_schedule(config, 4), jax.random.key(2),
                              (images, labels, jnp.ones(4, bool)))


def test_dp_training_runs_in_a_bank_and_is_deterministic(tiny):
    images, labels = _batch(24)
    masks = jnp.ones((2, 24), bool).at[1, :5].set(False)
    keys = jax.random.split(jax.random.key(9), 2)
    dp_config = train.TrainConfig(epochs=2, batch_size=8, augment="dc",
                                  dp=dpsgd.DPConfig(l2_clip=1.0, noise_multiplier=1.0))
    run = lambda k: engine.train_models(tiny, dp_config, k, (images, labels, masks), "map")  # noqa: E731
    first, again, other = run(keys), run(keys), run(jax.random.split(jax.random.key(10), 2))
    chex.assert_trees_all_equal(first, again)  # Noise, shuffles and augmentation come from the keys.
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(first))
    assert not np.array_equal(jax.tree.leaves(first[0])[0], jax.tree.leaves(other[0])[0])


def test_non_dp_step_is_the_unchanged_pre_dp_step(tiny):
    """dp=None takes exactly the old path: augment with ``key``, ordinary gradient, update."""
    images, labels = _batch(8)
    weights = jnp.ones(8).at[6:].set(0.0)
    trainer = train.Trainer(tiny, train.make_optimizer(train.TrainConfig(), 0.1),
                            augment.get_augment("dc"), microbatch=3)
    variables = tiny.init(jax.random.key(10))
    state = train.TrainState(variables, trainer.optimizer.init(variables["params"]))
    key = jax.random.key(11)
    new, loss = train.train_step(trainer, state, (images, labels, weights), key)
    augmented = trainer.augment(key, images)
    ref_loss, grads, _ = train._loss_and_grads(trainer, variables, augmented, labels, weights)
    updates, _ = trainer.optimizer.update(grads, state.opt_state, variables["params"])
    chex.assert_trees_all_equal(new.variables["params"],
                                optax.apply_updates(variables["params"], updates))
    chex.assert_trees_all_equal(loss, ref_loss)
    # The DP step augments with the same key: without clipping or noise it is the same step.
    dp_trainer = trainer._replace(dp=dpsgd.DPConfig(l2_clip=1e6, noise_multiplier=0.0))
    step = jax.jit(train.train_step, static_argnums=0)
    dp_new, _ = step(dp_trainer, state, (images, labels, jnp.ones(8)), key)
    plain_new, _ = step(trainer, state, (images, labels, jnp.ones(8)), key)
    chex.assert_trees_all_close(dp_new.variables, plain_new.variables, rtol=1e-4, atol=1e-6)
