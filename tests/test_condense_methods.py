"""DSA and DM condensation: wiring of the Siamese augmentation, class strategies, one-iteration smoke tests, runs."""

import dataclasses
import functools

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
from dcjax.condense import distribution_matching as dm
from dcjax.condense import gradient_matching
from dcjax import dsa
from dcjax import evaluation
from dcjax import train
from dcjax.privacy import bank

IPC = 2
# Most tests check the wiring with two cheap ops (the ops themselves are tested in test_dsa.py); the affine ops make
# XLA:CPU compile ~5x longer. The full digits strategy runs in the one-iteration smoke tests.
CHEAP = "crop_cutout"
DSA = condense.CondenseConfig(
    ipc=IPC,
    iterations=2,
    outer_loop=2,
    inner_loop=1,
    batch_real=4,
    batch_train=4,
    init="real",
    method="dsa",
    dsa_strategy=CHEAP,
)
DM = condense.CondenseConfig(
    ipc=IPC, iterations=2, batch_real=4, init="real", method="dm", lr_img=1.0, dsa_strategy=CHEAP
)
FULL = {
    "dsa": dataclasses.replace(DSA, dsa_strategy=dsa.STRATEGY_DIGITS),
    "dm": dataclasses.replace(DM, dsa_strategy=dsa.STRATEGY_DIGITS),
}


def _inputs(fns):
    images, labels = helpers.pool()
    variables = fns.init(jax.random.key(1))
    syn = jax.random.normal(jax.random.key(2), (K * IPC,) + SHAPE)
    real = jnp.stack([images[labels == c][:4] for c in range(K)])
    return variables, syn, real


@pytest.mark.slow
def test_dsa_matching_uses_one_shared_transform_per_class(fns):
    """loss(dsa) == sum_c DC distance of (DSA_k(syn_c), DSA_k(real_c)) with the SAME k = fold_in(key, c)."""
    variables, syn, real = _inputs(fns)
    key = jax.random.key(7)
    plain = dataclasses.replace(DSA, method="dc")

    @jax.jit
    def manual(key):
        total = 0.0
        for c in range(K):
            k = jax.random.fold_in(key, c)
            aug = functools.partial(dsa.dsa_augment, k, strategy=DSA.dsa_strategy, params=dsa.SIAMESE)
            total += gradient_matching._class_distance(
                fns, plain, variables, (aug(syn[c * IPC : (c + 1) * IPC]), aug(real[c])), c, k
            )
        return total

    loss = jax.jit(
        lambda config, k: condense.matching_loss(fns, config, "map", syn, (variables, real), k), static_argnums=0
    )
    got = loss(DSA, key)
    np.testing.assert_allclose(got, manual(key), rtol=1e-5)
    # Cutout always blanks a square, so the manual sum differs from plain DC; another key gives another loss.
    assert not np.isclose(got, loss(DSA, jax.random.key(8)))


@pytest.mark.parametrize("config", [DSA, DM], ids=["dsa", "dm"])
@pytest.mark.slow
def test_class_strategies_give_the_same_loss_and_gradients(fns, config):
    variables, syn, real = _inputs(fns)
    key = jax.random.key(3)
    if config.method == "dm":
        loss = lambda s, strategy: dm.dm_loss(fns, config, strategy, s, (variables, real), key)  # noqa: E731
    else:
        loss = lambda s, strategy: condense.matching_loss(fns, config, strategy, s, (variables, real), key)  # noqa
    results = {
        s: jax.jit(jax.value_and_grad(functools.partial(loss, strategy=s)))(syn) for s in ("vmap", "map")
    }  # 'loop' is the same per-class code as 'map' (matching.sum_over_classes).
    chex.assert_trees_all_close(results["vmap"], results["map"], rtol=1e-4, atol=1e-6)
    assert float(results["map"][0]) > 0
    assert float(jnp.linalg.norm(results["map"][1])) > 0


@pytest.mark.slow
def test_dm_loss_is_zero_when_the_synthetic_batch_is_the_real_batch(fns):
    """With batch-mode DSA the shared transform keeps identical batches identical, so the means coincide."""
    variables, _, real = _inputs(fns)
    config = dataclasses.replace(DM, ipc=4)
    syn = real.reshape((K * 4,) + SHAPE)
    loss = dm.dm_loss(fns, config, "map", syn, (variables, real), jax.random.key(4))
    assert float(loss) < 1e-8
    shifted = dm.dm_loss(fns, config, "map", syn + 0.5, (variables, real), jax.random.key(4))
    assert float(shifted) > 1e-4


@pytest.mark.slow
def test_chunked_mean_embedding_equals_the_whole_batch(fns):
    variables, _, real = _inputs(fns)
    images = real.reshape((-1,) + SHAPE)[:11]
    whole = dm.mean_embedding(fns, variables, images)
    for chunk in (1, 4, 5, 11):
        np.testing.assert_allclose(dm.mean_embedding(fns, variables, images, chunk), whole, rtol=1e-5, atol=1e-6)


