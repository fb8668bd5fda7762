"""DP-SGD: Poisson-sampled batches, per-example clipping, noise, the training hook, the accountants."""

import dataclasses
import glob
import json
import math
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from dp_accounting.pld import pld_privacy_accountant

import helpers
import launch_flags

from dcjax import augment
from dcjax import dpsgd
from dcjax import engine
from dcjax import models
from dcjax import train
from dcjax.privacy import accounting

# The gradient tests' own DP settings; sampling fields matter only to training.
SAMPLING = {"num_examples": 24, "capacity": 24, "overflow_budget": 1e-6}


def _dp(l2_clip=1.0, noise_multiplier=1.0, **sampling):
    return dpsgd.DPConfig(l2_clip=l2_clip, noise_multiplier=noise_multiplier, **{**SAMPLING, **sampling})


def _batch(num=10, seed=0):
    return helpers.pool(num, seed, num_classes=4, offset=False)


def _grads_one_by_one(fns, variables, images, labels):
    """Each example's gradient computed on its own (a Python loop, no vmap): the reference."""
    grad = jax.jit(jax.grad(dpsgd.example_loss(fns, variables)))
    return [grad(variables["params"], x, y) for x, y in zip(images, labels)]


def _norm(tree):
    return float(jnp.sqrt(sum(jnp.sum(x**2) for x in jax.tree.leaves(tree))))


def _clip(tree, clip):
    factor = min(1.0, clip / (_norm(tree) + dpsgd.NORM_EPS))
    return jax.tree.map(lambda g: g * factor, tree)


@pytest.mark.slow
def test_clipping_bounds_every_example_and_leaves_small_ones_alone(tiny):
    images, labels = _batch()
    variables = tiny.init(jax.random.key(1))
    raw = _grads_one_by_one(tiny, variables, images, labels)
    clip = float(np.median([_norm(g) for g in raw]))  # About half the examples get clipped.
    loss = dpsgd.example_loss(tiny, variables)
    _, clipped, norms = dpsgd.clipped_example_grads(loss, variables["params"], images, labels, clip)
    for i, g in enumerate(raw):
        mine = jax.tree.map(lambda c, i=i: c[i], clipped)
        assert _norm(mine) <= clip + 1e-5
        np.testing.assert_allclose(float(norms[i]), _norm(g), rtol=1e-5)
        if _norm(g) + dpsgd.NORM_EPS <= clip:
            # atol: leaves whose gradient is zero up to float32 rounding (a conv bias before instance norm) differ
            # by that rounding, ~1e-7, between the vmapped and the one-by-one programs.
            chex.assert_trees_all_close(mine, g, rtol=1e-5, atol=1e-6)
    assert 0 < int(jnp.sum(norms > clip)) < len(raw)


@pytest.mark.parametrize("chunk", [0, 4])  # 4 does not divide 10: exercises the chunk padding.
@pytest.mark.slow
def test_noiseless_dp_sum_is_the_clipped_sum_over_real_examples(tiny, chunk):
    images, labels = _batch()
    weights = jnp.ones(10).at[7:].set(0.0)  # The last 3 slots are padding.
    variables = tiny.init(jax.random.key(2))
    config = _dp(l2_clip=0.5, noise_multiplier=0.0)
    loss, grads, stats = jax.jit(dpsgd.private_grad_sum, static_argnums=(0, 1, 5))(
        tiny, config, variables, (images, labels, weights), jax.random.key(3), chunk
    )
    real = [_clip(g, 0.5) for g in _grads_one_by_one(tiny, variables, images[:7], labels[:7])]
    expected = jax.tree.map(lambda *g: sum(g), *real)
    chex.assert_trees_all_close(grads, expected, rtol=1e-5, atol=1e-7)
    chex.assert_trees_all_close(
        loss,
        jnp.mean(
            jax.vmap(dpsgd.example_loss(tiny, variables), (None, 0, 0))(variables["params"], images[:7], labels[:7])
        ),
        rtol=1e-6,
    )
    assert 0.0 <= float(stats["clipped_fraction"]) <= 1.0 and float(stats["mean_norm"]) > 0


