"""Memory estimates from shapes: absurd runs refused at once, estimates near XLA's own, small runs let through."""

import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import K, SHAPE, TINY

from dcjax import condense, data, engine, evaluation, memory, models
from dcjax.condense import memory as condense_memory
from dcjax.condense import run as condense_run
from dcjax import train as train_lib
from dcjax.privacy import bank, shokri, study
from dcjax.privacy import memory as privacy_memory
from dcjax.privacy.config import AttackRunConfig

SMALL = condense.CondenseConfig(
    ipc=2, iterations=3, outer_loop=3, inner_loop=2, batch_real=4, batch_train=4, init="real", class_strategy="map"
)
# XLA's buffers vs the analytic estimate: the stated accuracy of dcjax.memory.
LOW, HIGH = 0.5, 3.0


def _dataset(n, shape=SHAPE, num_classes=K):
    labels = np.arange(n, dtype=np.int32) % num_classes
    return data.ArrayDataset(np.zeros((n, *shape), np.float32), labels, num_classes, "mnist")


def _xla_bytes(compiled) -> int:
    """What XLA allocates for one call: arguments, outputs and temporaries, less the donated (aliased) buffers."""
    m = compiled.memory_analysis()
    return m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes


def _specs(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def test_an_absurd_condensation_is_refused_at_once_before_anything_is_written(tmp_path):
    # The launcher's --ipc=100000 on MNIST with the paper's ConvNet-128 (noise init): XLA asked for 6.2 TiB.
    mnist = models.make_model(models.ModelConfig(), (28, 28, 1), 10)
    config = condense_run.RunConfig(
        condense=condense.CondenseConfig(ipc=100000, iterations=1), eval_every=0, eval_baseline=False
    )
    train, test = _dataset(3000, (28, 28, 1), 10), _dataset(100, (28, 28, 1), 10)
    workdir = tmp_path / "run"
    tic = time.perf_counter()
    with pytest.raises(ValueError, match=r"condensation needs ~[\d.]+ TiB .*available; lower --ipc") as error:
        condense_run.run_condensation(config, mnist, train, test, str(workdir))
    assert time.perf_counter() - tic < 10  # ~0.3 s on an idle 2-core CPU: one shape-only trace, no compile.
    assert "\n" not in str(error.value) and "synthetic set 100000 x 10 images" in str(error.value)
    assert not workdir.exists()


def test_vmapped_classes_and_many_models_name_the_flags_that_lower_them(fns):
    big = dataclasses.replace(SMALL, ipc=10**7, class_strategy="vmap")
    estimate = condense_memory.condensation_estimate(fns, big, SHAPE, K, 30, models=(4, 4))
    with pytest.raises(ValueError, match="lower --ipc or --class_strategy=map or --models_per_chunk"):
        memory.check_fits(estimate, "condensation")


def test_the_skip_variable_logs_instead_of_refusing(fns, monkeypatch):
    estimate = condense_memory.condensation_estimate(fns, dataclasses.replace(SMALL, ipc=10**7), SHAPE, K, 30)
    monkeypatch.setenv(memory.SKIP_ENV, "1")
    memory.check_fits(estimate, "condensation")


def test_available_memory_is_positive_and_below_the_machine_total():
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert 0 < memory.available_bytes() <= total
    assert 0 < memory.available_bytes(jax.devices()[-1]) <= total


def test_bytes_are_formatted_in_binary_units():
    assert memory.format_bytes(512) == "512 B"
    assert memory.format_bytes(3 * 2**20) == "3.0 MiB"
    assert memory.format_bytes(6.2 * 2**40) == "6.2 TiB"
    assert memory.format_bytes(5000 * 2**40) == "5000.0 TiB"


def test_small_runs_pass_every_check(fns):
    train, test = _dataset(60), _dataset(20)
    condense_memory.check_condensation(condense_run.RunConfig(condense=SMALL), fns, train, test)
    attack = AttackRunConfig(
        model=TINY,
        train=train_lib.TrainConfig(epochs=2, batch_size=8),
        num_models=6,
        target_pool=20,
        num_shadow=2,
        attacker_pool=20,
        num_population=10,
        attack=shokri.AttackConfig(hidden=4, steps=3),
        recipe=bank.Recipe("condense", condense=SMALL),
    )
    privacy_memory.check_attack_run(attack, fns, train, test)


def test_a_study_row_that_cannot_fit_is_refused_before_the_workdir_is_written(fns, tmp_path):
    attack = dataclasses.replace(
        study.StudyConfig().attack, num_models=6, num_shadow=2, target_pool=60, attacker_pool=60, num_population=10
    )
    config = study.StudyConfig(
        attack=attack,
        rows=("original", "dc_noise"),
        condense=dataclasses.replace(SMALL, ipc=10**7, init="noise", batch_real=2),
    )
    with pytest.raises(ValueError, match="row dc_noise .*lower --ipc"):
        study.run_study(config, fns, (_dataset(150), _dataset(20)), str(tmp_path / "study"), {})
    assert not (tmp_path / "study").exists()


def _pool(n=30):
    labels = np.arange(n) % K
    return jnp.zeros((n, *SHAPE)), data.build_class_index(labels, K)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["dc", "dm"])
