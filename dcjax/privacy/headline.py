"""A row's headline attack, chosen without the labels of the trials it is reported on, and its intervals.

Why: the strongest of A attacks, picked by its TPR on the same trials it is then reported on, is biased
upwards (the maximum of noisy estimates), and bootstrapping the maximum does not remove that bias: on
exports whose membership labels are random (no attack has any signal), such a headline's 95 % interval
excluded chance far more often than 5 % of the time. The fix is cross-fitting, as an attacker would
choose: only on data whose labels it may use.

Cross-fitting (``Split``): the M models (each in turn the target) are cut into two groups and the
natural (non-canary) examples into two halves, by key. That gives four cells (group g, half h). For the
trials of cell (g, h), the attack is the one with the highest TPR at 0.1 % FPR (ties: higher TPR at 1 %
FPR, then higher AUC, then the earlier attack) on the OPPOSITE cell (1 - g, 1 - h): other models, other
examples, so neither the reported trials' labels nor their examples enter the choice. The headline TPR at
each FPR is the mean over the four cells of the chosen attack's TPR on that cell (each cell's threshold set on its own
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
# The choice's order before AUC: both TPRs come cheap from the top of the score order (``metrics.bootstrap_tprs``),
# an AUC needs the whole weighted ROC of a draw, so it is built only where both TPRs tie (rare on large banks).
TIE_BREAKS = (CHOICE, "tpr_at_0.01")
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
    # ``weights``' memo: the draws' counts do not depend on the labels, so the null test's 20 relabellings of a
    # row reuse the headline's instead of recounting ~24 million draws per bootstrap each time.
    _weights: dict = dataclasses.field(default_factory=dict, init=False, repr=False, compare=False)

    def weights(self, two_way: bool, num_examples: int, num_models: int) -> metrics.ResampleWeights:
        """``metrics.resample_weights`` of these draws over N examples (and M models if ``two_way``), computed
        once per (two_way, N, M)."""
        memo = (two_way, num_examples, num_models)
        if memo not in self._weights:
            models = self.models if two_way else None
            self._weights[memo] = metrics.resample_weights(self.examples, num_examples, models, num_models)
        return self._weights[memo]


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


class _Cells:
    """One bootstrap's (examples only or two-way) draw weights and per-cell weight totals, computed once and
    shared by every attack; TPRs come from ``metrics.sorted_tprs`` (the top of the score order only), AUCs
    from the full weighted ROC, only for the attacks that need them."""

    def __init__(self, keep: np.ndarray, split: Split, res: Resamples, two_way: bool):
        self.keep, self.split, self.res, self.two_way = keep, split, res, two_way
        num_models, num_examples = keep.shape
        self.weights = res.weights(two_way, num_examples, num_models)
        self.masks = split.cell_masks()
        self.totals = metrics.weight_totals_of(self.weights, keep, self.masks)

    def tprs(self, trials: Sequence[metrics.SortedTrials]) -> dict:
        """{tpr metric: float64 [4, 1 + R]} of one attack from its sorted trials of each cell (``_Ranked``)."""
        cells = [metrics.sorted_tprs(cell, self.weights, FPRS, totals) for cell, totals in zip(trials, self.totals)]
        return {name: np.stack([c[name] for c in cells]) for name in cells[0]}

    def auc(self, trials: Sequence[metrics.SortedTrials], where: np.ndarray) -> np.ndarray:
        """float64 [4, 1 + R]: one attack's AUC at the (cell, draw) positions ``where`` (bool [4, 1 + R]), 0 elsewhere,
        from its sorted trials of each cell (``_Ranked``).

        Only those draws' weighted ROCs are built: a full ROC per resample is what made the headline slow.
        """
        out = np.zeros(where.shape)
        for c, cell in enumerate(trials):
            draws = np.flatnonzero(where[c])
            if draws.size:
                models = self.weights.models[draws] if self.weights.models is not None else None
                rows = metrics.ResampleWeights(self.weights.examples[draws], models)
                out[c, draws] = metrics.sorted_samples(cell, rows, ())["auc"]
        return out


def _alive(samples: Mapping[str, dict], metrics_in_order: Sequence[str]) -> np.ndarray:
    """bool [A, 4, D]: the attacks still tied at the top of each (cell, draw) after the metrics in order
    (NaN, a degenerate draw, ranks lowest)."""
    alive = None
    for metric in metrics_in_order:
        values = np.nan_to_num(np.stack([s[metric] for s in samples.values()]), nan=-1.0)
        masked = values if alive is None else np.where(alive, values, -np.inf)
        top = masked == masked.max(axis=0, keepdims=True)
        alive = top if alive is None else alive & top
    assert alive is not None, "at least one metric"
    return alive


def choose(samples: Mapping[str, dict]) -> np.ndarray:
    """int [4, 1 + R]: per cell and draw, the index (in ``samples`` order) of the attack chosen on the
    opposite cell: highest TPR at 0.1 % FPR, ties by higher TPR at 1 % FPR, then higher AUC, then the earlier
    attack. A degenerate draw (NaN) chooses attack 0; its headline is NaN anyway."""
    alive = _alive(samples, TIE_BREAKS + ("auc",))[:, ::-1]  # Cells reversed: each cell takes the opposite's.
    return np.argmax(alive, axis=0)


def _ranking(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(stable descending order, tie-run boundaries) of float [M, N] scores: all a ROC reads of them."""
    flat = np.asarray(scores, np.float64).ravel()
    order = np.argsort(-flat, kind="stable")
    ranked = flat[order]
    return order, ranked[1:] != ranked[:-1]