@pytest.mark.slow
def test_without_clipping_or_noise_the_dp_gradient_is_the_ordinary_gradient(tiny):
    """A second code path: with a huge clip, no noise and no padding, DP-SGD's gradient is
    the mean gradient of the ordinary (non-DP) training step."""
    images, labels = _batch(8)
    weights = jnp.ones(8)
    variables = tiny.init(jax.random.key(4))
    config = _dp(l2_clip=1e6, noise_multiplier=0.0)
    _, dp_sum, _ = jax.jit(dpsgd.private_grad_sum, static_argnums=(0, 1, 5))(
        tiny, config, variables, (images, labels, weights), jax.random.key(5), 3
    )
    dp_grads = jax.tree.map(lambda g: g / 8, dp_sum)
    trainer = train.Trainer(tiny, train.make_optimizer(train.TrainConfig(), 0.1), microbatch=0)
    _, plain, _ = jax.jit(train._loss_and_grads, static_argnums=0)(trainer, variables, images, labels, weights)
    chex.assert_trees_all_close(dp_grads, plain, rtol=1e-4, atol=1e-7)


@pytest.mark.slow
def test_noise_has_the_calibrated_std_and_comes_only_from_the_key(tiny):
    images, labels = _batch()
    batch = (images, labels, jnp.ones(10))
    variables = tiny.init(jax.random.key(6))
    step = jax.jit(dpsgd.private_grad_sum, static_argnums=(0, 1, 5))
    noisy_config = _dp(l2_clip=0.7, noise_multiplier=2.0)
    _, clean, _ = step(tiny, _dp(0.7, 0.0), variables, batch, jax.random.key(7), 0)
    _, noisy, _ = step(tiny, noisy_config, variables, batch, jax.random.key(7), 0)
    _, again, _ = step(tiny, noisy_config, variables, batch, jax.random.key(7), 0)
    _, other, _ = step(tiny, noisy_config, variables, batch, jax.random.key(8), 0)
    noise = np.concatenate([np.ravel(a - b) for a, b in zip(jax.tree.leaves(noisy), jax.tree.leaves(clean))])
    assert noise.size > 500
    np.testing.assert_allclose(noise.std(), 2.0 * 0.7, rtol=0.1)  # sigma * C on the sum.
    assert abs(noise.mean()) < 4 * noise.std() / np.sqrt(noise.size)
    chex.assert_trees_all_equal(noisy, again)  # Same key: bitwise the same gradient.
    assert not np.array_equal(jax.tree.leaves(noisy)[0], jax.tree.leaves(other)[0])


@pytest.mark.parametrize(
    "n,batch,noise,epochs,delta,expected",
    [
        # tensorflow/privacy, tensorflow_privacy/privacy/analysis/compute_dp_sgd_privacy_test.py,
        # test_compute_dp_sgd_privacy 'Test0' and 'Test1' (values from the TF Privacy maintainers'
        # dp_accounting-based RDP computation, printed to full double precision; steps =
        # ceil(epochs * n / batch), which is epochs * ceil(n / batch) here as batch divides n).
        (60000, 150, 1.3, 15, 1e-5, 0.7242234026109595),
        (100000, 100, 1.0, 30, 1e-7, 1.4154988495444845),
    ],
)
def test_rdp_epsilon_matches_published_values(n, batch, noise, epochs, delta, expected):
    q, steps = batch / n, epochs * n // batch
    assert accounting.epsilon_rdp(noise, q, steps, delta) == pytest.approx(expected, rel=1e-6)
    assert accounting.epsilon(noise, q, steps, delta) == accounting.epsilon_rdp(noise, q, steps, delta)


