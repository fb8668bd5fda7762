"""Dataset condensation: a few synthetic images per class learned from a real dataset, one jitted iteration per method.

The methods (``METHODS``; ``CondenseConfig.method`` picks one), each in its module, registered in ``ITERATIONS``:
  dc   gradient matching (Zhao, Mopuri & Bilen, ICLR 2021), ``gradient_matching.dc_iteration``;
  dsa  gradient matching with Differentiable Siamese Augmentation (Zhao & Bilen, ICML 2021), the same iteration;
  dm   distribution matching (Zhao & Bilen, WACV 2023), ``distribution_matching.dm_iteration``.
Every method is one jitted iteration ``(SynState, (pool, ClassIndex), key) -> (SynState, metrics)``
(``make_iteration_fn``), so runs, checkpoints, outputs and the privacy bank treat them alike.

The package: ``config`` (settings, state, the initial set), ``distances`` (between gradient pytrees),
``gradient_matching``, ``distribution_matching``, and ``run`` (a resumable condensation in a workdir; imported
as ``dcjax.condense.run``, not re-exported, since it builds on evaluation and memory, which build on this).
"""

from __future__ import annotations

import functools

import jax

from dcjax import progress
from dcjax.condense import distances
from dcjax.condense.config import (
    CLASS_STRATEGIES,
    INITS,
    LOOPS_BY_IPC,
    METHOD_DEFAULTS,
    METHODS,
    CondenseConfig,
    MethodDefaults,
    SynState,
    check_batch_real,
    check_network,
    default_loops,
    describe,
    image_optimizer,
    init_synthetic,
    iteration_units,
    mean_groups,
    resolve_class_strategy,
    synthetic_labels,
)
from dcjax.condense.distribution_matching import dm_iteration
from dcjax.condense.gradient_matching import dc_iteration, matching_loss
from dcjax import models
from dcjax.models import ModelFns

__all__ = [
    "CLASS_STRATEGIES",
    "INITS",
    "ITERATIONS",
    "LOOPS_BY_IPC",
    "METHOD_DEFAULTS",
    "METHODS",
    "CondenseConfig",
    "MethodDefaults",
    "SynState",
    "check_batch_real",
    "check_network",
    "condense_iteration",
    "dc_iteration",
    "default_loops",
    "describe",
    "distances",
    "dm_iteration",
    "image_optimizer",
    "init_synthetic",
    "iteration_units",
    "make_iteration_fn",
    "matching_loss",
    "mean_groups",
    "resolve_class_strategy",
    "synthetic_labels",
]

# The method registry: method name -> its pure iteration (fns, config, class strategy, state, real data, key).
ITERATIONS = {"dc": dc_iteration, "dsa": dc_iteration, "dm": dm_iteration}
assert set(ITERATIONS) == set(METHODS)


def condense_iteration(
    fns: ModelFns, config: CondenseConfig, strategy: str, state: SynState, real_data, key: jax.Array
):
    """One iteration of ``config.method``: (state, (pool, ClassIndex), key) -> (state, metrics).

    The method's entry in ``ITERATIONS``. Pure; strategy is a resolved class strategy.
    """
    fns = models.with_precision(fns, config.precision)  # The same parameters, its matmuls at config.precision.
    return ITERATIONS[config.method](fns, config, strategy, state, real_data, key)


def make_iteration_fn(fns: ModelFns, config: CondenseConfig, strategy: str = "auto"):
    """jit(condense_iteration) with static settings closed over and the state donated.

    Returns f(state, (pool, index), key) -> (state, metrics), ready when it returns: each call
    is a ``progress.task`` (the first logs that it compiles; a long iteration logs its outer
    steps and an ETA). ``f.lower`` is the jitted function's. The pool is an argument, not a
    closed-over constant, so XLA does not embed 60k images in the executable.
    """
    check_network(fns)
    strategy = resolve_class_strategy(strategy if strategy != "auto" else config.class_strategy)
    step = functools.partial(condense_iteration, fns, config, strategy)
    unit = "iterations" if config.method == "dm" else "outer steps"
    return progress.Reporting(jax.jit(step, donate_argnums=(0,)), describe(fns, config), iteration_units(config), unit)
