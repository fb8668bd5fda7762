"""The privacy study: one membership-inference run per target recipe, on one split, in one table.

Rows (``ROWS``): the target's whole private data (``original``), a random ``per_class`` subset
of it (``subset``, the naive baseline), and DC synthetic sets condensed from it with noise and
with real init (``dc_noise``, ``dc_real``); ``DEFAULT_ROWS`` are these four. Optional rows:
``dsa_real`` and ``dm_real`` (the other condensation methods, ``METHOD_ROWS``), ``dm_noise``, and
``dc_means`` / ``dm_means`` (the privacy-first init: each synthetic image the mean of a disjoint random group of
its class's private images, ``INIT_ROWS``), and
``dpsgd_eps{1,4,8}`` train on the whole private data (``original``'s recipe) with DP-SGD on
Poisson-sampled batches (``dcjax.dpsgd``; their own batch size, epochs and lr), the noise
calibrated to that epsilon at ``dp_delta`` by the PLD accountant (``dcjax.privacy.accounting``:
a formal guarantee, ``dp_setting`` records it). Every row is an
``attack_run`` with the same seed, hence the same pools, keep masks, canaries and model keys;
only the recipe (and the training protocol that suits its set size) changes. The attacker
runs the target's whole pipeline for its shadows, condensation included.

Frontier points (``plan_points``, the one place a row becomes the attack runs of the study): a row may be
attacked at several points of its own progress, each point its own attack run and results entry, named
``<row>_it<t>`` or ``<row>_ep<e>``; a row's points share ``<row>_snapshots/`` (``dcjax.snapshots.Snapshots``,
passed to ``attack_run.run_attack``), so the row's work is done once and each point is a state of that one run.
In results.json a point's entry adds ``row`` and its progress, ``iteration`` or ``epochs`` (``_point_fields``).

* Ladder (``StudyConfig.ladder``): each condensed row is attacked after each ladder iteration t up to its own
  count, and that count (``ladder_points``); the point at t resumes from the previous point's condensation
  snapshot, to the same synthetic sets as a straight run.
* Fixed-noise DP-SGD rows, ``dpsgd_sigma<S>`` for each S of ``dp_noise``: one DP-SGD run at noise multiplier S
  for the last of ``dp_checkpoints`` expected epochs, attacked after each checkpoint e with the guarantee the
  accountant gives for the steps taken (``noise_guarantee``); each point continues the run from the previous
  point's training snapshot, bitwise the straight run.

Workdir: ``config.json``; one sub-directory per row or point (a complete ``attack_run`` workdir, so a
killed study resumes inside the row it was in); ``results.json`` (schema: ``dcjax.privacy.study_report``);
``RESULTS.md`` generated from it (where the original row learns Shokri from the bank, with the poster's
protocol: ``dcjax.privacy.poster``); figures ``privacy_accuracy.png``, ``roc_targets.png`` and
``synthetic_<row>.png``.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import multiprocessing
import os
import time
from collections.abc import Iterable
from typing import Any, NamedTuple

import numpy as np
from absl import logging

from dcjax import checkpoint
from dcjax import condense
from dcjax import data as data_lib
from dcjax import dpsgd
from dcjax import errors
from dcjax import plots
from dcjax import snapshots as snapshots_lib
from dcjax.privacy import study_report
from dcjax import train as train_lib
from dcjax import workdir as workdir_lib
from dcjax.models import ModelFns
from dcjax.privacy import accounting, attack_data, attack_run, bank, pools, poster, results_schema
from dcjax.privacy import memory
from dcjax.privacy.config import AttackRunConfig

DEFAULT_ROWS = ("original", "subset", "dc_noise", "dc_real")
METHOD_ROWS = ("dsa_real", "dm_real")
# DM from noise, and the privacy-first init (each synthetic image the mean of a disjoint random group of its
# class's private images, ``condense.mean_groups``: no single image is copied) before DC and DM.
INIT_ROWS = ("dm_noise", "dc_means", "dm_means")
# The DM paper's iteration count (the study's default for dm_real unless --dm_iterations says otherwise). Read
# here, at import, because the config field `condense` shadows the module inside functions.
_DM_PAPER_ITERATIONS = condense.METHODS["dm"].defaults.iterations
DP_EPSILONS = {"dpsgd_eps1": 1.0, "dpsgd_eps4": 4.0, "dpsgd_eps8": 8.0}  # Row -> target epsilon.
CONDENSED_ROWS = DEFAULT_ROWS[2:] + METHOD_ROWS + INIT_ROWS  # The rows that condense (a ladder applies to them).
ROWS = DEFAULT_ROWS + METHOD_ROWS + INIT_ROWS + tuple(DP_EPSILONS)  # Every valid row name.
_DP = (
    "trained with DP-SGD on all of its private data, Poisson-sampled batches (q = {sample_rate:.4g}, "
    "expected batch {expected_batch_size}, {steps} steps of at most {capacity}, lr {lr:g}): "
    "(epsilon = {epsilon_pld:.3f}, delta = {delta_total:.4g})-DP by the PLD accountant for target "
    "epsilon = {epsilon:g} at delta = {delta:g} (RDP: epsilon {epsilon_rdp:.3f}; delta includes the batch "
    "overflow term), noise multiplier {noise_multiplier:.3f}, clip {l2_clip:g}"
)
NOISE_ROW_PREFIX = "dpsgd_sigma"  # + a noise multiplier of StudyConfig.dp_noise: a fixed-noise DP-SGD row.
# A fixed-noise row's point: its run stopped at a checkpoint (the same run continues to the next).
_DP_NOISE = (
    "trained with DP-SGD on all of its private data at noise multiplier {noise_multiplier:g}, clip {l2_clip:g}, "
    "Poisson-sampled batches (q = {sample_rate:.4g}, expected batch {expected_batch_size}, at most {capacity}, "
    "lr {lr:g}), attacked after {epochs} of its run's {run_epochs} expected epochs ({steps} of {run_steps} steps): "
    "(epsilon = {epsilon_pld:.3f}, delta = {delta_total:.4g})-DP by the PLD accountant at delta = {delta:g} "
    "for the steps taken (RDP: epsilon {epsilon_rdp:.3f}; delta includes the batch overflow term)"
)
DP_OVERFLOW_FRACTION = 1e-3  # eta = this * delta / (1 + e^epsilon): the overflow term adds <= 0.1% to delta.
DESCRIPTIONS = {
    "original": "trained on all of its private data (half the target pool)",
    "subset": "trained on a random {per_class} per class of its private data (naive baseline)",
    "dc_noise": "trained on a DC synthetic set ({ipc}/class) condensed from its private data, noise init",
    "dc_real": "trained on a DC synthetic set ({ipc}/class) condensed from its private data, real init",
    "dsa_real": "trained (with DSA augmentation) on a DSA synthetic set ({ipc}/class) condensed from its private "
    "data, real init",
    "dm_real": "trained (with DSA augmentation) on a DM synthetic set ({ipc}/class) condensed from its private data "
    "in {dm_iterations} iterations, real init",
    "dm_noise": "trained (with DSA augmentation) on a DM synthetic set ({ipc}/class) condensed from its private data "
    "in {dm_iterations} iterations, noise init",
    "dc_means": "trained on a DC synthetic set ({ipc}/class) condensed from its private data, privacy-first init (each "
    "image the mean of a disjoint random group of its class's private images)",
    "dm_means": "trained (with DSA augmentation) on a DM synthetic set ({ipc}/class) condensed from its private data "
    "in {dm_iterations} iterations, privacy-first init (each image the mean of a disjoint random group of its "
    "class's private images)",
    **{name: _DP for name in DP_EPSILONS},
}


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    """The shared attack setting plus what each row changes.

    attack: pools, bank size, shadows, canaries, queries, seed, network (its recipe and train
      fields are replaced per row).
    train_original: how the ``original`` row's models train on their ~N/2 private examples.
    train_small: how models train on 10-per-class sets (subset and synthetic rows): the
      reference evaluation protocol, scaled per tier.
    dp_delta, dp_clip: delta of the DP-SGD rows' epsilons and their per-example clip norm.
    dp_lr, dp_batch_size, dp_epochs: the DP-SGD rows' learning rate, EXPECTED batch size and
      expected epochs (None: ``train_original``'s); they otherwise train as ``train_original``.
      Noisy gradients want other settings than clean ones (experiments/dp_tune.py).
    dm_iterations: iterations of the DM rows (dm_real, dm_noise, dm_means: a DM iteration is far cheaper than a DC
      one; their lr_img is DM's 1.0). ``dsa_real`` uses ``condense`` as the DC rows do.
    ladder: condensation iterations at which each condensed row is also attacked (``ladder_points``):
      non-negative, strictly increasing (0: the row's initial set, attacked as its own point, so a row's gain over
      its init is measured on the same keys); empty (the default): one point per row.
    row_ladders: per-row ladders in place of ``ladder``, each ``"<row>:<t>:<t>..."`` (``row_ladder``): e.g.
      ``"dc_real:0"`` attacks dc_real at its initial set and its own count only, ``"dm_noise:"`` at its own count
      only (one point per row), so a costly row or a tight docs budget gets fewer points than the others.
    dp_noise: noise multipliers of the fixed-noise DP-SGD rows, row ``dpsgd_sigma<value>`` each
      (``noise_rows``; a row is valid only when its value is here).
    dp_checkpoints: expected epochs at which a fixed-noise row's one run is attacked, strictly
      increasing; the last is the run's length (in place of dp_epochs). () : one point, at the
      end of a dp_epochs run (``dp_points``).
    """

    attack: AttackRunConfig = AttackRunConfig()
    rows: tuple[str, ...] = DEFAULT_ROWS
    train_original: train_lib.TrainConfig = train_lib.TrainConfig(epochs=100, augment="none")
    train_small: train_lib.TrainConfig = train_lib.TrainConfig(epochs=1000, augment="dc")
    per_class: int = 10
    condense: condense.CondenseConfig = condense.CondenseConfig()
    dp_delta: float = 1e-5
    dp_clip: float = 1.0
    dp_lr: float | None = None
    dp_batch_size: int | None = None
    dp_epochs: int | None = None
    dm_iterations: int = _DM_PAPER_ITERATIONS
    ladder: tuple[int, ...] = ()
    row_ladders: tuple[str, ...] = ()
    dp_noise: tuple[float, ...] = ()
    dp_checkpoints: tuple[int, ...] = ()

    def __post_init__(self):
        _check_points(self)
        valid = ROWS + tuple(noise_rows(self))
        unknown = [r for r in self.rows if r not in valid]
        if unknown or not self.rows or len(set(self.rows)) != len(self.rows):
            raise errors.ConfigError("rows", f"must be distinct names from {valid}, got {list(self.rows)}")
        if not 0 < self.dp_delta < 1:
            raise errors.ConfigError("dp_delta", f"must be in (0, 1), got {self.dp_delta}")
        if not 0 < self.dp_clip < math.inf:  # Also rejects NaN.
            raise errors.ConfigError("dp_clip", f"must be > 0 and finite, got {self.dp_clip}")
        if self.dp_lr is not None and not 0 < self.dp_lr < math.inf:
            raise errors.ConfigError("dp_lr", f"must be > 0 and finite, got {self.dp_lr}")
        if self.per_class < 1:
            raise errors.ConfigError("per_class", f"must be >= 1, got {self.per_class}")
        for name in ("dp_batch_size", "dp_epochs"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise errors.ConfigError(name, f"must be >= 1, got {getattr(self, name)}")
        if self.dm_iterations < 1:
            raise errors.ConfigError("dm_iterations", f"must be >= 1, got {self.dm_iterations}")


def noise_rows(config: StudyConfig) -> dict[str, float]:
    """{row name: noise multiplier} of the fixed-noise DP-SGD rows ``config.dp_noise`` makes valid."""
    return {f"{NOISE_ROW_PREFIX}{noise:g}": noise for noise in config.dp_noise}


def _check_points(config: StudyConfig) -> None:
    """ConfigError (naming the setting) unless the frontier points' settings hold: ladder and dp_checkpoints strictly
    increasing (ladder >= 0, its 0 the row's initial set; dp_checkpoints >= 1), row_ladders valid
    (``_parse_row_ladders``), dp_noise distinct positive finite values with distinct row names."""
    _check_ladder("ladder", config.ladder)
    _parse_row_ladders(config.row_ladders)
    if any(not 0 < noise < math.inf for noise in config.dp_noise):  # Also rejects NaN.
        raise errors.ConfigError("dp_noise", f"must hold noise multipliers > 0 and finite, got {list(config.dp_noise)}")
    if len(noise_rows(config)) != len(config.dp_noise):
        raise errors.ConfigError(
            "dp_noise", f"must hold distinct values (distinct row names), got {list(config.dp_noise)}"
        )
    checkpoints = config.dp_checkpoints
    if any(e < 1 for e in checkpoints) or any(a >= b for a, b in zip(checkpoints, checkpoints[1:])):
        raise errors.ConfigError("dp_checkpoints", f"must be strictly increasing epochs >= 1, got {list(checkpoints)}")


def _check_ladder(setting: str, ladder: Iterable[int]) -> None:
    """ConfigError naming ``setting`` unless ``ladder`` is non-negative and strictly increasing."""
    ladder = list(ladder)
    if any(t < 0 for t in ladder) or any(b <= a for a, b in zip(ladder, ladder[1:])):
        raise errors.ConfigError(setting, f"must be non-negative, strictly increasing iterations, got {ladder}")


def _parse_row_ladders(entries: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    """{row: ladder} of ``row_ladders`` entries ``"<row>:<t>:<t>..."``; ConfigError naming row_ladders unless each
    names a distinct condensed row (``CONDENSED_ROWS``) and its ladder holds as ``ladder`` must."""
    ladders: dict[str, tuple[int, ...]] = {}
    for entry in entries:
        row, colon, iterations = entry.partition(":")
        if row not in CONDENSED_ROWS or row in ladders or not colon:
            raise errors.ConfigError(
                "row_ladders",
                f"must hold distinct '<row>:<t>:<t>...' entries of condensed rows {CONDENSED_ROWS}, got {entry!r}",
            )
        try:
            ladders[row] = tuple(int(t) for t in iterations.split(":") if t)
        except ValueError:
            raise errors.ConfigError("row_ladders", f"must hold integer iterations, got {entry!r}") from None
        _check_ladder("row_ladders", ladders[row])
    return ladders


def row_ladder(config: StudyConfig, name: str) -> tuple[int, ...]:
    """The ladder of row ``name``: its ``row_ladders`` entry, else ``ladder``."""
    return _parse_row_ladders(config.row_ladders).get(name, config.ladder)


def dp_points(config: StudyConfig) -> tuple[int, ...]:
    """Expected epochs at which each fixed-noise row is attacked: dp_checkpoints, or the end of a dp_epochs run."""
    return config.dp_checkpoints or (_dp_training(config).epochs,)


def _dp_training(config: StudyConfig) -> train_lib.TrainConfig:
    """``train_original`` with the DP rows' own lr, expected batch size and expected epochs (dp unset)."""
    base = config.train_original
    return dataclasses.replace(
        base,
        lr=config.dp_lr or base.lr,
        batch_size=config.dp_batch_size or base.batch_size,
        epochs=config.dp_epochs or base.epochs,
    )


def _largest_private_set(config: StudyConfig) -> int:
    """An upper bound on any model's private set that B_max must cover (``run_study`` checks it).

    A LiRA private half has ~Binomial(N, 1/2) examples: N/2 plus 4 standard deviations
    (2 sqrt(N)); a Shokri shadow has exactly Na // 2.
    """
    n = config.attack.target_pool
    return max(min(n, n // 2 + 2 * math.ceil(math.sqrt(n))), config.attack.attacker_pool // 2)


def _accounted(noise: float, q: float, steps: int, delta: float, overflow: float) -> dict:
    """What ``steps`` Poisson DP-SGD steps at sampling rate q and ``noise`` guarantee: epsilon at ``delta`` by the PLD
    accountant and by RDP, and delta_total for the batch ``overflow`` probability (``accounting.overflow_delta``)."""
    eps_pld = accounting.epsilon_pld(noise, q, steps, delta)
    return {
        "noise_multiplier": noise,
        "epsilon_pld": eps_pld,
        "epsilon_rdp": accounting.epsilon_rdp(noise, q, steps, delta),
        "delta_total": accounting.overflow_delta(delta, eps_pld, overflow),
    }


def dp_guarantee(
    target_epsilon: float, delta: float, num_examples: int, largest: int, train: train_lib.TrainConfig, l2_clip: float
) -> dict:
    """The formal privacy setting of Poisson DP-SGD training (``train``, dp unset) at a target epsilon.

    Sampling rate q = B / n for the public dataset size n = ``num_examples`` and the expected
    batch B, steps = round(epochs * n / B). The noise is the PLD accountant's for the target at
    ``delta``; B_max keeps the overflow probability within eta = DP_OVERFLOW_FRACTION * delta /
    (1 + e^target) for up to ``largest`` + 1 examples (the largest private set it is used on and
    its neighbour), and delta_total = delta + (1 + e^epsilon_pld) * overflow.
    """
    q, steps, expected = dpsgd.poisson_schedule(num_examples, train.batch_size, train.epochs)
    noise = accounting.noise_for_epsilon(target_epsilon, q, steps, delta)
    budget = DP_OVERFLOW_FRACTION * delta / (1 + math.exp(target_epsilon))
    capacity = dpsgd.poisson_capacity(largest + 1, q, steps, budget)
    overflow = dpsgd.overflow_probability(largest + 1, q, steps, capacity)
    return {
        "epsilon": target_epsilon,
        **_accounted(noise, q, steps, delta, overflow),
        "delta": delta,
        "overflow_probability": overflow,
        "overflow_budget": budget,
        "l2_clip": l2_clip,
        "lr": train.lr,
        "epochs": train.epochs,
        "sample_rate": q,
        "steps": steps,
        "expected_batch_size": expected,
        "capacity": capacity,
        "private_examples": num_examples,
        "max_private_examples": largest,
        "accountant": "pld, Poisson sampling (formal)",
    }


def noise_guarantee(
    noise: float, delta: float, sizes: tuple[int, int], train: train_lib.TrainConfig, l2_clip: float, epochs: int
) -> dict:
    """``dp_guarantee`` at a given noise multiplier for the run ``train`` (dp unset) released after ``epochs``.

    sizes: (n = ``num_examples``, ``largest``) as ``dp_guarantee``'s. The epsilons (PLD, RDP), the overflow
    probability and delta_total are those of the steps taken, round(epochs * n / B); B_max and its budget eta =
    DP_OVERFLOW_FRACTION * delta / (1 + e^epsilon_run) are the run's (epsilon_run: its PLD epsilon after all its
    steps): its checkpoints share one DPConfig. "epochs"/"steps" are the checkpoint's, "run_epochs"/"run_steps" its.
    """
    num_examples, largest = sizes
    q, run_steps, expected = dpsgd.poisson_schedule(num_examples, train.batch_size, train.epochs)
    steps = dpsgd.poisson_schedule(num_examples, train.batch_size, epochs)[1]
    run_epsilon = accounting.epsilon_pld(noise, q, run_steps, delta)
    budget = DP_OVERFLOW_FRACTION * delta / (1 + math.exp(min(run_epsilon, 700.0)))  # exp(>709) overflows.
    capacity = dpsgd.poisson_capacity(largest + 1, q, run_steps, budget)
    overflow = dpsgd.overflow_probability(largest + 1, q, steps, capacity)
    accounted = _accounted(noise, q, steps, delta, overflow)
    return {
        "epsilon": accounted["epsilon_pld"],  # No target here: the guarantee itself (the report's epsilon column).
        **accounted,
        "delta": delta,
        "overflow_probability": overflow,
        "overflow_budget": budget,
        "l2_clip": l2_clip,
        "lr": train.lr,
        "epochs": epochs,
        "run_epochs": train.epochs,
        "sample_rate": q,
        "steps": steps,
        "run_steps": run_steps,
        "expected_batch_size": expected,
        "capacity": capacity,
        "private_examples": num_examples,
        "max_private_examples": largest,
        "accountant": "pld, Poisson sampling (formal)",
    }


def dp_setting(config: StudyConfig, name: str) -> dict | None:
    """The privacy setting of a DP-SGD row (``dp_guarantee``; None for other rows).

    n = target_pool // 2, the expected private-half size, is public: every model of the row
    samples at q = B / n, so every model has the same guarantee whatever its actual half size
    (that only changes its expected batch). B_max covers ``_largest_private_set``.
    """
    if name not in DP_EPSILONS:
        return None
    return dp_guarantee(
        DP_EPSILONS[name],
        config.dp_delta,
        config.attack.target_pool // 2,
        _largest_private_set(config),
        _dp_training(config),
        config.dp_clip,
    )


def _original(config: StudyConfig, name: str, dp: dict | None):
    return bank.Recipe("original"), config.train_original


def _subset(config: StudyConfig, name: str, dp: dict | None):
    return bank.Recipe("subset", per_class=config.per_class), config.train_small


def _condensed(config: StudyConfig, name: str, dp: dict | None):
    """<method>_<init> (dc_noise, dsa_real, dm_means, ...): the study's condensation settings with that method and
    init (a method with its ``own_schedule``, DM: ``dm_iterations`` at its paper lr_img), trained on the small-set
    recipe with the method's evaluation augmentation (``condense.evaluation_augment``).

    The reference evaluates DSA and DM sets with DSA augmentation (docs/protocol.md sections 4-5), so their rows train
    with it; DC's train with ``train_small``'s.
    """
    method, init = name.split("_")
    changes: dict[str, Any] = {"method": method, "init": init}
    if condense.METHODS[method].own_schedule:
        changes.update(iterations=config.dm_iterations, lr_img=condense.METHODS[method].defaults.lr_img)
    settings = dataclasses.replace(config.condense, **changes)
    augment = condense.evaluation_augment(settings, config.train_small.augment)
    return bank.Recipe("condense", condense=settings), dataclasses.replace(config.train_small, augment=augment)


def _dp_config(dp: dict) -> dpsgd.DPConfig:
    """The DPConfig a DP setting (``dp_guarantee``, ``noise_guarantee``) trains with."""
    return dpsgd.DPConfig(
        l2_clip=dp["l2_clip"],
        noise_multiplier=dp["noise_multiplier"],
        num_examples=dp["private_examples"],
        capacity=dp["capacity"],
        overflow_budget=dp["overflow_budget"],
    )


def _dpsgd(config: StudyConfig, name: str, dp: dict | None):
    assert dp is not None, f"{name} is not a DP-SGD row"
    return bank.Recipe("original"), dataclasses.replace(_dp_training(config), dp=_dp_config(dp))


# Row name -> (config, name, its dp_setting) -> (recipe, training). A new row adds one entry (and its name to ROWS).
_ROW_RECIPES = {
    "original": _original,
    "subset": _subset,
    **{name: _condensed for name in ("dc_noise", "dc_real", "dc_means") + METHOD_ROWS + ("dm_noise", "dm_means")},
    **{name: _dpsgd for name in DP_EPSILONS},
}


class RowPlan(NamedTuple):
    """One row's (or ladder point's) settings, computed once (its DP setting calls the accountant): what every
    stage reads."""

    name: str  # The row's name; a ladder point's is f"{row}_it{iteration}". Its workdir is <study workdir>/<name>.
    run: AttackRunConfig  # The row's attack run: the study's settings with the row's recipe.
    description: str  # One line on what the row's targets are trained on.
    dp: dict | None  # ``dp_setting`` (DP-SGD rows), else None.
    # A frontier point (``plan_points``): its row's name ("": the plan is a whole row) and its progress in that row's
    # one run, condensation iterations (a ladder point) or DP-SGD expected epochs (a checkpoint point), whichever
    # the row advances; points: the progress of all the row's points, in order (condensation snapshots' save_at).
    row: str = ""
    iteration: int | None = None
    epochs: int | None = None
    points: tuple[int, ...] = ()


def plan_row(config: StudyConfig, name: str) -> RowPlan:
    """The ``RowPlan`` of one row; ValueError for an unknown row."""
    if name not in _ROW_RECIPES:
        raise ValueError(f"unknown row {name!r}; expected one of {ROWS}")
    dp = dp_setting(config, name)
    recipe, train = _ROW_RECIPES[name](config, name, dp)
    description = DESCRIPTIONS[name].format(
        per_class=config.per_class, ipc=config.condense.ipc, dm_iterations=config.dm_iterations, **(dp or {})
    )
    return RowPlan(name, dataclasses.replace(config.attack, recipe=recipe, train=train), description, dp)


def plan_points(config: StudyConfig, name: str) -> list[RowPlan]:
    """The attack runs of one row, in order: a fixed-noise DP-SGD row's checkpoint points, a condensed row's
    ladder points (``ladder_points``), or else the row itself (``plan_row``). ``run_study`` runs exactly these."""
    if name in noise_rows(config):
        return _checkpoint_points(config, name)
    return ladder_points(plan_row(config, name), row_ladder(config, name))


def _checkpoint_points(config: StudyConfig, name: str) -> list[RowPlan]:
    """A fixed-noise DP-SGD row's points, ``<row>_ep<e>`` in increasing e (``dp_points``): one run of
    ``_dp_training`` for the last e's expected epochs, attacked after e of them with ``noise_guarantee``'s
    guarantee; the points share the run's snapshots (``_snapshots``), so it is trained once."""
    epochs = dp_points(config)
    run = dataclasses.replace(_dp_training(config), epochs=epochs[-1])
    sizes = (config.attack.target_pool // 2, _largest_private_set(config))
    plans = []
    for e in epochs:
        dp = noise_guarantee(noise_rows(config)[name], config.dp_delta, sizes, run, config.dp_clip, e)
        train = dataclasses.replace(run, dp=_dp_config(dp), stop_epochs=e)
        row = dataclasses.replace(config.attack, recipe=bank.Recipe("original"), train=train)
        plans.append(RowPlan(f"{name}_ep{e}", row, _DP_NOISE.format(**dp), dp, row=name, epochs=e, points=epochs))
    return plans


def ladder_points(plan: RowPlan, ladder: tuple[int, ...]) -> list[RowPlan]:
    """A condensed row's frontier points in increasing iterations: one per ``ladder`` iteration up to the row's own
    count, and that count; each condenses as the row does but stops there. [plan] itself for an empty ladder or a
    row that does not condense."""
    condensation = plan.run.recipe.condense
    if not ladder or plan.run.recipe.kind != "condense" or condensation is None:
        return [plan]
    own = condensation.iterations
    points = tuple(sorted({t for t in ladder if t <= own} | {own}))

    def point(t: int) -> RowPlan:
        recipe = dataclasses.replace(plan.run.recipe, condense=dataclasses.replace(condensation, iterations=t))
        return plan._replace(
            name=f"{plan.name}_it{t}",
            run=dataclasses.replace(plan.run, recipe=recipe),
            description=f"{plan.description}; ladder point: condensation stopped after {t} of {own} iterations",
            row=plan.name,
            iteration=t,
            points=points,
        )

    return [point(t) for t in points]


def _snapshots(plan: RowPlan, workdir: str) -> snapshots_lib.Snapshots | None:
    """A point's snapshots, shared by its row's points: <workdir>/<row>_snapshots (None: a whole row)."""
    if not plan.row:
        return None
    return snapshots_lib.Snapshots(workdir_lib.path(workdir, f"{plan.row}_snapshots"), save_at=plan.points)


def _point_fields(row: str, iteration: int | None = None, epochs: int | None = None) -> dict:
    """A point's extra fields in the study's results: its row and its progress, "iteration" (a ladder point) or
    "epochs" (a checkpoint point); {} for a whole row, whose entry is as before points existed."""
    progress = {key: value for key, value in (("iteration", iteration), ("epochs", epochs)) if value is not None}
    return {"row": row, **progress} if row else {}


def row_config(config: StudyConfig, name: str) -> AttackRunConfig:
    """The attack-run settings of one row (``plan_row``'s ``run``)."""
    return plan_row(config, name).run


def describe(config: StudyConfig, name: str) -> str:
    """One line on what the row's targets are trained on (``plan_row``'s ``description``)."""
    return plan_row(config, name).description


def _row_summary(name: str, description: str, dp: dict | None, results: dict) -> dict:
    """The row as ``study_report`` reads it (full per-run results stay in the row's workdir)."""
    natural = {a: by_slice.get("natural") for a, by_slice in results["attacks"].items()}
    return {
        "name": name,
        "description": description,
        **({"dp": dp} if dp else {}),
        "utility": results["utility"],
        "shokri_accuracy": results["shokri_accuracy"],
        "attacks": {
            a: {s: v for s, v in by_slice.items() if s in ("natural", "canaries", "used", "all")}
            for a, by_slice in results["attacks"].items()
        },
        "natural": natural,
        "headline": results["headline"],
        "null_test": results.get("null_test"),
        "canary_detection": results["canary_detection"],
        "empirical_epsilon": results["empirical_epsilon"],
        "roc_headline": (
            results["roc"][results["headline"]["model"]["attack"]] if results["headline"]["model"] else None
        ),
        "wall_seconds": results["wall_seconds"],
        **({"movement": results["movement"]} if results.get("movement") else {}),
        **({"provenance": results["provenance"]} if results.get("provenance") else {}),
    }


# The accountant's calibration (``accounting.noise_for_epsilon``, tolerance 1e-4) ends on a float whose last digits
# differ between CPUs: the poster tier's epsilon-1 noise is 1.3335207170 on the Intel Xeon that trained it and
# 1.3335207177 on an AMD EPYC. A DP row that already holds a run keeps the noise it recorded when this machine's is
# that close, so a study resumes on another machine; a larger difference is another setting, and is refused.
_NOISE_RTOL = 1e-6


def with_recorded_noise(plan: RowPlan, row_dir: str) -> RowPlan:
    """``plan`` with the noise multiplier ``row_dir``'s config.json records, where it differs from the plan's by a
    relative 0 < d <= ``_NOISE_RTOL`` (the guarantee's epsilons and delta_total recomputed at it); else ``plan``."""
    dp = plan.run.train.dp
    if plan.dp is None or dp is None or not os.path.exists(workdir_lib.path(row_dir, workdir_lib.CONFIG)):
        return plan
    recorded = ((workdir_lib.read_config(row_dir).get("train") or {}).get("dp") or {}).get("noise_multiplier")
    ours = dp.noise_multiplier
    if not isinstance(recorded, float) or recorded == ours or abs(recorded - ours) > _NOISE_RTOL * ours:
        return plan
    logging.info(
        "row %s: keeps its recorded noise multiplier %r (this machine's accountant: %r)", plan.name, recorded, ours
    )
    old = plan.dp
    guarantee = {
        **old,
        **_accounted(recorded, old["sample_rate"], old["steps"], old["delta"], old["overflow_probability"]),
    }
    train = dataclasses.replace(plan.run.train, dp=dataclasses.replace(dp, noise_multiplier=recorded))
    return plan._replace(run=dataclasses.replace(plan.run, train=train), dp=guarantee)


def _run_row(plan: RowPlan, fns: ModelFns, data, workdir: str) -> dict:
    """A finished row is read back; an unfinished one runs (or resumes).

    A row finished by an older version (results without the current schema) is re-attacked from
    its stored bank: its models are not retrained, only exported and scored anew.
    """
    name, row = plan.name, plan.run
    row_dir = workdir_lib.path(workdir, name)
    done = workdir_lib.path(row_dir, workdir_lib.RESULTS)
    if os.path.exists(done):
        if not workdir_lib.config_matches(row_dir, dataclasses.asdict(row)):
            where = workdir_lib.first_difference(dataclasses.asdict(row), workdir_lib.read_config(row_dir))
            raise workdir_lib.WorkdirError(
                f"row {name} in {workdir} finished with other settings (they differ at {where}); pass --overwrite "
                "or choose another --workdir"
            )
        results = checkpoint.read_json(done)
        if results.get("schema") == attack_run.RESULTS_SCHEMA:
            logging.info("row %s: already finished, reading %s", name, done)
            return results
        logging.info("row %s: finished by an older version; re-attacking its stored models", name)
        if not os.path.exists(workdir_lib.path(row_dir, attack_data.EXPORT)):
            train, test = data
            attack_run.export_trained_bank(row, fns, train, test, row_dir)
        return attack_run.report_only(row_dir)
    logging.info("row %s: %s", name, plan.description)
    return attack_run.run_attack(row, fns, data, row_dir, snapshots=_snapshots(plan, workdir))


class ReleasedSet(NamedTuple):
    """A row's released synthetic set (target 0's), for its figure."""

    images: np.ndarray  # [S, H, W, C] normalised, as the export holds it
    dataset: str
    num_classes: int


def released_sets(workdir: str, results: dict) -> dict[str, ReleasedSet]:
    """{row name: its released synthetic set} of the rows whose export holds one (condensed rows)."""
    out = {}
    for row in results["rows"]:
        export = attack_data.load(workdir_lib.path(workdir_lib.path(workdir, row["name"]), attack_data.EXPORT))
        if export.synthetic_example.size:
            out[row["name"]] = ReleasedSet(
                export.synthetic_example, export.preprocessing["dataset"], export.num_classes
            )
    return out


def figure_captions(results: dict, released: Iterable[str]) -> dict[str, str]:
    """{caption: file name relative to the workdir} of the study's figures (``_figures`` writes them), in the
    document's order; ``released``: the names of the rows with a released synthetic set (``released_sets``)."""
    figures = {
        "Privacy vs accuracy (cross-fitted headline attack, TPR at 0.1% FPR, natural examples)": "privacy_accuracy.png",
        "ROC of each row's headline model attack (natural examples, all targets pooled)": "roc_targets.png",
    }
    for row in results["rows"]:
        figures[f"Every attack against the {row['name']} targets"] = f"{row['name']}/roc.png"
    for name in released:
        figures[f"Synthetic set released by target 0 ({name})"] = f"synthetic_{name}.png"
    return figures


def _figures(workdir: str, results: dict) -> dict[str, str]:
    """Writes the study figures; returns {caption: file name relative to the workdir} (``figure_captions``)."""
    study_report.privacy_accuracy_figure(workdir_lib.path(workdir, "privacy_accuracy.png"), results)
    curves = {
        f"{row['name']} ({row['headline']['model']['attack']})": (
            np.asarray(row["roc_headline"]["fpr"]),
            np.asarray(row["roc_headline"]["tpr"]),
        )
        for row in results["rows"]
        if row.get("roc_headline")
    }
    plots.roc_figure(workdir_lib.path(workdir, "roc_targets.png"), curves, "Headline model attack per row")
    released = released_sets(workdir, results)
    for name, synthetic in released.items():
        plots.image_grid(
            workdir_lib.path(workdir, f"synthetic_{name}.png"),
            data_lib.denormalize(synthetic.images, synthetic.dataset),
            synthetic.num_classes,
            f"{name}: target 0's synthetic set",
        )
    return figure_captions(results, released)


def _check_dp_capacity(row: AttackRunConfig, train: data_lib.ArrayDataset) -> None:
    """ConfigError unless the row's B_max covers the largest private set of this split (+1)."""
    split = pools.make_split(row, train.labels, train.num_classes)
    largest = int(max(split["keep"].sum(1).max(), split["halves"].sum(1).max(initial=0)))
    train_lib.make_schedule(row.train, largest)  # Runs dpsgd.check_capacity.


def _check_feasible(plans: list[RowPlan], fns: ModelFns, data, about: dict) -> None:
    """Every row's feasibility and the report's header (``results_schema.check_about``): fail before hours of work."""
    train, test = data
    for plan in plans:
        pools.check_recipe_fits(plan.run, train)
        memory.check_attack_run(plan.run, fns, train, test, what=f"row {plan.name}")
        if plan.run.train.dp is not None:
            dpsgd.check_network(fns)
            _check_dp_capacity(plan.run, train)
    results_schema.check_about(about)


def run_study(config: StudyConfig, fns: ModelFns, data, workdir: str, about: dict, overwrite: bool = False) -> dict:
    """Runs (or resumes) every row, then writes results.json, RESULTS.md and the figures.

    Args:
      config: the study's settings.
      fns: the network of every target and shadow.
      data: (train, test) ``ArrayDataset``s; both pools come from train.
      workdir: output directory (``dcjax.workdir`` rules).
      about: {"tier", "command", "machine"} recorded in results.json and RESULTS.md, and
        optionally "conclusion": hand-written markdown appended to RESULTS.md.
      overwrite: discard whatever the workdir holds.
    """
    plans = [plan for name in config.rows for plan in plan_points(config, name)]
    _check_feasible(plans, fns, data, about)
    # Each row checks its own settings, so finished rows survive a change to another row's,
    # and rows can be added to a finished study (its finished rows are read back).
    workdir_lib.prepare(workdir, dataclasses.asdict(config), overwrite, parts_checked=True)
    tic = time.perf_counter()
    rows = []
    for plan in plans:
        plan = with_recorded_noise(plan, workdir_lib.path(workdir, plan.name))
        summary = _row_summary(plan.name, plan.description, plan.dp, _run_row(plan, fns, data, workdir))
        rows.append({**summary, **_point_fields(plan.row, plan.iteration, plan.epochs)})
    about = dict(about)
    conclusion = about.pop("conclusion", "")
    results = {
        **about,
        "rows": rows,
        "config": dataclasses.asdict(config),
        # Sum of the rows' own wall times: a resumed study still reports its whole cost.
        "wall_seconds": float(sum(r["wall_seconds"] for r in rows)),
        "this_invocation_seconds": time.perf_counter() - tic,
    }
    results = _with_poster_protocol(workdir, results)
    write_report(workdir, results, conclusion)
    checkpoint.write_json(workdir_lib.path(workdir, workdir_lib.RESULTS), results)  # Last: finished.
    return results


def _with_poster_protocol(workdir: str, results: dict) -> dict:
    """``results`` with "poster_protocol" ({row: ``poster.summary``}: the original row's Shokri classifiers
    against every other row's targets) where an original row learns Shokri from the bank; without it otherwise,
    so a study with Shokri's shadows keeps its results as they were (and reads no export for it)."""
    names = [row["name"] for row in results["rows"]]
    original = next((row for row in results["rows"] if row["name"] == poster.TRAINED_ON), None)
    from_bank = original is not None and "mode" in (original.get("shokri_accuracy") or {})
    protocol = poster.study_protocol(workdir, names) if from_bank else None
    results = {k: v for k, v in results.items() if k != "poster_protocol"}
    return results if protocol is None else {**results, "poster_protocol": protocol}


def write_report(workdir: str, results: dict, conclusion: str = "") -> None:
    """Figures and RESULTS.md (generated tables + the hand-written ``conclusion``) from the results."""
    results_schema.check_study(results, workdir_lib.path(workdir, workdir_lib.RESULTS))  # Errors name the file.
    figures = _figures(workdir, results)
    study_report.write_results_document(workdir_lib.path(workdir, "RESULTS.md"), results, figures, conclusion)


def rewrite_report(workdir: str, conclusion: str, report_command: str, workers: int = 1) -> dict:
    """Re-attacks every row of a FINISHED study from its exports and rewrites the report; trains nothing.

    Reads only ``results.json`` (for each row's name, description and DP setting) and each row's
    ``attack_data.npz``, so a study copied without its models (as under docs/) regenerates. ``workers``: rows
    re-attacked at once, each in its own process (``reattack_rows``); the results do not depend on it.
    """
    done = workdir_lib.path(workdir, workdir_lib.RESULTS)
    if not os.path.exists(done):
        raise workdir_lib.WorkdirError(f"{workdir} holds no finished study (no {workdir_lib.RESULTS})")
    results = checkpoint.read_json(done)
    row_dirs = [workdir_lib.path(workdir, old["name"]) for old in results["rows"]]
    check_exports(row_dirs)
    rows = []
    for old, row_results in zip(results["rows"], reattack_rows(row_dirs, workers)):
        row_results["wall_seconds"] = old["wall_seconds"]  # The bank's cost, not the re-attack's.
        summary = _row_summary(old["name"], old["description"], old.get("dp"), row_results)
        rows.append({**summary, **_point_fields(old.get("row", ""), old.get("iteration"), old.get("epochs"))})
    results = _with_poster_protocol(workdir, {**results, "rows": rows, "report_command": report_command})
    write_report(workdir, results, conclusion)
    checkpoint.write_json(done, results)
    return results


def check_exports(row_dirs: list[str]) -> None:
    """Reads every row's export before any row is re-attacked, so a missing or damaged one fails in seconds
    (``attack_run.ExportError`` naming its file), not after the rows before it took minutes each."""
    for row_dir in row_dirs:
        attack_run.read_export(workdir_lib.path(row_dir, attack_data.EXPORT))


def _reattack(row_dir: str) -> dict:
    """``attack_run.report_only`` of one row, logged (a worker's entry point: module-level, so picklable)."""
    logging.info("row %s: re-attacking its export", os.path.basename(row_dir))
    return attack_run.report_only(row_dir)


def reattack_rows(row_dirs: list[str], workers: int = 1) -> list[dict]:
    """``attack_run.report_only`` of each row directory, in order, ``workers`` rows at a time.

    Why processes: a row's attack stage is single-threaded numpy (~4 min for 8 x 60,000 trials on these CPUs)
    and a function of its export alone, so rows re-attacked side by side come out bitwise as one after the
    other (test), in 1 / workers of the time where there are that many idle cores.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if workers == 1 or len(row_dirs) <= 1:
        return [_reattack(row_dir) for row_dir in row_dirs]
    # Spawned, not forked: the parent's JAX runtime has threads running, which a fork would copy half-stopped.
    context = multiprocessing.get_context("spawn")
    verbosity = logging.get_verbosity()  # A spawned worker starts with absl's defaults: keep the progress lines.
    with concurrent.futures.ProcessPoolExecutor(
        min(workers, len(row_dirs)), mp_context=context, initializer=logging.set_verbosity, initargs=(verbosity,)
    ) as pool:
        return list(pool.map(_reattack, row_dirs))