def test_epsilon_is_below_the_tf_privacy_mnist_tutorial_value():
    # tensorflow/privacy tutorials/README.md ("Select Parameters", first row): N = 60000,
    # batch 256, noise 1.12, 60 epochs, delta 1e-5 -> eps 2.92 with the older RDP-to-DP
    # conversion; the improved conversion dp_accounting uses can only lower it.
    eps = accounting.epsilon(1.12, 256 / 60000, 60 * (60000 // 256), 1e-5)
    assert 2.0 < eps <= 2.92


@pytest.mark.slow
def test_noise_for_epsilon_round_trips_with_pld_and_is_monotone():
    q, steps, _ = dpsgd.poisson_schedule(500, 64, 40)  # The CPU tier's former DP rows.
    noises = [accounting.noise_for_epsilon(e, q, steps, 1e-5) for e in (1.0, 4.0, 8.0)]
    for e, noise in zip((1.0, 4.0, 8.0), noises):
        assert e - 2e-3 <= accounting.epsilon_pld(noise, q, steps, 1e-5) <= e
        # The looser RDP bound needs more noise for the same target.
        assert accounting.noise_for_epsilon(e, q, steps, 1e-5, "rdp") > noise
    assert noises[0] > noises[1] > noises[2] > 0
    assert accounting.epsilon(0.0, q, steps, 1e-5) == accounting.epsilon_pld(0.0, q, steps, 1e-5) == math.inf


def test_pld_epsilon_is_dp_accountings_pld_for_the_same_event():
    """Ours is exactly a direct PLDAccountant on Poisson(q, Gaussian(sigma)) composed T times."""
    sigma, q, steps, delta = 1.3, 0.05, 200, 1e-5
    direct = pld_privacy_accountant.PLDAccountant(value_discretization_interval=accounting.PLD_DISCRETIZATION)
    direct.compose(
        accounting.dp_accounting.PoissonSampledDpEvent(q, accounting.dp_accounting.GaussianDpEvent(sigma)), steps
    )
    assert accounting.epsilon_pld(sigma, q, steps, delta) == direct.get_epsilon(delta)
    fine = pld_privacy_accountant.PLDAccountant()  # dp_accounting's default, finer discretisation.
    fine.compose(accounting.dpsgd_event(sigma, q, steps))
    assert accounting.epsilon_pld(sigma, q, steps, delta) == pytest.approx(fine.get_epsilon(delta), rel=1e-3)


def test_pld_epsilon_reproduces_dp_accountings_own_test_value():
    # dp_accounting 0.6.0, pld/pld_privacy_accountant_test.py, test_self_composed_subsampled_gaussian:
    # SelfComposed(PoissonSampled(0.2, Gaussian(0.5)), 3) has delta 0.15594 at epsilon 1 (their tolerance 1e-3).
    assert accounting.epsilon_pld(0.5, 0.2, 3, 0.15594) == pytest.approx(1.0, abs=2e-3)


@pytest.mark.parametrize("sigma,q,steps", [(0.8, 0.128, 313), (2.6, 0.128, 313), (1.0, 0.01, 1000), (4.0, 0.5, 50)])
def test_pld_epsilon_is_at_most_rdp(sigma, q, steps):
    pld, rdp = accounting.epsilon_pld(sigma, q, steps, 1e-5), accounting.epsilon_rdp(sigma, q, steps, 1e-5)
    assert 0.5 * rdp < pld <= rdp  # Tighter, and not absurdly so (both bound the same event).


def test_overflow_delta_adds_the_total_variation_term():
    assert accounting.overflow_delta(1e-5, 2.0, 1e-9) == pytest.approx(1e-5 + (1 + math.exp(2.0)) * 1e-9)
    assert accounting.overflow_delta(1e-5, 2.0, 0.0) == 1e-5
    with pytest.raises(ValueError, match="overflow"):
        accounting.overflow_delta(1e-5, 2.0, -1e-9)


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"l2_clip": 0.0}, "l2_clip"),
        ({"l2_clip": -1.0}, "l2_clip"),
        ({"noise_multiplier": -0.1}, "noise_multiplier"),
        ({"noise_multiplier": float("nan")}, "noise_multiplier"),
        ({"num_examples": 0}, "num_examples"),
        ({"capacity": 2.5}, "capacity"),
        ({"overflow_budget": 0.0}, "overflow_budget"),
    ],
)
def test_bad_dp_configs_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        _dp(**kwargs)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: accounting.epsilon(1.0, 0.0, 10, 1e-5), "sample_rate"),
        (lambda: accounting.epsilon(1.0, 1.5, 10, 1e-5), "sample_rate"),
        (lambda: accounting.epsilon(1.0, 0.1, 0, 1e-5), "steps"),
        (lambda: accounting.epsilon(1.0, 0.1, 10, 1.0), "delta"),
        (lambda: accounting.epsilon(-1.0, 0.1, 10, 1e-5), "noise_multiplier"),
        (lambda: accounting.noise_for_epsilon(0.0, 0.1, 10, 1e-5), "target_epsilon"),
        (lambda: accounting.noise_for_epsilon(float("inf"), 0.1, 10, 1e-5), "target_epsilon"),
        (lambda: accounting.epsilon(1.0, 0.1, 10, 1e-5, "moments"), "accountant"),
        (lambda: dpsgd.poisson_schedule(0, 64, 1), "num_examples"),
        (lambda: dpsgd.poisson_schedule(500, 64, 0), "epochs"),
        (lambda: dpsgd.poisson_capacity(500, 0.1, 10, 0.0), "budget"),
        (lambda: train.TrainConfig(dp=0.5), "dp"),
    ],
)
def test_bad_accounting_and_train_settings_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_batchnorm_networks_are_refused():
    bn = models.make_model(models.ModelConfig(name="convnet_bn", width=4, depth=1), (8, 8, 1), 4)
    images, labels = _batch(4)
    with pytest.raises(ValueError, match="BatchNorm"):
        dpsgd.private_grad_sum(bn, _dp(), bn.init(jax.random.key(0)), (images, labels, jnp.ones(4)), jax.random.key(1))
    config = train.TrainConfig(epochs=1, batch_size=4, dp=_dp(num_examples=4, capacity=5))
    with pytest.raises(ValueError, match="BatchNorm"):
        train.train_from_init(
            bn, config, train.make_schedule(config, 4), jax.random.key(2), (images, labels, jnp.ones(4, bool))
        )


