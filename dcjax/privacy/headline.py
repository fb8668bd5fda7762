"""A row's headline attack, chosen without the labels of the trials it is reported on, and its intervals.

Why: the strongest of A attacks, picked by its TPR on the same trials it is then reported on, is biased
upwards (the maximum of noisy estimates), and bootstrapping the maximum does not remove that bias: on
exports whose membership labels are random (no attack has any signal), such a headline's 95 % interval
excluded chance far more often than 5 % of the time. The fix is cross-fitting, as an attacker would
choose: only on data whose labels it may use.

Cross-fitting (``Split``): the M models (each in turn the target) are cut into two groups and the
natural (non-canary) examples into two halves, by key. That gives four cells (group g, half h). For the
trials of cell (g, h), the attack is the one with the highest TPR at 0.1 % FPR (ties: higher AUC, then
the earlier attack) on the OPPOSITE cell (1 - g, 1 - h): other models, other examples, so neither the
reported trials' labels nor their examples enter the choice. The headline TPR at each FPR is the mean
over the four cells of the chosen attack's TPR on that cell (each cell's threshold set on its own
non-members, so its FPR floor is 1 / that cell's non-members).

Intervals: the choice is redone inside every bootstrap resample, so the interval carries the choice's
variability. Two bootstraps share the draws: examples only (models fixed), and two-way (examples and
models resampled independently, both within their halves / groups); the reported interval is the union
of the two (the wider where they differ). Every row of a study with the same seed has the same split
and the same resamples, so their per-resample headlines pair up for row contrasts.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Mapping, Sequence

import jax
import numpy as np

from dcjax.privacy import metrics

FPRS = (0.01, 0.001, 0.0001)
CHOICE_FPR = 0.001
CHOICE = "tpr_at_0.001"
CELLS = ((0, 0), (0, 1), (1, 0), (1, 1))  # (model group, example half); cell c's opposite is 3 - c.
BOOTSTRAPS = ("examples", "two_way")


@dataclasses.dataclass(frozen=True)
class Split:
    """The cross-fitting split: ``group`` int [M] in {0, 1}; ``half`` int [N] in {0, 1}, -1 outside the slice."""

    group: np.ndarray
    half: np.ndarray

    def cell_masks(self) -> list[np.ndarray]:
        """bool [M, N] trial masks of the four cells, in ``CELLS`` order."""
        return [(self.group == g)[:, None] & (self.half == h)[None, :] for g, h in CELLS]


def draw_split(key: jax.Array, num_models: int, included: np.ndarray) -> Split:
    """A key-drawn split: half the models (rounded down) in group 0, half the included examples in half 0.

    included: bool [N], the slice's examples (the natural ones); needs >= 2 models and >= 2 examples.
    """
    included = np.asarray(included, bool)
    if num_models < 2 or included.sum() < 2:
        raise ValueError(f"cross-fitting needs >= 2 models and >= 2 examples, got {num_models} and {included.sum()}")
    key_models, key_examples = jax.random.split(key)
    group = np.ones(num_models, np.int64)
    group[np.asarray(jax.random.permutation(key_models, num_models))[: num_models // 2]] = 0
    cols = np.flatnonzero(included)
    perm = cols[np.asarray(jax.random.permutation(key_examples, cols.size))]
    half = np.full(included.size, -1, np.int64)
    half[perm[: cols.size // 2]], half[perm[cols.size // 2 :]] = 0, 1
    return Split(group=group, half=half)


def _stratified(key: jax.Array, strata: np.ndarray, num_resamples: int) -> np.ndarray:
    """int64 [R, K]: each row draws, with replacement, as many indices from each stratum as it holds.

    strata: int [L], the stratum of each index (-1: never drawn); K = the number of indices in a stratum >= 0.
    """
    parts = []
    for s, value in enumerate(np.unique(strata[strata >= 0])):
        members = np.flatnonzero(strata == value)
        draws = jax.random.randint(jax.random.fold_in(key, s), (num_resamples, members.size), 0, members.size)
        parts.append(members[np.asarray(draws)])
    return np.concatenate(parts, axis=1).astype(np.int64)


@dataclasses.dataclass(frozen=True)
class Resamples:
    """Shared bootstrap draws: ``examples`` int [R, K] columns (within halves), ``models`` int [R, M] rows
    (within groups). Row 0 of each is the identity (the point estimate); rows 1.. are the resamples."""

    examples: np.ndarray
    models: np.ndarray


def draw_resamples(key: jax.Array, split: Split, num_resamples: int) -> Resamples:
    """The identity plus ``num_resamples`` stratified draws of examples and, independently, of models."""
    key_examples, key_models = jax.random.split(key)
    examples = _stratified(key_examples, split.half, num_resamples)
    models = _stratified(key_models, split.group, num_resamples)
    identity_examples = np.flatnonzero(split.half >= 0)[None]
    identity_models = np.arange(split.group.size)[None]
    return Resamples(
        examples=np.concatenate([identity_examples, examples]), models=np.concatenate([identity_models, models])
    )


def cell_samples(scores: np.ndarray, keep: np.ndarray, split: Split, res: Resamples, two_way: bool) -> dict:
    """{metric: float64 [4, 1 + R]}: one attack's metrics on each cell, at the identity and every resample."""
    out = collections.defaultdict(list)
    for mask in split.cell_masks():
        s = metrics.bootstrap_samples(scores, keep, mask, res.examples, FPRS, res.models if two_way else None)
        for name, values in s.items():
            out[name].append(values)
    return {name: np.stack(v) for name, v in out.items()}


