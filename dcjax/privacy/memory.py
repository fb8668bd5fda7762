"""Memory estimates of an attack run's chunks, from the shapes this package owns (``dcjax.memory``: the primitives).

A chunk of an attack run (``attack_run._train_chunk``) turns each model's private data into its training set by
the recipe (condensation included: ``dcjax.condense.memory``), trains the chunk's models and queries them; the
chunks are the run's own (``pools.model_chunks``), so the estimate cannot drift from them.
"""

from __future__ import annotations

import jax

from dcjax import engine
from dcjax import memory
from dcjax.condense import memory as condense_memory
from dcjax.models import ModelFns
from dcjax.privacy import pools
from dcjax.privacy.config import AttackRunConfig


def _live_models(strategy: str, count: int) -> int:
    """Models of an attack chunk whose training temporaries are live at once in the memory checked.

    A chunk that splits evenly over several devices is sharded (``attack_run._mesh_for``): on CPU the devices
    share the host's memory, so all shards count; on accelerators each device holds its share only.
    """
    devices = jax.device_count()
    if devices > 1 and count % devices == 0 and engine.resolve_strategy(strategy) != "loop":
        per_device = memory.model_concurrency(strategy, count // devices)
        return per_device * devices if jax.default_backend() == "cpu" else per_device
    return memory.model_concurrency(strategy, count)


def bank_chunk_estimate(
    config: AttackRunConfig, fns: ModelFns, image_shape, num_classes: int, pool_size: int, sizes: tuple[int, int]
) -> memory.Estimate:
    """Memory of one chunk of an attack run (``attack_run._train_chunk``): its recipe, training and queries.

    Args:
      config: the run's settings.
      image_shape: (H, W, C); num_classes: K; pool_size: n images of the chunk's pool.
      sizes: (c models in the chunk, T test images).
    """
    count, test_size = sizes
    strategy = memory.model_axis(config.strategy)
    condensed = config.recipe.condense if config.recipe.kind == "condense" else None  # Its CondenseConfig.
    queried = config.num_queries * (pool_size + config.num_population) + test_size
    live = _live_models(strategy, count)
    training_pool = count * num_classes * condensed.ipc if condensed is not None else pool_size
    training = memory.training_estimate(
        fns, config.train, image_shape, training_pool, memory.Bank(count, live, "--models_per_chunk"), queried
    )
    if condensed is None:
        return training
    models = (count, memory.model_concurrency(strategy, count))
    return memory.larger(
        training,
        condense_memory.condensation_estimate(fns, condensed, image_shape, num_classes, pool_size, models),
    )


def check_attack_run(config: AttackRunConfig, fns: ModelFns, train, test, what: str = "the attack run") -> None:
    """Refuses (ValueError) an attack run whose largest chunk of either pool cannot fit.

    train, test: the dataset's ``ArrayDataset``s (both pools are cut from train; every model is tested on test).
    """
    image_shape, m = tuple(train.images.shape[1:]), config.num_models
    chunks = pools.model_chunks(config)  # The run's own chunking, so the estimate cannot drift from it.
    for pool, size, name in (
        (config.target_pool, max(len(c) for c in chunks if c[0] < m), "target"),
        (config.attacker_pool, max((len(c) for c in chunks if c[0] >= m), default=0), "attacker"),
    ):
        if not size:  # No shadows (Shokri from the bank): nothing trains on the attacker pool.
            continue
        estimate = bank_chunk_estimate(config, fns, image_shape, train.num_classes, pool, (size, len(test.labels)))
        memory.check_fits(estimate, f"{what} (a chunk of {size} models on the {name} pool)")