@pytest.mark.slow
def test_dp_training_runs_in_a_bank_and_is_deterministic(tiny):
    images, labels = _batch(24)
    masks = jnp.ones((2, 24), bool).at[1, :5].set(False)
    keys = jax.random.split(jax.random.key(9), 2)
    dp_config = train.TrainConfig(epochs=2, batch_size=8, augment="dc", dp=_dp(capacity=21))
    run = lambda k: engine.train_models(tiny, dp_config, k, (images, labels, masks), "map")  # noqa: E731
    first, again, other = run(keys), run(keys), run(jax.random.split(jax.random.key(10), 2))
    chex.assert_trees_all_equal(first, again)  # Noise, sampling and augmentation come from the keys.
    chex.assert_shape(first[1], (2, 2))  # Losses per expected epoch.
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(first))
    assert not np.array_equal(jax.tree.leaves(first[0])[0], jax.tree.leaves(other[0])[0])


@pytest.mark.slow
def test_non_dp_step_is_the_unchanged_pre_dp_step(tiny):
    """dp=None takes exactly the old path: augment with ``key``, ordinary gradient, update."""
    images, labels = _batch(8)
    weights = jnp.ones(8).at[6:].set(0.0)
    trainer = train.Trainer(
        tiny, train.make_optimizer(train.TrainConfig(), 0.1), augment.get_augment("dc"), microbatch=3
    )
    variables = tiny.init(jax.random.key(10))
    state = train.TrainState(variables, trainer.optimizer.init(variables["params"]))
    key = jax.random.key(11)
    new, loss = train.train_step(trainer, state, (images, labels, weights), key)
    augmented = trainer.augment(key, images)
    ref_loss, grads, _ = train._loss_and_grads(trainer, variables, augmented, labels, weights)
    updates, _ = trainer.optimizer.update(grads, state.opt_state, variables["params"])
    chex.assert_trees_all_equal(new.variables["params"], optax.apply_updates(variables["params"], updates))
    chex.assert_trees_all_equal(loss, ref_loss)
    # The DP step augments with the same key: without clipping or noise it is the same step.
    dp_trainer = trainer._replace(dp=_dp(l2_clip=1e6, noise_multiplier=0.0), dp_denominator=8.0)
    step = jax.jit(train.train_step, static_argnums=0)
    dp_new, _ = step(dp_trainer, state, (images, labels, jnp.ones(8)), key)
    plain_new, _ = step(trainer, state, (images, labels, jnp.ones(8)), key)
    chex.assert_trees_all_close(dp_new.variables, plain_new.variables, rtol=1e-4, atol=1e-6)