def choose(samples: Mapping[str, dict]) -> np.ndarray:
    """int [4, 1 + R]: per cell and draw, the index (in ``samples`` order) of the attack chosen on the
    opposite cell: highest TPR at 0.1 % FPR, ties by higher AUC, then the earlier attack. A degenerate draw
    (NaN) chooses attack 0; its headline is NaN anyway."""
    tpr = np.stack([s[CHOICE] for s in samples.values()])[:, ::-1]  # [A, 4, D], cells reversed: the opposite.
    auc = np.stack([s["auc"] for s in samples.values()])[:, ::-1]
    tpr, auc = np.nan_to_num(tpr, nan=-1.0), np.nan_to_num(auc, nan=-1.0)
    best = tpr == tpr.max(axis=0, keepdims=True)
    return np.argmax(np.where(best, auc, -np.inf), axis=0)


def _headline_draws(samples: Mapping[str, dict], chosen: np.ndarray) -> dict[str, np.ndarray]:
    """{metric: float64 [1 + R]}: the mean over cells of the chosen attack's metric, per draw."""
    names = list(samples)
    cells = np.arange(len(CELLS))[:, None]
    draws = np.arange(chosen.shape[1])[None, :]
    out = {}
    for metric in [f"tpr_at_{f:g}" for f in FPRS] + ["auc"]:
        stacked = np.stack([samples[n][metric] for n in names])  # [A, 4, D]
        out[metric] = stacked[chosen, cells, draws].mean(axis=0)
    return out


def _floor(keep: np.ndarray, split: Split) -> float:
    """The headline's FPR floor: 1 / the fewest non-member trials of any cell."""
    return max(1.0 / max(int((mask & ~keep).sum()), 1) for mask in split.cell_masks())


def _chosen_names(names: Sequence[str], chosen: np.ndarray) -> dict[str, str]:
    return {f"group{g}_half{h}": names[int(chosen[c, 0])] for c, (g, h) in enumerate(CELLS)}


def headline(scores: Mapping[str, np.ndarray], keep: np.ndarray, split: Split, res: Resamples) -> dict | None:
    """The cross-fitted headline of one row (see the module docstring).

    Args:
      scores: {attack: float [M, N]} the candidate (model) attacks, in a fixed order (the last tie-break).
      keep: bool [M, N] membership; split, res: ``draw_split`` / ``draw_resamples`` (shared by a study's rows).

    Returns:
      {"attack_by_cell": {cell: attack}, "attack": the attack of most cells, "fpr_floor", and per metric m
      (TPR at each FPR, AUC): m (None below the floor), m_ci_low / m_ci_high (the union of both bootstraps'
      95 % intervals), m_ci_examples / m_ci_two_way ([low, high] each); "samples": the two-way
      bootstrap's [R] headline TPRs at 0.1 % FPR (None for degenerate draws), for paired row contrasts};
      None when a cell has no member or no non-member trial.
    """
    keep = np.asarray(keep, bool)
    names = list(scores)
    if any(not (keep & m).any() or (keep | ~m).all() for m in split.cell_masks()):
        return None  # A cell without members or without non-members (a tiny pool): no cross-fitted headline.
    floor = _floor(keep, split)
    out: dict = {"fpr_floor": floor}
    for boot in BOOTSTRAPS:
        samples = {n: cell_samples(scores[n], keep, split, res, two_way=boot == "two_way") for n in names}
        chosen = choose(samples)
        draws = _headline_draws(samples, chosen)
        if boot == "examples":
            out["attack_by_cell"] = _chosen_names(names, chosen)
            out["attack"] = collections.Counter(out["attack_by_cell"].values()).most_common(1)[0][0]
            out.update({m: float(v[0]) for m, v in draws.items()})
        for m, v in draws.items():
            out[f"{m}_ci_{boot}"] = list(metrics.percentile_interval(v[1:], 0.95))
        if boot == "two_way":
            out["samples"] = [None if np.isnan(v) else float(v) for v in draws[CHOICE][1:]]
    for m in draws:
        lows, highs = zip(*(out[f"{m}_ci_{b}"] for b in BOOTSTRAPS))
        out[f"{m}_ci_low"] = None if None in lows else min(lows)
        out[f"{m}_ci_high"] = None if None in highs else max(highs)
        if m.startswith("tpr_at_") and float(m.removeprefix("tpr_at_")) + 1e-12 < floor:
            out[m] = out[f"{m}_ci_low"] = out[f"{m}_ci_high"] = None  # Not resolvable in a cell.
    return out


def excludes(summary: dict, value: float, metric: str = CHOICE) -> bool:
    """Whether the headline's interval of ``metric`` excludes ``value`` (False when there is no interval)."""
    low, high = summary.get(f"{metric}_ci_low"), summary.get(f"{metric}_ci_high")
    return low is not None and high is not None and not low <= value <= high