def test_the_condensation_estimate_is_near_xla_s_buffers(fns, method):
    config = dataclasses.replace(SMALL, method=method)
    images, index = _pool()
    state, _ = condense.init_synthetic(config, jax.random.key(0), images, index)
    step = condense.make_iteration_fn(fns, config)
    xla = _xla_bytes(step.lower(*_specs((state, (images, index), jax.random.key(0)))).compile())
    estimate = condense_memory.condensation_estimate(fns, config, SHAPE, K, images.shape[0]).total
    assert LOW <= estimate / xla <= HIGH, (estimate, xla)


@pytest.mark.slow
def test_the_bank_chunk_training_estimate_is_near_xla_s_buffers(fns):
    config, count, pool = train_lib.TrainConfig(epochs=2, batch_size=8), 2, 40
    schedule = train_lib.make_schedule(config, pool)

    def train_chunk(keys, images, labels, masks):
        one = lambda a: train_lib.train_from_init(fns, config, schedule, a[0], (images, labels, a[1]))  # noqa
        return engine.map_models(one, "map", (keys, masks))

    args = (
        jax.random.split(jax.random.key(0), count),
        jnp.zeros((pool, *SHAPE)),
        jnp.zeros((pool,), jnp.int32),
        jnp.ones((count, pool), bool),
    )
    xla = _xla_bytes(jax.jit(train_chunk).lower(*_specs(args)).compile())
    estimate = memory.training_estimate(fns, config, SHAPE, pool, memory.Bank(count, 1, "--models_per_chunk"), 0)
    assert LOW <= estimate.total / xla <= HIGH, (estimate, xla)


def test_evaluation_counts_every_model_under_vmap_and_one_under_map(fns):
    vmapped = evaluation.EvalConfig(num_models=20, train=train_lib.TrainConfig(epochs=1), strategy="vmap")
    mapped = dataclasses.replace(vmapped, strategy="map")
    a, b = (memory.evaluation_estimate(fns, c, SHAPE, 30, 100) for c in (vmapped, mapped))
    assert a.parts["training step"] == 20 * b.parts["training step"]


def test_a_run_without_shadows_is_estimated_on_its_target_pool_alone(fns):
    train, test = _dataset(60), _dataset(20)
    attack = AttackRunConfig(
        model=TINY,
        train=train_lib.TrainConfig(epochs=2, batch_size=8),
        num_models=6,
        target_pool=40,
        num_shadow=0,
        attacker_pool=0,
        shokri_sample=20,
        num_population=10,
        attack=shokri.AttackConfig(hidden=4, steps=3),
    )
    privacy_memory.check_attack_run(attack, fns, train, test)
