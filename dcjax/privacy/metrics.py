"""Membership-inference metrics: ROC, AUC, balanced accuracy, TPR at low FPR, bootstrap CIs (docs/protocol.md s. 7).

Conventions: ``labels`` are 1 for members and 0 for non-members; a higher score means "more likely a member"; the
attack predicts "member" when ``score >= threshold``. Scores and labels may have any (matching) shape, e.g. the
[M, N] output of ``lira.leave_one_out``; they are flattened, so every entry is one trial. All arithmetic is NumPy
float64; the only randomness (the bootstrap) comes from the ``jax.random`` key passed in.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

# FPRs are ratios of integers; this absorbs rounding when comparing them with a target such as 0.001.
_FPR_TOL = 1e-12
# Bootstrap indices drawn per jax call (about 16 MB of int32).
_CHUNK_DRAWS = 1 << 22


def _validate(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    """Checks and flattens (scores, labels) -> (float64 [n], bool [n]); raises ValueError naming the problem."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels)
    if s.shape != y.shape:
        raise ValueError(f"scores shape {s.shape} does not match labels shape {y.shape}")
    s, y = s.ravel(), y.ravel()
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite (found NaN or inf)")
    if y.dtype != bool and not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 (non-member) or 1 (member)")
    y = y.astype(bool)
    if not y.any():
        raise ValueError("no members (label 1) among the labels")
    if y.all():
        raise ValueError("no non-members (label 0) among the labels")
    return s, y


