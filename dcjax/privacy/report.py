"""Membership-inference metrics per slice of the example pool, for leave-one-out attack trials (PROTOCOL 7).

A "trial" is one (target model, example) pair: ``scores[m, n]`` is the attack's membership score for example n
against target model m and ``keep[m, n]`` says whether n was in m's training set. A slice is a subset of examples
(columns), e.g. one class; its trials are all M x |slice| pairs. A slice can also be a boolean [M, N] mask of
trials, for sets that differ per target (the real images each target's synthetic set was initialised from).
"""

from __future__ import annotations

import jax
import numpy as np

from dcjax.privacy import metrics


def _check_trials(scores, keep) -> tuple[np.ndarray, np.ndarray]:
    """(scores, keep) -> (float64 [M, N], bool [M, N]); raises ValueError naming the bad argument."""
    s = np.asarray(scores, dtype=np.float64)
    k = np.asarray(keep)
    if s.ndim != 2:
        raise ValueError(f"scores must be [M, N], got shape {s.shape}")
    if k.shape != s.shape:
        raise ValueError(f"keep shape {k.shape} does not match scores shape {s.shape}")
    if k.dtype != bool and not np.isin(k, (0, 1)).all():
        raise ValueError("keep must be boolean (or 0/1)")
    return s, k.astype(bool)


def _slice_columns(name: str, idx, num_examples: int) -> np.ndarray:
    """Slice spec -> int column indices [S]; None means every example."""
    if idx is None:
        return np.arange(num_examples)
    cols = np.asarray(idx)
    if cols.size == 0:
        return cols.astype(np.int64).ravel()
    if cols.ndim != 1 or not np.issubdtype(cols.dtype, np.integer):
        raise ValueError(f"slices[{name!r}] must be a 1-D integer index array or None, got {cols.dtype} "
                         f"{cols.shape}")
    if (cols < 0).any() or (cols >= num_examples).any():
        raise ValueError(f"slices[{name!r}] has indices outside [0, {num_examples})")
    return cols


def _slice_trials(name: str, spec, s: np.ndarray, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The flattened (scores, labels) of a slice: columns (int indices / None) or a bool [M, N] trial mask."""
    if spec is not None and np.asarray(spec).dtype == bool:
        trials = np.asarray(spec)
        if trials.shape != s.shape:
            raise ValueError(f"slices[{name!r}] as a trial mask must have shape {s.shape}, got {trials.shape}")
        return s[trials], k[trials]
    cols = _slice_columns(name, spec, s.shape[1])
    return s[:, cols].ravel(), k[:, cols].ravel()


def _skip_reason(y: np.ndarray) -> str | None:
    # summarize raises on these; a report over many slices should record them rather than abort.
    if y.size == 0:
        return "empty slice"
    if not y.any():
        return f"no members among {y.size} trials"
    if y.all():
        return f"no non-members among {y.size} trials"
    return None


def slice_metrics(scores, keep, key: jax.Array, slices: dict[str, "np.ndarray | None"],
                  num_resamples: int = 200) -> dict:
    """``metrics.summarize`` of the trials of each slice.

    Args:
      scores: float [M, N] membership scores of M target trials (e.g. from ``lira.leave_one_out``).
      keep: bool [M, N] ground-truth membership.
      key: ``jax.random`` key; slice i of ``sorted(slices)`` bootstraps with ``fold_in(key, i)``, so results do
        not depend on the dict's insertion order.
      slices: name -> int [S] column (example) indices, None for all N examples, or a bool [M, N] trial mask
        (per-target slices, e.g. each target's real-init images as members against all its non-members).
      num_resamples: bootstrap resamples per slice.

    Returns:
      {name: summary dict}, or {name: {"skipped": reason}} for a slice without both members and non-members.
    """
    s, k = _check_trials(scores, keep)
    out = {}
    for i, name in enumerate(sorted(slices)):
        s_slice, y_slice = _slice_trials(name, slices[name], s, k)
        reason = _skip_reason(y_slice)
        if reason is not None:
            out[name] = {"skipped": reason}
            continue
        out[name] = metrics.summarize(s_slice, y_slice, jax.random.fold_in(key, i), num_resamples=num_resamples)
    return out


def class_slices(labels) -> dict[str, np.ndarray]:
    """labels int [N] -> {"class_<c>": int [N_c] indices of class c} for each class present."""
    y = np.asarray(labels)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D integer array, got {y.dtype} {y.shape}")
    return {f"class_{int(c)}": np.flatnonzero(y == c) for c in np.unique(y)}


def roc_points(scores, keep, max_points: int = 2000) -> dict:
    """Log-log ROC points of all trials, thinned for JSON: {"fpr": [P], "tpr": [P]} lists with P <= max_points.

    Thinning keeps evenly spaced point indices including the first (0, 0)-corner and last (1, 1) points, so the
    curve keeps its ends; a dense ROC of millions of trials would otherwise bloat the report.
    """
    if max_points < 2:
        raise ValueError(f"max_points must be >= 2, got {max_points}")
    # metrics validates and flattens any matching shapes, so [M, N] trials and flat [n] ones both work.
    fpr, tpr = metrics.log_log_roc_points(scores, keep)
    if fpr.size > max_points:
        idx = np.unique(np.round(np.linspace(0, fpr.size - 1, max_points)).astype(np.int64))
        fpr, tpr = fpr[idx], tpr[idx]
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist()}
