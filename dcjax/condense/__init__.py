"""Dataset condensation: a few synthetic images per class learned from a real dataset, one jitted iteration per method.

The methods, each in its module, each with its record (``Method``: iteration, paper defaults, progress, memory,
evaluation augmentation) in the registry ``METHODS`` (``methods``; ``CondenseConfig.method`` picks one):
  dc   gradient matching (Zhao, Mopuri & Bilen, ICLR 2021), ``gradient_matching.dc_iteration``;
  dsa  gradient matching with Differentiable Siamese Augmentation (Zhao & Bilen, ICML 2021), the same iteration;
  dm   distribution matching (Zhao & Bilen, WACV 2023), ``distribution_matching.dm_iteration``.
Every method is one jitted iteration ``(SynState, (pool, ClassIndex), key) -> (SynState, metrics)``
(``make_iteration_fn``), so runs, checkpoints, outputs and the privacy bank treat them alike.

The package: ``config`` (settings, state, the initial set, the ``Method`` record), ``distances`` (between gradient
pytrees), ``gradient_matching``, ``distribution_matching``, ``methods`` (the records), ``drive`` (the condensation
driver: iteration functions, keys and the loop, of one run and of a bank of runs) and ``run`` (a resumable
condensation in a workdir; imported as ``dcjax.condense.run``, not re-exported, since it builds on evaluation and
memory, which build on this).
"""

from __future__ import annotations

from dcjax.condense import distances, methods
from dcjax.condense.config import (
    CLASS_STRATEGIES,
    INITS,
    LOOPS_BY_IPC,
    METHODS,
    CondenseConfig,
    Method,
    MethodDefaults,
    SynState,
    check_batch_real,
    check_network,
    default_loops,
    describe,
    evaluation_augment,
    image_optimizer,
    init_synthetic,
    iteration_units,
    mean_groups,
    resolve_class_strategy,
    synthetic_labels,
)
from dcjax.condense.distribution_matching import dm_iteration
from dcjax.condense.drive import condense_iteration, make_iteration_fn
from dcjax.condense.gradient_matching import dc_iteration, matching_loss

__all__ = [
    "CLASS_STRATEGIES",
    "INITS",
    "LOOPS_BY_IPC",
    "METHODS",
    "CondenseConfig",
    "Method",
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
    "evaluation_augment",
    "image_optimizer",
    "init_synthetic",
    "iteration_units",
    "make_iteration_fn",
    "matching_loss",
    "mean_groups",
    "methods",
    "resolve_class_strategy",
    "synthetic_labels",
]