def _roc(s: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC of validated inputs: (fpr, tpr, thresholds), one point per distinct score plus the (0, 0) start."""
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    tp = np.cumsum(y_sorted)
    fp = np.cumsum(~y_sorted)
    # Tied scores are classified together, so only the last index of each run of equal scores is a real point.
    last = np.r_[s_sorted[1:] != s_sorted[:-1], True]
    tpr = np.r_[0, tp[last]] / tp[-1]
    fpr = np.r_[0, fp[last]] / fp[-1]
    thresholds = np.r_[np.inf, s_sorted[last]]
    return fpr, tpr, thresholds


def _auc(fpr: np.ndarray, tpr: np.ndarray) -> float:
    # Trapezoids over a tie run's diagonal segment count each tied (member, non-member) pair as 1/2.
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1])) / 2)


def _balanced_accuracy(fpr: np.ndarray, tpr: np.ndarray) -> float:
    # 1 - (FPR + FNR) / 2 with FNR = 1 - TPR.
    return float(np.max((1 + tpr - fpr) / 2))


def _tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, fpr_target: float) -> float:
    # The (0, 0) start always qualifies, so the max is over a non-empty set.
    return float(np.max(tpr[fpr <= fpr_target + _FPR_TOL]))


def roc_curve(scores, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve with one point per distinct threshold.

    Args:
      scores: [...] membership scores (higher = more likely member).
      labels: [...] same shape, 1 = member, 0 = non-member.

    Returns:
      (fpr, tpr, thresholds), each float64 [P] with P = 1 + number of distinct scores. Point i predicts "member"
      for ``score >= thresholds[i]``; thresholds decrease, the first is +inf (the (0, 0) point) and the last is the
      smallest score (the (1, 1) point).
    """
    return _roc(*_validate(scores, labels))


def auc(scores, labels) -> float:
    """Area under the ROC (trapezoid); equals P(member score > non-member score) + P(tie) / 2."""
    return _auc(*roc_curve(scores, labels)[:2])


def balanced_accuracy(scores, labels) -> float:
    """Best balanced accuracy over thresholds: max of 1 - (FPR + FNR) / 2 (0.5 = chance)."""
    return _balanced_accuracy(*roc_curve(scores, labels)[:2])


def tpr_at_fpr(scores, labels, fpr_target: float) -> float:
    """Largest TPR at any threshold whose FPR <= ``fpr_target``.

    ``fpr_target=0`` gives the TPR at a threshold strictly above every non-member score. A target below
    ``fpr_floor(labels)`` cannot be resolved and behaves like 0.
    """
    if not 0.0 <= fpr_target <= 1.0:
        raise ValueError(f"fpr_target must be in [0, 1], got {fpr_target}")
    return _tpr_at_fpr(*roc_curve(scores, labels)[:2], fpr_target)


def fpr_floor(labels) -> float:
    """The smallest non-zero FPR that can be resolved: 1 / (number of non-members)."""
    y = np.asarray(labels).ravel()
    if y.dtype != bool and not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 (non-member) or 1 (member)")
    num_nonmembers = int(np.sum(y == 0))
    if num_nonmembers == 0:
        raise ValueError("no non-members (label 0) among the labels")
    return 1.0 / num_nonmembers


def _resample_indices(key: jax.Array, pos: np.ndarray, neg: np.ndarray, num_resamples: int):
    """Yields [n] index arrays, each resampling members and non-members separately, with replacement.

    Draws are made in chunks of about ``_CHUNK_DRAWS`` indices: one jax call per chunk instead of per resample
    (dispatch dominates otherwise) while memory stays bounded for millions of trials.
    """
    chunk = max(1, _CHUNK_DRAWS // (pos.size + neg.size))
    for c, start in enumerate(range(0, num_resamples, chunk)):
        size = min(chunk, num_resamples - start)
        key_pos, key_neg = jax.random.split(jax.random.fold_in(key, c))
        idx_pos = pos[np.asarray(jax.random.randint(key_pos, (size, pos.size), 0, pos.size))]
        idx_neg = neg[np.asarray(jax.random.randint(key_neg, (size, neg.size), 0, neg.size))]
        yield from np.concatenate([idx_pos, idx_neg], axis=1)


def _bootstrap(stat_fn: Callable, s: np.ndarray, y: np.ndarray, key: jax.Array, num_resamples: int) -> np.ndarray:
    """Stratified bootstrap of validated inputs: [R, ...] array of ``stat_fn(s_resampled, y_resampled)``.

    Members and non-members are resampled separately so every resample keeps both counts (and both classes).
    """
    if num_resamples < 1:
        raise ValueError(f"num_resamples must be >= 1, got {num_resamples}")
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    stats = [stat_fn(s[idx], y[idx]) for idx in _resample_indices(key, pos, neg, num_resamples)]
    return np.asarray(stats, dtype=np.float64)


def _interval(samples: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of bootstrap samples [R, ...] -> (low, high) each [...]."""
    low, high = np.quantile(samples, [(1 - level) / 2, (1 + level) / 2], axis=0)
    return low, high


def bootstrap_ci(
    metric_fn: Callable, scores, labels, key: jax.Array, num_resamples: int = 200, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap CI of ``metric_fn(scores, labels) -> float``, resampling trials stratified by label.

    Args:
      metric_fn: e.g. ``auc`` or ``functools.partial(tpr_at_fpr, fpr_target=0.001)``.
      scores, labels: [...] as for ``roc_curve``.
      key: ``jax.random`` key; the interval is a deterministic function of it.
      num_resamples: R bootstrap resamples.
      level: coverage of the interval.

    Returns:
      (low, high) python floats.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    s, y = _validate(scores, labels)
    low, high = _interval(_bootstrap(metric_fn, s, y, key, num_resamples), level)
    return float(low), float(high)


def _fpr_name(fpr: float) -> str:
    return f"tpr_at_{fpr:g}"


def summarize(
    scores, labels, key: jax.Array, fprs: Sequence[float] = (0.0, 0.001, 0.01), num_resamples: int = 200
) -> dict:
    """All headline metrics with 95% bootstrap CIs, as a JSON-friendly flat dict.

    Keys: ``auc``, ``balanced_accuracy`` and ``tpr_at_{fpr:g}`` for each fpr (e.g. ``tpr_at_0.001``), each with
    ``{name}_ci_low`` / ``{name}_ci_high``; plus ``fpr_floor``, ``num_members``, ``num_nonmembers`` (ints),
    ``ci_level`` and ``num_resamples``. The ROC is computed once per resample and shared by all metrics.
    """
    for f in fprs:
        if not 0.0 <= f <= 1.0:
            raise ValueError(f"fprs must be in [0, 1], got {f}")
    s, y = _validate(scores, labels)
    names = ["auc", "balanced_accuracy"] + [_fpr_name(f) for f in fprs]

    def stats(s_, y_):
        fpr, tpr, _ = _roc(s_, y_)
        return [_auc(fpr, tpr), _balanced_accuracy(fpr, tpr)] + [_tpr_at_fpr(fpr, tpr, f) for f in fprs]

    point = stats(s, y)
    low, high = _interval(_bootstrap(stats, s, y, key, num_resamples), 0.95)
    out = {}
    for name, value, lo, hi in zip(names, point, low, high):
        out.update({name: float(value), f"{name}_ci_low": float(lo), f"{name}_ci_high": float(hi)})
    num_nonmembers = int(np.sum(~y))
    out.update(
        fpr_floor=1.0 / num_nonmembers,
        num_members=int(np.sum(y)),
        num_nonmembers=num_nonmembers,
        ci_level=0.95,
        num_resamples=int(num_resamples),
    )
    return out


def log_log_roc_points(scores, labels, floor: float = 1e-5) -> tuple[np.ndarray, np.ndarray]:
    """ROC points for log-log axes: (fpr, tpr) float64 [P], both clipped to [floor, 1] so log(0) never occurs.

    Points below ``floor`` pile up on the axis edge, which is how the reference plots show the unresolved region.
    """
    if not 0.0 < floor < 1.0:
        raise ValueError(f"floor must be in (0, 1), got {floor}")
    fpr, tpr, _ = roc_curve(scores, labels)
    return np.clip(fpr, floor, 1.0), np.clip(tpr, floor, 1.0)


# ---------------------------------------------------------------------------------------------------------------
# Trial matrices: the example-level bootstrap, paired comparisons and fixed thresholds.
#
# A trial is one (target model m, example n) pair of [M, N] ``scores`` / ``keep`` matrices. The trials of one
# example are strongly correlated (the same image is easy or hard for every model), so resampling trials
# independently (``bootstrap_ci``, ``summarize``) gives intervals that are too narrow. The functions below resample
# examples (columns) instead: a resample takes every included trial of each drawn column, with multiplicity.

# Trial weights held per chunk of resamples (float64 elements, about 16 MB per [chunk, T] array).
_CHUNK_WEIGHTS = 1 << 21
_DEFAULT_FPRS = (0.01, 0.001, 0.0001)


def example_resamples(key: jax.Array, num_examples: int, num_resamples: int) -> np.ndarray:
    """Example (column) indices of an example-level bootstrap: int64 [R, N], each row N draws with replacement.

    A deterministic function of ``key`` and the two sizes. Draw it once and pass the SAME matrix to every
    ``bootstrap_samples`` / ``summarize_examples`` call over the same N examples (every attack, every study row):
    their per-resample statistics are then paired, so they can be differenced (``paired_difference``) or combined
    (e.g. the max over attacks of each resample).
    """
    if num_examples < 1:
        raise ValueError(f"num_examples must be >= 1, got {num_examples}")
    if num_resamples < 1:
        raise ValueError(f"num_resamples must be >= 1, got {num_resamples}")
    rows = max(1, _CHUNK_DRAWS // num_examples)
    chunks = [
        np.asarray(
            jax.random.randint(
                jax.random.fold_in(key, c), (min(rows, num_resamples - start), num_examples), 0, num_examples
            )
        )
        for c, start in enumerate(range(0, num_resamples, rows))
    ]
    return np.concatenate(chunks).astype(np.int64)


def _trial_inputs(scores, keep, include) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scores [M, N], keep [M, N], include None | bool [M, N]) -> (float64, bool, bool) [M, N] arrays.

    Only included scores must be finite (the others may be NaN placeholders). Raises ValueError naming the problem.
    """
    s = np.asarray(scores, dtype=np.float64)
    k = np.asarray(keep)
    if s.ndim != 2:
        raise ValueError(f"scores must be [M, N], got shape {s.shape}")
    if k.shape != s.shape:
        raise ValueError(f"keep shape {k.shape} does not match scores shape {s.shape}")
    if k.dtype != bool and not np.isin(k, (0, 1)).all():
        raise ValueError("keep must be boolean (or 0/1)")
    inc = np.ones(s.shape, bool) if include is None else np.asarray(include)
    if inc.dtype != bool or inc.shape != s.shape:
        raise ValueError(f"include must be None or a bool mask of shape {s.shape}, got {inc.dtype} {inc.shape}")
    if not np.isfinite(s[inc]).all():
        raise ValueError("included scores must be finite (found NaN or inf)")
    return s, k.astype(bool), inc


def _included_trials(scores, keep, include) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The included trials, flattened row-major: (scores float64 [T], labels bool [T], column int64 [T],
    row int64 [T])."""
    s, k, inc = _trial_inputs(scores, keep, include)
    rows, cols = np.nonzero(inc)
    y = k[rows, cols]
    if not y.any():
        raise ValueError(f"no members (keep=True) among the {y.size} included trials")
    if y.all():
        raise ValueError(f"no non-members (keep=False) among the {y.size} included trials")
    return s[rows, cols], y, cols.astype(np.int64), rows.astype(np.int64)


def _check_fprs(fprs: Sequence[float]) -> None:
    for f in fprs:
        if not 0.0 <= f <= 1.0:
            raise ValueError(f"fprs must be in [0, 1], got {f}")


def _check_level(level: float) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")


def trial_metrics(scores, keep, include=None, fprs: Sequence[float] = _DEFAULT_FPRS) -> dict:
    """Point estimates of the headline metrics on the included trials of an [M, N] trial matrix.

    Args:
      scores: float [M, N] membership scores (higher = member).
      keep: bool [M, N] ground-truth membership.
      include: None (every trial) or bool [M, N] mask of the trials of the slice.
      fprs: FPR targets of the ``tpr_at_{f:g}`` entries.

    Returns:
      {"auc", "balanced_accuracy", "tpr_at_{f:g}" per f: float, or None for f < fpr_floor (not resolvable),
      "fpr_floor": 1 / num_nonmembers, "num_members", "num_nonmembers", "num_examples" (columns with an included
      trial): int}.
    """
    _check_fprs(fprs)
    s, y, cols, _ = _included_trials(scores, keep, include)
    fpr, tpr, _ = _roc(s, y)
    num_nonmembers = int(np.sum(~y))
    floor = 1.0 / num_nonmembers
    out: dict[str, Any] = {"auc": _auc(fpr, tpr), "balanced_accuracy": _balanced_accuracy(fpr, tpr)}
    for f in fprs:
        out[_fpr_name(f)] = _tpr_at_fpr(fpr, tpr, f) if f + _FPR_TOL >= floor else None
    out.update(
        fpr_floor=floor,
        num_members=int(np.sum(y)),
        num_nonmembers=num_nonmembers,
        num_examples=int(np.unique(cols).size),
    )
    return out


def _check_resamples(resamples, num_examples: int) -> np.ndarray:
    """resamples int [R, K] with values in [0, N) -> int64 [R, K]; raises ValueError otherwise."""
    res = np.asarray(resamples)
    if res.ndim != 2 or res.shape[0] < 1 or res.shape[1] < 1 or not np.issubdtype(res.dtype, np.integer):
        raise ValueError(f"resamples must be a non-empty int [R, K] array, got {res.dtype} {res.shape}")
    if (res < 0).any() or (res >= num_examples).any():
        raise ValueError(f"resamples has column indices outside [0, {num_examples})")
    return res.astype(np.int64)


def _column_counts(res: np.ndarray, num_examples: int) -> np.ndarray:
    """int [r, K] drawn columns -> int32 [r, N]: how often each column was drawn in each resample."""
    offsets = np.arange(res.shape[0], dtype=np.int64)[:, None] * num_examples
    counts = np.bincount((res + offsets).ravel(), minlength=res.shape[0] * num_examples)
    return counts.reshape(res.shape[0], num_examples).astype(np.int32)


def _rates(counts: np.ndarray) -> np.ndarray:
    """float64 [r, P + 1]: the (0, 0) start, then cumulative counts int [r, P] over each row's last count.

    Written behind the start in place (no concatenated copy) in the counts' memory layout (a column-major gather
    when r > 1), as np.concatenate laid them out: the AUC's row sums add in an order that depends on the layout,
    and every number must stay bitwise what it was.
    """
    rates = np.empty_like(counts, np.float64, shape=(counts.shape[0], counts.shape[1] + 1))
    rates[:, 0] = 0.0
    np.divide(counts, np.maximum(counts[:, -1:], 1), out=rates[:, 1:])
    return rates


def _points(counts: np.ndarray, last: np.ndarray) -> np.ndarray:
    """int [r, T] cumulative counts -> int [r, P]: their columns at the ROC points (``last``), row-major."""
    return counts if last.all() else np.take(counts, np.flatnonzero(last), axis=1)


def _row_sums(trapezoids: np.ndarray) -> np.ndarray:
    """float64 [r, P] -> [r]: each row's sum, added in the order the AUC always added it (bitwise).

    One row: numpy's pairwise sum of a contiguous row. Several rows: the ROC points used to be gathered column-major
    (``counts[:, last]``), whose row sums numpy adds strictly left to right; a running sum adds in that order
    while the points stay row-major (a column-major layout made every pass over them several times slower).
    Overwrites ``trapezoids``.
    """
    if trapezoids.shape[0] == 1:
        return np.sum(trapezoids, axis=1)
    return np.add.accumulate(trapezoids, axis=1, out=trapezoids)[:, -1].copy()


def _trial_weights(examples: np.ndarray, models: np.ndarray | None, cols: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """int32 [r, T] weights of trials (column ``cols`` [T], row ``rows`` [T]) from their columns' draw counts
    ``examples`` int32 [r, N] times, in the two-way bootstrap, their rows' ``models`` int32 [r, M] (None: 1).

    Row-major gathers (``np.take``): ``counts[:, cols]`` lays the result out column-major, which made every later
    pass over it several times slower.
    """
    w = np.take(examples, cols, axis=1)
    if models is not None:
        w *= np.take(models, rows, axis=1)
    return w


def _weighted_metrics(w: np.ndarray, y: np.ndarray, last: np.ndarray, fprs: Sequence[float]) -> dict:
    """Metrics of r weighted copies of score-sorted trials, as ``_roc`` + ``_auc`` / ... would compute them.

    Args:
      w: int32 [r, T] trial weights (multiplicities), trials sorted by decreasing score.
      y: bool [T] labels of the sorted trials.
      last: bool [T], True at the last trial of each run of tied scores (the ROC points).
      fprs: FPR targets.

    Returns:
      {name: float64 [r]}, NaN for a copy without member or without non-member weight.
    """
    # Integer weights: exact, and the cumulative sums (the bootstrap's cost) move half the bytes of float64.
    # int32 holds them: a resample's total weight is at most T x (draws of a column) x (draws of a model).
    # The non-member counts are the total counts minus the member counts (exact integers): one product fewer.
    tp = np.multiply(w, y, dtype=np.int32)
    fp = np.cumsum(w, axis=1, dtype=np.int32)
    tp = _points(np.cumsum(tp, axis=1, out=tp), last)
    fp = _points(fp, last)
    fp -= tp
    bad = (tp[:, -1] == 0) | (fp[:, -1] == 0)
    tpr, fpr = _rates(tp), _rates(fp)
    del tp, fp
    trapezoids = np.diff(fpr, axis=1)
    trapezoids *= np.add(tpr[:, 1:], tpr[:, :-1])
    accuracy = np.add(1, tpr)
    accuracy -= fpr
    # max(x / 2) == max(x) / 2 exactly: halving a float64 in [2**-53, 2] (or 0) is exact and monotone.
    out = {"auc": _row_sums(trapezoids) / 2, "balanced_accuracy": np.max(accuracy, axis=1) / 2}
    del trapezoids, accuracy
    # Both rates only grow along a row, so the best TPR with FPR <= f is at the last such point; a sorted row
    # counts its FPRs <= f by bisection.
    bounds = [f + _FPR_TOL for f in fprs]
    last_ok = np.stack([np.searchsorted(row, bounds, side="right") for row in fpr], axis=1) - 1  # [F, r]
    rows = np.arange(w.shape[0])
    for f, ok in zip(fprs, last_ok):
        out[_fpr_name(f)] = tpr[rows, ok]
    for values in out.values():
        values[bad] = np.nan
    return out


def bootstrap_samples(
    scores, keep, include, resamples, fprs: Sequence[float] = _DEFAULT_FPRS, model_resamples=None
) -> dict:
    """Per-resample metrics of the example-level (or, with ``model_resamples``, two-way) bootstrap.

    Resample r takes, for each drawn column n of ``resamples[r]`` (with multiplicity), every included trial of
    column n. Columns with no included trial contribute nothing, so for a slice (a subset of columns) the slice's
    size varies over resamples, as it should when the slice is a sub-population of the resampled examples. With
    ``model_resamples``, trial (m, n) weighs (draws of column n) x (draws of row m) in resample r: examples and
    models (targets) resampled independently, a crossed ("pigeonhole") bootstrap carrying the bank's variability.

    Args:
      scores, keep, include: as for ``trial_metrics`` ([M, N]; include None or bool [M, N]).
      resamples: int [R, K] column indices in [0, N), e.g. ``example_resamples(key, N, R)``; reuse the same matrix
        across attacks / rows to pair them.
      fprs: FPR targets.
      model_resamples: None (the models held fixed) or int [R, J] row indices in [0, M).

    Returns:
      {"auc", "balanced_accuracy", "tpr_at_{f:g}" per f: float64 [R]} (TPRs are computed even below the floor);
      NaN where resample r drew no included member or no included non-member.
    """
    _check_fprs(fprs)
    s, y, cols, rows = _included_trials(scores, keep, include)
    num_models, num_examples = np.shape(scores)
    res = _check_resamples(resamples, num_examples)
    model_res = None if model_resamples is None else _check_resamples(model_resamples, num_models)
    if model_res is not None and model_res.shape[0] != res.shape[0]:
        raise ValueError(f"model_resamples has {model_res.shape[0]} resamples, resamples {res.shape[0]}")
    order = np.argsort(-s, kind="stable")
    s, y, cols, rows = s[order], y[order], cols[order], rows[order]
    trials = SortedTrials(y=y, cols=cols, rows=rows, last=np.r_[s[1:] != s[:-1], True])

    def weights(start: int, stop: int) -> np.ndarray:  # Counted per chunk: memory stays bounded.
        models = None if model_res is None else _column_counts(model_res[start:stop], num_models)
        return _trial_weights(_column_counts(res[start:stop], num_examples), models, cols, rows)

    return _chunked_metrics(trials, res.shape[0], weights, fprs)


def _chunked_metrics(trials: SortedTrials, num_resamples: int, weights: Callable, fprs: Sequence[float]) -> dict:
    """``_weighted_metrics`` of every resample, a chunk of rows at a time; weights(start, stop) -> int32
    [stop - start, T] the chunk's trial weights. The chunking is part of the result: the AUC's row sums add in
    an order that depends on a chunk's layout (one row or several), so every caller chunks alike."""
    chunk = max(1, _CHUNK_WEIGHTS // trials.y.size)
    parts = [
        _weighted_metrics(weights(i, min(i + chunk, num_resamples)), trials.y, trials.last, fprs)
        for i in range(0, num_resamples, chunk)
    ]
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def sorted_samples(trials: SortedTrials, weights: ResampleWeights, fprs: Sequence[float]) -> dict:
    """``bootstrap_samples`` of trials already sorted (``sort_trials``) with the draws' counts already made
    (``resample_weights``, or some of its rows): the same float64 [R] per metric, bitwise."""
    _check_fprs(fprs)

    def rows_of(start: int, stop: int) -> np.ndarray:
        models = None if weights.models is None else weights.models[start:stop]
        return _trial_weights(weights.examples[start:stop], models, trials.cols, trials.rows)

    return _chunked_metrics(trials, weights.examples.shape[0], rows_of, fprs)


@dataclasses.dataclass(frozen=True)
class ResampleWeights:
    """How often each column (and row) was drawn per resample: ``examples`` int32 [R, N]; ``models`` int32 [R, M]
    or None (models fixed). Computed once (``resample_weights``) and shared by every attack and cell."""

    examples: np.ndarray
    models: np.ndarray | None = None


def resample_weights(resamples, num_examples: int, model_resamples=None, num_models: int = 0) -> ResampleWeights:
    """``ResampleWeights`` of ``bootstrap_samples``' draws (resamples int [R, K] in [0, N); model_resamples None or
    int [R, J] in [0, M))."""
    res = _check_resamples(resamples, num_examples)
    if model_resamples is None:
        return ResampleWeights(_column_counts(res, num_examples))
    model_res = _check_resamples(model_resamples, num_models)
    if model_res.shape[0] != res.shape[0]:
        raise ValueError(f"model_resamples has {model_res.shape[0]} resamples, resamples {res.shape[0]}")
    return ResampleWeights(_column_counts(res, num_examples), _column_counts(model_res, num_models))


def weight_totals(weights: ResampleWeights, keep, include) -> tuple[np.ndarray, np.ndarray]:
    """(member, non-member) total trial weight of every resample, int64 [R] each, without touching the trials.

    Exact: float64 products and sums of integers far below 2**53 (counts x trials), rounded back.
    """
    return weight_totals_of(weights, keep, [include])[0]


def weight_totals_of(weights: ResampleWeights, keep, includes: Sequence) -> list[tuple[np.ndarray, np.ndarray]]:
    """``weight_totals`` of each include mask of ``includes`` (None or bool [M, N] each), the same int64 [R] pairs.

    One float64 copy of the counts and one matrix product for every mask and label (the headline's four cells
    each converted ~100 MB of counts): the sums are of exact integers, so any grouping gives the same totals.
    """
    labels = []
    for include in includes:
        _, k, inc = _trial_inputs(np.zeros(np.shape(keep)), keep, include)
        labels += [k & inc, ~k & inc]  # [M, N] trial indicators.
    a = weights.examples.astype(np.float64)
    if weights.models is None:
        total = a @ np.stack([label.sum(axis=0) for label in labels], axis=1).astype(np.float64)  # [R, 2C]
    else:
        num_models = weights.models.shape[1]
        per_model = a @ np.concatenate([label.T for label in labels], axis=1).astype(np.float64)  # [R, 2C x M]
        per_model = per_model.reshape(a.shape[0], len(labels), num_models) * weights.models[:, None, :]
        total = np.sum(per_model, axis=2)
    totals = np.rint(total).astype(np.int64)
    return [(totals[:, 2 * c], totals[:, 2 * c + 1]) for c in range(len(includes))]


def _prefix_end(last: np.ndarray, start: int) -> int:
    """The first tie-run boundary at or after ``start`` trials (a prefix never splits tied scores)."""
    ends = np.flatnonzero(last) + 1
    position = min(int(np.searchsorted(ends, max(start, 1))), ends.size - 1)
    return int(ends[position])


@dataclasses.dataclass(frozen=True)
class SortedTrials:
    """The included trials of an [M, N] trial matrix by decreasing score (stable: ties in row-major order):
    labels ``y`` bool [T], ``cols`` / ``rows`` int64 [T], ``last`` bool [T] (True at the last trial of each run
    of tied scores, the ROC points)."""

    y: np.ndarray
    cols: np.ndarray
    rows: np.ndarray
    last: np.ndarray


def sort_trials(scores, keep, include, order: np.ndarray | None = None) -> SortedTrials:
    """``SortedTrials`` of the included trials (validated as for ``trial_metrics``).

    order: None, or int [M * N] a stable argsort of minus every score, flattened row-major (one sort serving
      several ``include`` masks): the included trials' stable order is their subsequence of it.
    """
    s, k, inc = _trial_inputs(scores, keep, include)
    if order is None:
        s, y, cols, rows = _included_trials(s, k, inc)
        perm = np.argsort(-s, kind="stable")
        s, y, cols, rows = s[perm], y[perm], cols[perm], rows[perm]
    else:
        flat = order[inc.ravel()[order]].astype(np.int64)
        rows, cols = np.divmod(flat, s.shape[1])
        s, y = s.ravel()[flat], k.ravel()[flat]
        if y.all() or not y.any():
            raise ValueError(f"{int(y.sum())} members among the {y.size} included trials: needs both")
    return SortedTrials(y=y, cols=cols, rows=rows, last=np.r_[s[1:] != s[:-1], True])


def bootstrap_tprs(scores, keep, include, weights: ResampleWeights, fprs: Sequence[float], totals=None) -> dict:
    """``bootstrap_samples``' TPR entries alone, bitwise equal, reading only the top of the score order.

    Why: a TPR at FPR <= f depends only on the trials above the threshold where the weighted non-member count
    passes f, a few percent of the trials; a full weighted ROC per resample (``bootstrap_samples``, O(R x T)) made
    the cross-fitted headline and its null test take ~25 min on a 60,000-example bank. The prefix starts at
    4x the largest f's share of non-members and doubles until every resample has passed the largest f.

    Args:
      scores, keep, include: as for ``trial_metrics``.
      weights: ``resample_weights`` of the draws; totals: ``weight_totals(weights, keep, include)`` or None.
      fprs: non-empty FPR targets.

    Returns:
      {"tpr_at_{f:g}": float64 [R]}, NaN where a resample drew no included member or non-member.
    """
    _check_fprs(fprs)
    if not fprs:
        raise ValueError("bootstrap_tprs needs at least one FPR")
    trials = sort_trials(scores, keep, include)
    return sorted_tprs(trials, weights, fprs, totals if totals is not None else weight_totals(weights, keep, include))


def sorted_tprs(trials: SortedTrials, weights: ResampleWeights, fprs: Sequence[float], totals) -> dict:
    """``bootstrap_tprs`` of trials already sorted (``sort_trials``): the same float64 [R] per FPR, bitwise.

    totals: ``weight_totals(weights, keep, include)`` of the same trials.
    """
    if not fprs:
        raise ValueError("bootstrap_tprs needs at least one FPR")
    y, last = trials.y, trials.last
    members, nonmembers = totals
    bound = max(fprs) + _FPR_TOL
    bad = (members == 0) | (nonmembers == 0)
    start = int(np.searchsorted(np.cumsum(~y), 4 * bound * np.sum(~y) + 64)) + 1
    end = _prefix_end(last, start)
    while True:
        tp, fp = _prefix_counts(trials, weights, end)
        fpr = fp / np.maximum(nonmembers[:, None], 1)
        if end == y.size or np.all(bad | (fpr[:, -1] > bound)):
            break
        end = _prefix_end(last, 2 * end)
    draws = np.arange(tp.shape[0])
    out = {}
    for f in fprs:
        # As in _weighted_metrics: the last ROC point with FPR <= f; before the first point, the (0, 0) start.
        count = np.sum(fpr <= f + _FPR_TOL, axis=1)
        tpr = tp[draws, np.maximum(count - 1, 0)] / np.maximum(members, 1)  # The TPRs of those points alone.
        values = np.where(count > 0, tpr, 0.0)
        values[bad] = np.nan
        out[_fpr_name(f)] = values
    return out


def _prefix_counts(trials: SortedTrials, weights: ResampleWeights, end: int) -> tuple[np.ndarray, np.ndarray]:
    """(member, non-member) weight int32 [R, P] of every draw up to each ROC point among the first ``end`` trials.

    Row-major gathers (``_trial_weights``), and the non-member counts as the total counts minus the member counts
    (exact integers).
    """
    w = _trial_weights(weights.examples, weights.models, trials.cols[:end], trials.rows[:end])
    tp = np.multiply(w, trials.y[:end], dtype=np.int32)
    np.cumsum(tp, axis=1, out=tp)
    np.cumsum(w, axis=1, out=w)
    points = trials.last[:end]
    tp, fp = _points(tp, points), _points(w, points)
    fp -= tp
    return tp, fp


def percentile_interval(values: np.ndarray, level: float) -> tuple[float | None, float | None]:
    """Percentile interval of float64 [R] bootstrap values, NaNs (degenerate resamples) dropped; None if all NaN."""
    valid = values[~np.isnan(values)]
    if valid.size == 0:
        return None, None
    low, high = np.quantile(valid, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def summarize_examples(
    scores, keep, include, resamples, fprs: Sequence[float] = _DEFAULT_FPRS, level: float = 0.95
) -> dict:
    """``trial_metrics`` plus percentile CIs from the example-level bootstrap, as a JSON-friendly flat dict.

    Args:
      scores, keep, include: as for ``trial_metrics`` ([M, N]; include None or bool [M, N]).
      resamples: int [R, K] column indices in [0, N), see ``bootstrap_samples``.
      fprs: FPR targets.
      level: coverage of the intervals.

    Returns:
      The ``trial_metrics`` dict plus ``{name}_ci_low`` / ``{name}_ci_high`` for every metric (None where the
      point estimate is None), "ci_level", "num_resamples", "num_degenerate_resamples" (resamples without an
      included member or non-member, left out of the intervals) and "ci_method": "example bootstrap".
    """
    _check_level(level)
    out = trial_metrics(scores, keep, include, fprs)
    samples = bootstrap_samples(scores, keep, include, resamples, fprs)
    for name, values in samples.items():
        low, high = (None, None) if out[name] is None else percentile_interval(values, level)
        out[f"{name}_ci_low"], out[f"{name}_ci_high"] = low, high
    out.update(
        ci_level=float(level),
        num_resamples=int(np.shape(resamples)[0]),
        num_degenerate_resamples=int(np.sum(np.isnan(samples["auc"]))),
        ci_method="example bootstrap",
    )
    return out


def paired_difference(samples_a, samples_b, point_a: float, point_b: float, level: float = 0.95) -> dict:
    """Paired bootstrap comparison of one metric between two rows (or attacks): a - b.

    Valid only when both sample arrays come from ``bootstrap_samples`` with the SAME ``resamples`` matrix over the
    same N examples (so entry r of both used the same drawn examples); otherwise the pairing is meaningless.

    Args:
      samples_a, samples_b: float64 [R] per-resample values of the metric; NaN entries (degenerate resamples)
        are dropped pairwise.
      point_a, point_b: the point estimates (e.g. from ``trial_metrics``); must not be None.
      level: coverage of the interval.

    Returns:
      {"difference": point_a - point_b, "ci_low", "ci_high": percentile interval of the per-resample
      differences, "p_two_sided": min(1, 2 * min(frac(d <= 0), frac(d >= 0))), "num_resamples": int}.
    """
    _check_level(level)
    a, b = np.asarray(samples_a, np.float64), np.asarray(samples_b, np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"samples must be two [R] arrays of equal length, got {a.shape} and {b.shape}")
    if point_a is None or point_b is None:
        raise ValueError("point estimates must not be None (metric not resolvable for this slice)")
    d = a - b
    d = d[~np.isnan(d)]
    if d.size == 0:
        raise ValueError("no resample where both samples are defined")
    low, high = np.quantile(d, [(1 - level) / 2, (1 + level) / 2])
    p = min(1.0, 2.0 * min(float(np.mean(d <= 0)), float(np.mean(d >= 0))))
    return {
        "difference": float(point_a) - float(point_b),
        "ci_low": float(low),
        "ci_high": float(high),
        "p_two_sided": p,
        "num_resamples": int(d.size),
    }


def threshold_at_fpr(nonmember_scores, fpr: float) -> float:
    """The lowest threshold t with fraction(nonmember_scores >= t) <= fpr (the attack predicts member at >= t).

    With n scores, k = floor(n * fpr) false positives are allowed, and every t strictly above the (k+1)-th largest
    score s_(k+1) qualifies, while no t <= s_(k+1) does; the lowest such float64 is ``nextafter(s_(k+1), +inf)``,
    which is returned. Edge cases, all well defined (never NaN): an fpr below 1 / n allows k = 0 and gives the
    float just above the largest non-member score (the strictest useful threshold; it flags no non-member); k >= n
    (fpr = 1) gives -inf (flag everything); +inf (flag no finite score) only if s_(k+1) is the largest float64.

    Args:
      nonmember_scores: float [...] scores of non-member trials (flattened), finite, at least one.
      fpr: target false-positive rate in [0, 1].
    """
    s = np.asarray(nonmember_scores, dtype=np.float64).ravel()
    if s.size == 0:
        raise ValueError("nonmember_scores is empty")
    if not np.isfinite(s).all():
        raise ValueError("nonmember_scores must be finite (found NaN or inf)")
    if not 0.0 <= fpr <= 1.0:
        raise ValueError(f"fpr must be in [0, 1], got {fpr}")
    allowed = int(np.floor(s.size * (fpr + _FPR_TOL)))
    if allowed >= s.size:
        return -np.inf
    pos = s.size - 1 - allowed  # ascending position of the (allowed + 1)-th largest score
    return float(np.nextafter(np.partition(s, pos)[pos], np.inf))


def _canary_columns(canary_cols, num_examples: int) -> np.ndarray:
    cols = np.asarray(canary_cols)
    if cols.ndim != 1 or cols.size == 0 or not np.issubdtype(cols.dtype, np.integer):
        raise ValueError(f"canary_cols must be a non-empty 1-D int array, got {cols.dtype} {cols.shape}")
    if (cols < 0).any() or (cols >= num_examples).any() or np.unique(cols).size != cols.size:
        raise ValueError(f"canary_cols must be distinct column indices in [0, {num_examples})")
    return cols.astype(np.int64)


def canary_detection(scores, keep, natural_include, canary_cols, fpr: float = 0.001) -> dict:
    """Canary trials flagged at a threshold set on NATURAL non-member trials at FPR ``fpr``.

    Args:
      scores: float [M, N] membership scores; keep: bool [M, N] membership.
      natural_include: bool [M, N] natural (non-canary) trials, or None for every trial outside ``canary_cols``;
        must not include a canary column. The threshold is ``threshold_at_fpr`` of natural_include & ~keep.
      canary_cols: int [C] distinct column indices of the canaries.
      fpr: FPR target on the natural non-members.

    Returns:
      {"detected": canary member trials with score >= threshold, "members": canary member trials,
      "false_positives" / "nonmembers": the same for canary non-member trials, "threshold", "fpr",
      "natural_nonmembers": trials the threshold was set on, "natural_fpr": their realised FPR}.
    """
    s, k, nat = _trial_inputs(scores, keep, natural_include)
    cols = _canary_columns(canary_cols, s.shape[1])
    if natural_include is None:
        nat[:, cols] = False
    elif nat[:, cols].any():
        raise ValueError("natural_include must not include trials of canary columns")
    natural = s[nat & ~k]
    if natural.size == 0:
        raise ValueError("no natural non-member trials to set the threshold on")
    threshold = threshold_at_fpr(natural, fpr)
    cs, ck = s[:, cols], k[:, cols]
    if not np.isfinite(cs).all():
        raise ValueError("canary scores must be finite (found NaN or inf)")
    flagged = cs >= threshold
    return {
        "detected": int(np.sum(flagged & ck)),
        "members": int(np.sum(ck)),
        "false_positives": int(np.sum(flagged & ~ck)),
        "nonmembers": int(np.sum(~ck)),
        "threshold": threshold,
        "fpr": float(fpr),
        "natural_nonmembers": int(natural.size),
        "natural_fpr": float(np.mean(natural >= threshold)),
    }