def _groups(rankings: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[int]:
    """``identical_groups`` of the attacks' ``_ranking``s."""
    same = lambda i, j: all(np.array_equal(x, y) for x, y in zip(rankings[i], rankings[j]))  # noqa: E731
    return [next(j for j in range(i + 1) if same(i, j)) for i in range(len(rankings))]


def identical_groups(scores: Mapping[str, np.ndarray]) -> list[int]:
    """For each attack (in order), the index of the first attack that ranks the trials identically (same order,
    same ties; e.g. LOSS and confidence, or a recipe-aware LiRA on a recipe that uses every member). Every
    statistic here is a function of that ranking on some subset of trials, so such attacks share them all (and
    their AUC ties would otherwise be broken at every draw, each a full weighted ROC)."""
    return _groups([_ranking(a) for a in scores.values()])


@dataclasses.dataclass(frozen=True)
class _Ranked:
    """What both bootstraps of a headline share: the attacks' ``identical_groups`` and, per group, its trials of
    each cell sorted by score (``metrics.SortedTrials``, in ``CELLS`` order)."""

    group: list[int]
    trials: dict[int, list[metrics.SortedTrials]]


def _rank(scores: Mapping[str, np.ndarray], keep: np.ndarray, split: Split) -> _Ranked:
    """``_Ranked`` of the attacks: one stable sort of each attack's trials, whose subsequences are the cells'
    stable orders (instead of a sort per cell, attack and bootstrap)."""
    names, masks = list(scores), split.cell_masks()
    rankings = [_ranking(a) for a in scores.values()]
    group = _groups(rankings)
    trials = {
        g: [metrics.sort_trials(scores[names[g]], keep, mask, rankings[g][0]) for mask in masks]
        for g in sorted(set(group))
    }
    return _Ranked(group=group, trials=trials)


def _ties(samples: Mapping[str, dict], group: list[int]) -> dict[int, np.ndarray]:
    """{group: bool [4, D]}: the (cell, draw) positions where that group's AUC breaks a tie at the top (it shares
    both TPRs of ``TIE_BREAKS`` with another group); groups in no such tie are left out."""
    alive = _alive(samples, TIE_BREAKS)  # [A, 4, D]
    firsts = sorted(set(group))
    alive_group = np.stack([alive[np.asarray(group) == g].any(axis=0) for g in firsts])  # [G, 4, D]
    tied = alive_group.sum(axis=0) > 1
    return {g: b & tied for g, b in zip(firsts, alive_group) if (b & tied).any()}


def _samples(
    scores: Mapping[str, np.ndarray], cells: _Cells, with_auc: bool, ranked: _Ranked | None = None
) -> tuple[dict, np.ndarray]:
    """({attack: {metric: [4, D]}}, chosen [4, D]): every attack's TPRs; its AUC only at the (cell, draw)
    positions where a tie-break or the headline's AUC reads it (0 elsewhere, never read); and the choice.
    ``ranked``: ``_rank(scores, ...)`` when the caller has it (None: computed here)."""
    names = list(scores)
    ranked = _rank(scores, cells.keep, cells.split) if ranked is None else ranked
    group = ranked.group
    tprs = {g: cells.tprs(trials) for g, trials in ranked.trials.items()}
    samples = {n: dict(tprs[group[i]]) for i, n in enumerate(names)}
    aucs = {g: cells.auc(ranked.trials[g], where) for g, where in _ties(samples, group).items()}
    placeholder = np.zeros_like(samples[names[0]][CHOICE])
    for i, n in enumerate(names):
        samples[n]["auc"] = aucs.get(group[i], placeholder)
    chosen = choose(samples)
    if with_auc:  # The headline's AUC at (cell, draw) is the chosen attack's there.
        chosen_group = np.asarray(group)[chosen]
        for g in np.unique(chosen_group):
            where = chosen_group == g
            auc = cells.auc(ranked.trials[g], where)
            aucs[g] = np.where(where, auc, aucs.get(g, placeholder))
        for i, n in enumerate(names):
            samples[n]["auc"] = aucs.get(group[i], placeholder)
    return samples, chosen


def _headline_draws(samples: Mapping[str, dict], chosen: np.ndarray, with_auc: bool) -> dict[str, np.ndarray]:
    """{metric: float64 [1 + R]}: the mean over cells of the chosen attack's metric, per draw."""
    names = list(samples)
    cells = np.arange(len(CELLS))[:, None]
    draws = np.arange(chosen.shape[1])[None, :]
    out = {}
    for metric in [f"tpr_at_{f:g}" for f in FPRS] + (["auc"] if with_auc else []):
        stacked = np.stack([samples[n][metric] for n in names])  # [A, 4, D]
        out[metric] = stacked[chosen, cells, draws].mean(axis=0)
    return out


def _floor(keep: np.ndarray, split: Split) -> float:
    """The headline's FPR floor: 1 / the fewest non-member trials of any cell."""
    return max(1.0 / max(int((mask & ~keep).sum()), 1) for mask in split.cell_masks())


def _chosen_names(names: Sequence[str], chosen: np.ndarray) -> dict[str, str]:
    return {f"group{g}_half{h}": names[int(chosen[c, 0])] for c, (g, h) in enumerate(CELLS)}


def _point_estimate(names: Sequence[str], chosen: np.ndarray, draws: dict[str, np.ndarray]) -> dict:
    """The headline itself, from draw 0 (the identity, ``Resamples``) of the examples bootstrap: the attack chosen
    per cell ("attack_by_cell"), the attack of most cells ("attack") and each metric's value (draws: {metric:
    [1 + R]})."""
    by_cell = _chosen_names(names, chosen)
    return {
        "attack_by_cell": by_cell,
        "attack": collections.Counter(by_cell.values()).most_common(1)[0][0],
        **{m: float(v[0]) for m, v in draws.items()},
    }


def _add_union_intervals(out: dict, metric_names: Sequence[str], floor: float) -> None:
    """Adds each metric's m_ci_low / m_ci_high to ``out`` (the union of both bootstraps' m_ci_<bootstrap>, None if
    either is None), and blanks a TPR at an FPR below ``floor`` with its interval: not resolvable in a cell."""
    for m in metric_names:
        lows, highs = zip(*(out[f"{m}_ci_{b}"] for b in BOOTSTRAPS))
        out[f"{m}_ci_low"] = None if None in lows else min(lows)
        out[f"{m}_ci_high"] = None if None in highs else max(highs)
        if m.startswith("tpr_at_") and float(m.removeprefix("tpr_at_")) + 1e-12 < floor:
            out[m] = out[f"{m}_ci_low"] = out[f"{m}_ci_high"] = None  # Not resolvable in a cell.


def headline(
    scores: Mapping[str, np.ndarray], keep: np.ndarray, split: Split, res: Resamples, with_auc: bool = True
) -> dict | None:
    """The cross-fitted headline of one row (see the module docstring).

    Args:
      scores: {attack: float [M, N]} the candidate (model) attacks, in a fixed order (the last tie-break).
      keep: bool [M, N] membership; split, res: ``draw_split`` / ``draw_resamples`` (shared by a study's rows).
      with_auc: also the headline's AUC and its intervals (the null test, which reads only the TPR at 0.1 %
        FPR, skips them: an AUC needs the whole weighted ROC of every resample).

    Returns:
      {"attack_by_cell": {cell: attack}, "attack": the attack of most cells, "fpr_floor", and per metric m
      (TPR at each FPR, AUC): m (None below the floor), m_ci_low / m_ci_high (the union of both bootstraps'
      95 % intervals), m_ci_examples / m_ci_two_way ([low, high] each); "samples": the two-way
      bootstrap's [R] headline TPRs at 0.1 % FPR (None for degenerate draws), for paired row contrasts};
      None when a cell has no member or no non-member trial.
    """
    keep = np.asarray(keep, bool)
    if any(not (keep & m).any() or (keep | ~m).all() for m in split.cell_masks()):
        return None  # A cell without members or without non-members (a tiny pool): no cross-fitted headline.
    floor = _floor(keep, split)
    ranked = _rank(scores, keep, split)  # Once for both bootstraps: an argsort of every attack's trials.
    out: dict = {"fpr_floor": floor}
    for boot in BOOTSTRAPS:
        cells = _Cells(keep, split, res, two_way=boot == "two_way")
        samples, chosen = _samples(scores, cells, with_auc, ranked)
        draws = _headline_draws(samples, chosen, with_auc)
        if boot == "examples":
            out.update(_point_estimate(list(scores), chosen, draws))
        for m, v in draws.items():
            out[f"{m}_ci_{boot}"] = list(metrics.percentile_interval(v[1:], 0.95))
        if boot == "two_way":
            out["samples"] = [None if np.isnan(v) else float(v) for v in draws[CHOICE][1:]]
    _add_union_intervals(out, list(draws), floor)
    return out


def excludes(summary: dict, value: float, metric: str = CHOICE) -> bool:
    """Whether the headline's interval of ``metric`` excludes ``value`` (False when there is no interval)."""
    low, high = summary.get(f"{metric}_ci_low"), summary.get(f"{metric}_ci_high")
    return low is not None and high is not None and not low <= value <= high