def _draws(mask, q, capacity, keys):
    """poisson_batch for every key: indices [K, capacity], weights [K, capacity]."""
    return jax.jit(jax.vmap(lambda k: dpsgd.poisson_batch(k, mask, q, capacity)))(keys)


@pytest.mark.slow
def test_poisson_batches_include_each_example_with_probability_q_and_never_the_masked_out():
    mask = jnp.ones(60, bool).at[::7].set(False)
    q, steps = 0.2, 4000
    idx, w = _draws(mask, q, 60, jax.random.split(jax.random.key(0), steps))
    counts = np.zeros(60)
    np.add.at(counts, np.asarray(idx)[np.asarray(w) > 0], 1)
    member = np.asarray(mask)
    assert counts[~member].sum() == 0
    sd = math.sqrt(steps * q * (1 - q))
    assert np.all(np.abs(counts[member] - steps * q) < 5 * sd)  # Each example: Binomial(steps, q).
    sizes = np.asarray(w).sum(1)
    assert abs(sizes.mean() - q * member.sum()) < 0.05 * q * member.sum()  # Variable size, mean q * n.
    assert sizes.std() > 1 and len(set(sizes.tolist())) > 5
    # Within a step every drawn example appears once; valid slots come first.
    for row_idx, row_w in zip(np.asarray(idx)[:50], np.asarray(w)[:50]):
        drawn = row_idx[row_w > 0]
        assert len(set(drawn.tolist())) == len(drawn) and np.all(np.diff(row_w) <= 0)


def test_poisson_batches_are_a_function_of_the_key():
    mask = jnp.ones(40, bool)
    keys = jax.random.split(jax.random.key(1), 3)
    first, again = _draws(mask, 0.3, 40, keys), _draws(mask, 0.3, 40, keys)
    chex.assert_trees_all_equal(first, again)
    assert not np.array_equal(first[0][0], first[0][1])  # Another key, another batch.


def test_overflow_keeps_the_first_capacity_drawn_examples_in_pool_order():
    mask = jnp.ones(30, bool)
    idx, w = dpsgd.poisson_batch(jax.random.key(2), mask, 0.9, 5)  # ~27 drawn, 5 slots.
    full, w_full = dpsgd.poisson_batch(jax.random.key(2), mask, 0.9, 30)
    assert float(w.sum()) == 5 and float(w_full.sum()) > 5
    np.testing.assert_array_equal(idx, full[:5])


def _binomial_tail(n, q, c):
    """P(Binomial(n, q) > c), summed exactly with math.comb (independent of scipy)."""
    return sum(math.comb(n, k) * q**k * (1 - q) ** (n - k) for k in range(c + 1, n + 1))


@pytest.mark.parametrize("n,q,steps,budget", [(60, 0.2, 50, 1e-6), (565, 0.128, 313, 3.4e-12), (30, 1.0, 5, 1e-9)])
def test_capacity_is_the_smallest_size_whose_summed_tail_is_within_budget(n, q, steps, budget):
    c = dpsgd.poisson_capacity(n, q, steps, budget)
    assert steps * _binomial_tail(n, q, c) <= budget * (1 + 1e-6)
    assert c == n or steps * _binomial_tail(n, q, c - 1) > budget * (1 - 1e-6)
    assert dpsgd.overflow_probability(n, q, steps, c) == pytest.approx(
        steps * _binomial_tail(n, q, c), rel=1e-6, abs=1e-300
    )
    assert dpsgd.overflow_probability(n, q, steps, c) <= budget


def test_poisson_schedule_uses_expected_epochs():
    assert dpsgd.poisson_schedule(500, 64, 40) == (0.128, 313, 64)  # round(312.5) = 313: halves up.
    assert dpsgd.poisson_schedule(500, 100, 10) == (0.2, 50, 100)
    assert dpsgd.poisson_schedule(50, 64, 3) == (1.0, 3, 50)  # The batch is capped at n.


def test_a_capacity_too_small_for_the_data_is_refused():
    config = train.TrainConfig(epochs=2, batch_size=8, dp=_dp(capacity=12))
    with pytest.raises(ValueError, match="capacity 12 is too small"):
        train.make_schedule(config, 24)
    dpsgd.check_capacity(_dp(capacity=21), 8, 2, 24)  # Enough: no error.