def _iterate(fns, config, steps, step=None, seed=0):
    images, labels = helpers.pool()
    index = data.build_class_index(np.asarray(labels), K)
    state, _ = condense.init_synthetic(config, jax.random.key(seed), images, index)
    step = step or condense.make_iteration_fn(fns, config, "map")
    start, losses = np.asarray(state.images), []
    for t in range(steps):
        state, out = step(state, (images, index), jax.random.fold_in(jax.random.key(seed), t))
        losses.append(float(out["loss"]))
    return start, state, losses, step


@pytest.mark.parametrize("config", [FULL["dsa"], FULL["dm"]], ids=["dsa", "dm"])
@pytest.mark.slow
def test_one_jitted_iteration_compiles_once_moves_the_images_and_is_deterministic(fns, config):
    start, state, losses, step = _iterate(fns, config, 2)
    assert step._cache_size() == 1
    assert np.all(np.isfinite(losses)) and not np.allclose(start, state.images)
    _, again, losses_again, _ = _iterate(fns, config, 2, step)  # Same function: no second compilation.
    chex.assert_trees_all_equal(state, again)
    assert losses == losses_again


def test_bad_method_and_strategy_are_rejected():
    with pytest.raises(ValueError, match="method"):
        condense.CondenseConfig(method="kip")
    with pytest.raises(ValueError, match="unknown DSA op"):
        condense.CondenseConfig(method="dsa", dsa_strategy="color_warp")


@pytest.mark.slow
def test_dsa_training_augmentation_trains_a_model(fns):
    images, labels = helpers.pool()
    config = train.TrainConfig(epochs=1, batch_size=8, augment="dsa_digits")
    schedule = train.make_schedule(config, images.shape[0])
    mask = jnp.ones(images.shape[0], bool)
    variables, losses = jax.jit(functools.partial(train.train_from_init, fns, config, schedule))(
        jax.random.key(0), (images, labels, mask)
    )
    assert np.all(np.isfinite(losses))
    assert train.TrainConfig(augment="dsa").augment == "dsa"


@pytest.mark.parametrize("config", [DSA, DM], ids=["dsa", "dm"])
@pytest.mark.slow
def test_a_run_writes_the_same_outputs_as_dc(fns, config, tmp_path):
    train_set, test_set = helpers.dataset(30), helpers.dataset(12, 1)
    run = condense_run.RunConfig(
        seed=1,
        model=TINY,
        condense=config,
        eval_every=0,
        eval_baseline=False,
        eval=evaluation.EvalConfig(num_models=1, train=train.TrainConfig(epochs=1, augment="none")),
    )
    results = condense_run.run_condensation(run, fns, train_set, test_set, str(tmp_path))
    assert results["config"]["condense"]["method"] == config.method
    assert [e["iteration"] for e in results["evals"]] == [0, 2]
    for name in ("synthetic.npz", "synthetic.png", "loss.png", "accuracy.png", "metrics.jsonl", "results.json"):
        assert (tmp_path / name).exists(), name


@pytest.mark.slow
def test_bank_condenses_every_model_with_dm(fns):
    images, labels = helpers.pool()
    keep = np.zeros((2, images.shape[0]), bool)
    keep[0, ::2] = keep[1, 1::2] = True
    syn, init = bank.condense_models(
        fns, DM, jax.random.split(jax.random.key(0), 2), (np.asarray(images), np.asarray(labels), keep)
    )
    assert syn.shape == (2, K * IPC) + SHAPE
    for m in range(2):  # Real init draws each model's images from its own IN half only.
        assert keep[m, init[m]].all()


# Each case compiles its method twice per precision (dsa ~19 s, dm ~11 s): the slow tier (the fast one stays < 2 min).
@pytest.mark.slow
@pytest.mark.parametrize("config", [DSA, DM], ids=["dsa", "dm"])
def test_bf16_precision_runs_bf16_matmuls_and_stays_close_to_fp32(fns, config):
    """precision='bf16' changes only the matching network's matmul inputs: same keys, images within bf16 rounding."""
    low = dataclasses.replace(config, precision="bf16")
    images, labels = helpers.pool()
    index = data.build_class_index(np.asarray(labels), K)
    state, _ = condense.init_synthetic(config, jax.random.key(0), images, index)
    step = functools.partial(condense.condense_iteration, fns, low, "map")
    hlo = jax.jit(step).lower(state, (images, index), jax.random.key(1)).as_text()
    assert "bf16" in hlo  # The dots really take bf16 inputs ...
    fp32_hlo = jax.jit(functools.partial(condense.condense_iteration, fns, config, "map"))
    assert "bf16" not in fp32_hlo.lower(state, (images, index), jax.random.key(1)).as_text()  # ... and fp32's do not.
    _, ours, losses, _ = _iterate(fns, low, 2)
    _, reference, reference_losses, _ = _iterate(fns, config, 2)
    assert ours.images.dtype == jnp.float32  # The synthetic set and its optimizer stay fp32.
    moved = float(jnp.linalg.norm(reference.images - _iterate(fns, config, 0)[1].images))
    # Gradient matching (cosine distances of gradients) is the sensitive case: ~7% of the step at these shapes.
    assert float(jnp.linalg.norm(ours.images - reference.images)) < 0.2 * moved
    np.testing.assert_allclose(losses, reference_losses, rtol=0.05)
