"""A family of paired contrasts, adjusted together: the single-step max-T bootstrap.

A study compares many pairs of rows (every row against the subset and original rows, every condensed
row against every DP-SGD row). Read one at a time, some of ~20 tests at the 5 % level come out
"significant" by chance; the conclusion may only use p-values and intervals that hold for the family.

Max-T (Westfall and Young's single-step, with bootstrap draws): each contrast j has a point difference
d_j and paired bootstrap draws d*_jr (the same resamples for every row, so a resample's draws of two
rows pair up). With se_j the draws' standard deviation, T_j = |d_j| / se_j and T*_jr = |d*_jr - d_j| /
se_j (the draws centred at the point: the null's spread). Then

* raw p_j = (1 + #{r: T*_jr >= T_j}) / (1 + R): one contrast read alone;
* adjusted p_j = (1 + #{r: max_k T*_kr >= T_j}) / (1 + R): controls the family-wise error rate
  (the chance of any false claim in the family) at the level it is read at;
* the simultaneous 95 % interval d_j +- q_95(max_k T*_k) se_j covers all contrasts at once with 95 %.

The add-one counts keep a p-value from reading 0 with finitely many draws (its floor is 1 / (1 + R)).
"""

from __future__ import annotations

import numpy as np


def _standardised(draws: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(T* [J, R], T [J]); a contrast whose draws never vary is 0 when its point is 0, else +inf."""
    se = draws.std(axis=1, ddof=1) if draws.shape[1] > 1 else np.zeros(draws.shape[0])
    safe = np.where(se > 0, se, 1.0)
    centred = np.abs(draws - points[:, None]) / safe[:, None]
    t_obs = np.abs(points) / safe
    flat = se == 0
    centred[flat] = 0.0
    t_obs[flat] = np.where(points[flat] == 0, 0.0, np.inf)
    return centred, t_obs


def max_t(draws, points, level: float = 0.95) -> list[dict]:
    """Raw and family-adjusted p-values and intervals of J paired contrasts.

    Args:
      draws: float [J, R] bootstrap draws of each contrast (NaN: a degenerate resample; a resample with a
        NaN in any contrast is dropped for all, so the maximum is taken over the same draws).
      points: float [J] the point differences.
      level: coverage of both intervals.

    Returns:
      One dict per contrast: {"difference", "p_raw", "p_adjusted", "ci_low" / "ci_high" (percentile interval
      of its own draws), "simultaneous_low" / "simultaneous_high" (max-T, covering the family), "se",
      "num_resamples", "family_size"}.
    """
    d = np.asarray(draws, np.float64)
    p = np.asarray(points, np.float64)
    if d.ndim != 2 or p.shape != (d.shape[0],):
        raise ValueError(f"draws must be [J, R] and points [J], got {d.shape} and {p.shape}")
    d = d[:, ~np.isnan(d).any(axis=0)]
    if d.shape[1] < 2:
        raise ValueError("fewer than 2 resamples where every contrast is defined")
    return _tests(d, p, level)


def _tests(d: np.ndarray, p: np.ndarray, level: float) -> list[dict]:
    """``max_t``'s dicts from complete draws d [J, R] and points p [J]."""
    centred, t_obs = _standardised(d, p)
    maxima = centred.max(axis=0)  # [R]
    r = d.shape[1]
    q = float(np.quantile(maxima, level))
    se = d.std(axis=1, ddof=1)
    low, high = np.quantile(d, [(1 - level) / 2, (1 + level) / 2], axis=1)
    return [
        {
            "difference": float(p[j]),
            "p_raw": float((1 + np.sum(centred[j] >= t_obs[j])) / (1 + r)),
            "p_adjusted": float((1 + np.sum(maxima >= t_obs[j])) / (1 + r)),
            "ci_low": float(low[j]),
            "ci_high": float(high[j]),
            "simultaneous_low": float(p[j] - q * se[j]),
            "simultaneous_high": float(p[j] + q * se[j]),
            "se": float(se[j]),
            "num_resamples": int(r),
            "family_size": int(d.shape[0]),
        }
        for j in range(d.shape[0])
    ]