@pytest.mark.slow
def test_padding_slots_contribute_nothing_and_the_step_divides_the_sum_by_q_times_n(tiny):
    """A noiseless Poisson step of plain SGD (lr 1): params - (clipped sum of the drawn examples) / (q * n)."""
    images, labels = _batch(24, seed=3)
    mask = jnp.ones(24, bool).at[20:].set(False)
    variables = tiny.init(jax.random.key(4))
    q, _, expected = dpsgd.poisson_schedule(20, 5, 1)
    idx, w = dpsgd.poisson_batch(jax.random.key(5), mask, q, 16)
    drawn = np.asarray(idx)[np.asarray(w) > 0]
    assert 0 < len(drawn) < 16 and len(drawn) != expected  # The sampled size is not the divisor.
    sgd = train.make_optimizer(train.TrainConfig(momentum=0.0, weight_decay=0.0), 1.0)
    trainer = train.Trainer(
        tiny, sgd, microbatch=4, dp=_dp(l2_clip=0.3, noise_multiplier=0.0), dp_denominator=float(expected)
    )
    state = train.TrainState(variables, sgd.init(variables["params"]))
    step = jax.jit(train.train_step, static_argnums=0)
    new, _ = step(trainer, state, (images[idx], labels[idx], w), jax.random.key(6))
    garbage = images[idx].at[len(drawn) :].set(1e3)  # Padding slots hold anything: still no effect.
    same, _ = step(trainer, state, (garbage, labels[idx], w), jax.random.key(6))
    real = [_clip(g, 0.3) for g in _grads_one_by_one(tiny, variables, images[drawn], labels[drawn])]
    expected_params = jax.tree.map(lambda p, *g: p - sum(g) / (q * 20), variables["params"], *real)
    chex.assert_trees_all_close(new.variables["params"], expected_params, rtol=1e-5, atol=1e-7)
    chex.assert_trees_all_equal(new, same)


@pytest.mark.slow
def test_one_compiled_dp_step_serves_every_batch_size(tiny):
    images, labels = _batch(24, seed=7)
    mask = jnp.ones(24, bool)
    trainer = train.Trainer(
        tiny, train.make_optimizer(train.TrainConfig(), 0.1), microbatch=4, dp=_dp(capacity=20), dp_denominator=6.0
    )
    variables = tiny.init(jax.random.key(8))
    state = train.TrainState(variables, trainer.optimizer.init(variables["params"]))

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(state, key):
        sample_key, step_key = jax.random.split(key)
        idx, w = dpsgd.poisson_batch(sample_key, mask, 0.25, 20)
        return train.train_step(trainer, state, (images[idx], labels[idx], w), step_key)[0], w.sum()

    sizes = set()
    for i in range(6):
        state, size = step(state, jax.random.key(100 + i))
        sizes.add(float(size))
    assert len(sizes) > 1  # Different sampled sizes, one trace.


@pytest.mark.slow
def test_an_empty_poisson_batch_still_takes_a_noisy_step(tiny):
    """Skipping it would reveal that no example was drawn; the accountant analyses a noise-only step."""
    images, labels = _batch(8)
    trainer = train.Trainer(
        tiny, train.make_optimizer(train.TrainConfig(), 0.1), dp=_dp(noise_multiplier=1.0), dp_denominator=4.0
    )
    variables = tiny.init(jax.random.key(9))
    state = train.TrainState(variables, trainer.optimizer.init(variables["params"]))
    new, _ = train.train_step(trainer, state, (images, labels, jnp.zeros(8)), jax.random.key(10))
    assert not np.array_equal(jax.tree.leaves(new.variables)[0], jax.tree.leaves(variables)[0])


