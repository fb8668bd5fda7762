"""Membership-inference metrics (PROTOCOL section 7): ROC, AUC, balanced accuracy, TPR at low FPR, bootstrap CIs.

Conventions: ``labels`` are 1 for members and 0 for non-members; a higher score means "more likely a member"; the
attack predicts "member" when ``score >= threshold``. Scores and labels may have any (matching) shape, e.g. the
[M, N] output of ``lira.leave_one_out``; they are flattened, so every entry is one trial. All arithmetic is NumPy
float64; the only randomness (the bootstrap) comes from the ``jax.random`` key passed in.
"""

from __future__ import annotations

from typing import Callable, Sequence

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


def _bootstrap(stat_fn: Callable, s: np.ndarray, y: np.ndarray, key: jax.Array,
               num_resamples: int) -> np.ndarray:
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


def bootstrap_ci(metric_fn: Callable, scores, labels, key: jax.Array, num_resamples: int = 200,
                 level: float = 0.95) -> tuple[float, float]:
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


def summarize(scores, labels, key: jax.Array, fprs: Sequence[float] = (0.0, 0.001, 0.01),
              num_resamples: int = 200) -> dict:
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
    out.update(fpr_floor=1.0 / num_nonmembers, num_members=int(np.sum(y)), num_nonmembers=num_nonmembers,
               ci_level=0.95, num_resamples=int(num_resamples))
    return out


def log_log_roc_points(scores, labels, floor: float = 1e-5) -> tuple[np.ndarray, np.ndarray]:
    """ROC points for log-log axes: (fpr, tpr) float64 [P], both clipped to [floor, 1] so log(0) never occurs.

    Points below ``floor`` pile up on the axis edge, which is how the reference plots show the unresolved region.
    """
    if not 0.0 < floor < 1.0:
        raise ValueError(f"floor must be in (0, 1), got {floor}")
    fpr, tpr, _ = roc_curve(scores, labels)
    return np.clip(fpr, floor, 1.0), np.clip(tpr, floor, 1.0)