@pytest.mark.slow
def test_dp_training_runs_round_epochs_over_q_steps_in_two_phases(tiny, monkeypatch):
    """train_from_init runs round(epochs * n / B) Poisson steps: half at lr, half at lr / 10."""
    plans, traces = [], []
    run, sample = train.run_poisson_steps, dpsgd.poisson_batch
    monkeypatch.setattr(
        train, "run_poisson_steps", lambda trainer, plan, *a: plans.append(plan) or run(trainer, plan, *a)
    )
    monkeypatch.setattr(dpsgd, "poisson_batch", lambda *a: traces.append(1) or sample(*a))
    images, labels = _batch(24)
    config = train.TrainConfig(epochs=3, batch_size=7, dp=_dp(capacity=24))
    q, steps, _ = dpsgd.poisson_schedule(24, 7, 3)
    assert steps == 10  # round(3 * 24 / 7) = round(10.29).
    _, losses = train.train_from_init(
        tiny, config, train.make_schedule(config, 24), jax.random.key(2), (images, labels, jnp.ones(24, bool))
    )
    assert plans == [train.PoissonPlan(q, 24, 5, 1), train.PoissonPlan(q, 24, 5, 2)]
    assert len(traces) == 2  # One trace of the scan body per phase, whatever the number of steps.
    chex.assert_shape(losses, (3,))  # Per expected epoch.
    assert bool(jnp.all(jnp.isfinite(losses)))


@pytest.mark.users_emitters  # A run resumed mid-way against the straight run, bit for bit (tests/conftest.py).
@pytest.mark.slow
def test_a_dp_run_continued_from_its_checkpoints_is_the_straight_run_bitwise(tiny):
    """Checkpoints inside the first phase and inside the second: continuing each from the state the previous one
    reached (across the lr drop, whose fresh optimizer it must take) gives the straight run's models, bitwise. So
    every checkpoint is a state of that one run, on its lr schedule, not a shorter run of its own."""
    images, labels = _batch(24)
    data = (images, labels, jnp.ones((2, 24), bool).at[1, :5].set(False))
    keys = jax.random.split(jax.random.key(9), 2)
    run = train.TrainConfig(epochs=4, batch_size=7, dp=_dp(capacity=24))
    assert [train.dp_steps(run, e) for e in (1, 3, 4)] == [3, 10, 14]  # The lr drops after step 7 of 14.
    straight, straight_losses = engine.train_models(tiny, run, keys, data, "map")
    states, start = None, 0
    for stop, strategy in ((1, "map"), (3, "map"), (4, "loop")):  # The last: a loop of single-model runs.
        at = dataclasses.replace(run, stop_epochs=stop)
        states = engine.resume_models(tiny, at, engine.Resume(keys, start, states), data, strategy)
        start = stop
    chex.assert_trees_all_equal(states.variables, straight)
    np.testing.assert_allclose(train.dp_losses(states, 4), straight_losses, rtol=1e-6)
    chex.assert_shape(train.dp_losses(states, 3), (2, 3))


@pytest.mark.parametrize("start,stop", [(2, 2), (3, 2), (0, None)])
def test_resume_models_only_continues_a_dp_run_to_a_later_checkpoint(tiny, start, stop):
    run = train.TrainConfig(epochs=4, batch_size=7, dp=_dp(capacity=24), stop_epochs=stop)
    images, labels = _batch(24)
    with pytest.raises(ValueError, match="stop_epochs"):
        engine.resume_models(
            tiny,
            run,
            engine.Resume(jax.random.split(jax.random.key(0), 1), start),
            (images, labels, jnp.ones((1, 24), bool)),
        )


@pytest.mark.parametrize("kwargs", [{"stop_epochs": 0}, {"stop_epochs": 5}, {"stop_epochs": 2, "dp": None}])
def test_a_stop_outside_the_dp_run_is_refused(kwargs):
    with pytest.raises(ValueError, match="stop_epochs"):
        train.TrainConfig(**{"epochs": 4, "dp": _dp(), **kwargs})


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TUNE = [
    "experiments/dp_tune.py",
    "--target_pool=20",
    "--attacker_pool=20",
    "--private_size=30",
    "--val_size=40",
    "--width=4",
    "--depth=1",
    "--batch_sizes=10",
    "--dp_epochs=1",
    "--lrs=0.1",
    "--epsilons=8,2",
]


TUNE_REJECTS = [("lrs", "0.1,-1"), ("batch_sizes", "0"), ("epsilons", "inf"), ("dp_delta", "1")]
TUNE_REJECTS += [("val_size", "0"), ("private_size", "200")]


@pytest.fixture(scope="module")
def tune_rejected(tmp_path_factory):
    """Each TUNE_REJECTS flag set on _TUNE, run on mock data (launch_flags.launch_each): {flag: (process, workdir)}."""
    root = tmp_path_factory.mktemp("tune_rejected")
    workdirs = [root / flag / "w" for flag, _ in TUNE_REJECTS]
    cases = [_TUNE + [f"--workdir={w}", f"--{flag}={value}"] for (flag, value), w in zip(TUNE_REJECTS, workdirs)]
    procs = launch_flags.launch_each(cases, mock_examples=120)
    return {flag: (proc, w) for (flag, _), proc, w in zip(TUNE_REJECTS, procs, workdirs)}


@pytest.mark.parametrize("flag,value", TUNE_REJECTS)
@pytest.mark.xdist_group("tune_rejected")  # One worker runs `tune_rejected`.
@pytest.mark.slow
def test_dp_tune_rejects_bad_flags_before_writing(tune_rejected, flag, value):
    proc, workdir = tune_rejected[flag]
    assert proc.returncode != 0 and f"--{flag}" in proc.stderr.strip().splitlines()[-1], proc.stderr[-2000:]
    assert not os.path.exists(workdir)


# --inside_pool: pools covering all 120 mock examples leave none outside them; the tuning data come from all of them.
@pytest.mark.parametrize("more", [[], ["--inside_pool", "--target_pool=100"]], ids=["outside_pools", "inside_pool"])
@pytest.mark.slow
def test_dp_tune_sweeps_on_mock_data_and_records_every_setting(tmp_path, more):
    proc = launch_flags.launch(_TUNE + [f"--workdir={tmp_path}/w"] + more, 120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "w" / "results.json").read_text())
    assert ("pools included" in results["tuning_data"]) == results["flags"]["inside_pool"] == bool(more)
    assert ("target_pool" in results["flags"]) != bool(more)  # --inside_pool ignores the pools: not recorded.
    assert set(results["provenance"]) >= {"commit", "cpu"}
    shared = results["best_shared"]  # One setting in the grid: its mean over the two epsilons.
    mean = sum(s["val_accuracy"] for s in results["settings"]) / 2
    assert (shared["batch_size"], shared["lr"], shared["mean_val_accuracy"]) == (10, 0.1, pytest.approx(mean))
    assert [s["epsilon"] for s in results["settings"]] == [8.0, 2.0]
    for s in results["settings"]:
        assert 0.0 <= s["val_accuracy"] <= 1.0
        assert s["dp"]["epsilon_pld"] <= s["epsilon"] < s["dp"]["epsilon_rdp"]
        assert s["dp"]["sample_rate"] == 10 / 30 and s["dp"]["steps"] == 3
    private, val = set(results["private_indices"]), set(results["val_indices"])
    assert (len(private), len(val)) == (30, 40) and not private & val
    assert set(results["best"]) == {"8", "2"}
    assert "validation accuracy" in (tmp_path / "w" / "RESULTS.md").read_text()
    assert not any(name.startswith(".tmp") for name in os.listdir(tmp_path / "w"))  # Atomic writes only.


@pytest.mark.slow
def test_dp_tune_refuses_pools_that_leave_no_tuning_data(tmp_path):
    proc = launch_flags.launch(_TUNE + [f"--workdir={tmp_path}/w", "--target_pool=100"], 120)
    assert proc.returncode != 0 and "--target_pool" in proc.stderr.strip().splitlines()[-1], proc.stderr[-2000:]


TUNINGS = sorted(glob.glob(os.path.join(ROOT, "docs", "dp_tuning_*", "results.json")))


@pytest.mark.parametrize("path", TUNINGS, ids=lambda p: os.path.basename(os.path.dirname(p)))
def test_every_committed_tuning_table_regenerates_from_its_records(path):
    dp_tune = helpers.launcher("dp_tune")[0]
    results = json.loads(open(path).read())
    inside_pool = results["flags"].get("inside_pool", False)  # Sweeps before the flag drew outside the pools.
    expected = open(os.path.join(os.path.dirname(path), "RESULTS.md")).read()
    assert dp_tune.markdown(results["settings"], inside_pool) == expected
