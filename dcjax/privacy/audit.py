"""Empirical lower bounds on the DP epsilon of a training recipe from membership trials (DP auditing).

The setting of Jagielski et al. 2020 ("Auditing differentially private machine learning") and Nasr et al. 2021
("Adversary instantiation"): if training is (epsilon, delta)-DP then every membership test, with false-positive
rate FPR and false-negative rate FNR, satisfies

    FPR + e^epsilon * FNR >= 1 - delta   and   FNR + e^epsilon * FPR >= 1 - delta.

An attack that reaches low FPR and FNR on observed trials therefore rules out small epsilons. To turn counts into
a statement that holds with confidence 1 - alpha, FPR and FNR are replaced by Clopper-Pearson upper bounds
(``epsilon_lower_bound``). ``audit_epsilon`` builds the trials from [M, N] score matrices so that they are as close
to independent as the data allow: one trial per example and a threshold chosen on other trials.

All arithmetic is NumPy float64; the only randomness comes from the ``jax.random`` key passed in.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from scipy import stats

from dcjax.privacy import metrics


@dataclasses.dataclass(frozen=True)
class AuditConfig:
    """Statistical settings of ``audit_epsilon``.

    Attributes:
      delta: the delta of the (epsilon, delta)-DP hypothesis being audited.
      alpha: the bound holds with probability >= 1 - alpha (split alpha / 2 per error rate).
      fprs: candidate FPRs whose thresholds (set on the selection half) compete when no threshold is given.
    """

    delta: float = 1e-5
    alpha: float = 0.05
    fprs: tuple[float, ...] = (0.1, 0.05, 0.01, 0.001)


def clopper_pearson(k: int, n: int, alpha: float) -> tuple[float, float]:
    """Exact two-sided binomial interval for k successes in n trials at level 1 - alpha: (low, high) floats.

    Each side fails with probability <= alpha / 2, so ``high`` alone is a one-sided upper bound at level
    1 - alpha / 2. Uses the beta quantiles: low = Beta(alpha/2; k, n-k+1) (0 if k = 0) and
    high = Beta(1-alpha/2; k+1, n-k) (1 if k = n).
    """
    k, n = int(k), int(n)
    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n >= 1, got k={k}, n={n}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    low = 0.0 if k == 0 else float(stats.beta.ppf(alpha / 2, k, n - k + 1))
    high = 1.0 if k == n else float(stats.beta.ppf(1 - alpha / 2, k + 1, n - k))
    return low, high


def epsilon_lower_bound(tp: int, fn: int, fp: int, tn: int, delta: float, alpha: float = 0.05) -> float:
    """Epsilon ruled out with confidence 1 - alpha by a test's confusion counts, for a given delta.

    FPR_hi and FNR_hi are Clopper-Pearson upper bounds, each at one-sided level alpha / 2 (``clopper_pearson``'s
    ``high``), so both hold jointly with probability >= 1 - alpha (union bound). Then, from the DP inequalities,

        eps_lb = max(0, log((1 - delta - FNR_hi) / FPR_hi), log((1 - delta - FPR_hi) / FNR_hi)),

    where a term whose numerator is <= 0 is ignored. The counts are treated as independent Bernoulli trials
    (``audit_epsilon`` says how the trials are built to approach that). Returns a float >= 0.
    """
    if min(tp, fn, fp, tn) < 0:
        raise ValueError(f"counts must be >= 0, got tp={tp}, fn={fn}, fp={fp}, tn={tn}")
    if tp + fn == 0 or fp + tn == 0:
        raise ValueError(f"need at least one member and one non-member trial, got {tp + fn} and {fp + tn}")
    if not 0.0 <= delta < 1.0:
        raise ValueError(f"delta must be in [0, 1), got {delta}")
    fpr_hi = clopper_pearson(fp, fp + tn, alpha)[1]
    fnr_hi = clopper_pearson(fn, tp + fn, alpha)[1]
    terms = [0.0]
    for numerator, denominator in ((1 - delta - fnr_hi, fpr_hi), (1 - delta - fpr_hi, fnr_hi)):
        if numerator > 0:
            terms.append(float(np.log(numerator / denominator)))
    return max(terms)


def _confusion(s: np.ndarray, y: np.ndarray, threshold: float) -> dict:
    """float64 [T] scores, bool [T] labels, predict member at s >= threshold -> {"tp", "fn", "fp", "tn"} ints."""
    flagged = s >= threshold
    return {
        "tp": int(np.sum(flagged & y)),
        "fn": int(np.sum(~flagged & y)),
        "fp": int(np.sum(flagged & ~y)),
        "tn": int(np.sum(~flagged & ~y)),
    }


def _one_trial_per_example(scores, keep, columns, key: jax.Array) -> tuple[np.ndarray, np.ndarray]:
    """For each column c of ``columns`` (int [C]), the trial of a key-drawn target model: (float64 [C], bool [C])."""
    # An empty include mask: shapes and dtypes are checked here, finiteness only for the drawn trials below.
    s, k, _ = metrics._trial_inputs(scores, keep, np.zeros(np.shape(scores), bool))
    cols = np.asarray(columns)
    if cols.ndim != 1 or cols.size < 2 or not np.issubdtype(cols.dtype, np.integer):
        raise ValueError(f"columns must be a 1-D int array of >= 2 columns, got {cols.dtype} {cols.shape}")
    if (cols < 0).any() or (cols >= s.shape[1]).any() or np.unique(cols).size != cols.size:
        raise ValueError(f"columns must be distinct column indices in [0, {s.shape[1]})")
    models = np.asarray(jax.random.randint(key, (cols.size,), 0, s.shape[0]))
    trial_s, trial_y = s[models, cols], k[models, cols]
    if not np.isfinite(trial_s).all():
        raise ValueError("the drawn trials' scores must be finite (found NaN or inf)")
    return trial_s, trial_y


def _select_threshold(s: np.ndarray, y: np.ndarray, config: AuditConfig) -> tuple[float, float]:
    """Best of the thresholds at ``config.fprs`` on selection trials (float64 [T], bool [T]): (threshold, fpr).

    "Best" is the largest ``epsilon_lower_bound`` on these same trials; ties keep the earlier fpr.
    """
    if y.all() or not y.any():
        raise ValueError("the threshold-selection half needs both member and non-member trials")
    if not config.fprs:
        raise ValueError("config.fprs must name at least one candidate FPR")
    best = (-1.0, 0.0, 0.0)
    for f in config.fprs:
        t = metrics.threshold_at_fpr(s[~y], f)
        bound = epsilon_lower_bound(**_confusion(s, y, t), delta=config.delta, alpha=config.alpha)
        if bound > best[0]:
            best = (bound, t, f)
    return best[1], best[2]


def _evaluation_trials(
    s: np.ndarray, y: np.ndarray, key: jax.Array, threshold: float | None, config: AuditConfig
) -> tuple[np.ndarray, float, float | None, str]:
    """Which of the trials (float64 [C], bool [C]) the bound is computed on, and at what threshold.

    If ``threshold`` is None, a key-drawn half of the examples (C // 2) picks, among the thresholds at
    ``config.fprs`` on that half, the one with the largest bound there, and the bound is computed on the other half
    (so the threshold is never chosen on the trials it is evaluated on); otherwise the given threshold (set on other
    data, e.g. natural examples for the canaries) is evaluated on all C examples.

    Returns (evaluated indices int [E], threshold, selected fpr or None for a given threshold, method text).
    """
    if threshold is None:
        perm = np.asarray(jax.random.permutation(key, s.size))
        select, evaluate = perm[: s.size // 2], perm[s.size // 2 :]
        threshold, selected = _select_threshold(s[select], y[select], config)
        method = f"one trial per example; threshold at FPR {selected:g} chosen on a disjoint half of the examples"
        return evaluate, threshold, selected, method
    return np.arange(s.size), threshold, None, "one trial per example; given threshold evaluated on every example"


def audit_epsilon(
    scores, keep, columns, key: jax.Array, threshold: float | None = None, config: AuditConfig = AuditConfig()
) -> dict:
    """Empirical epsilon lower bound from [M, N] membership trials, without pooling correlated trials.

    Each example in ``columns`` contributes exactly ONE trial, against a target model drawn uniformly by the key
    (so its membership is the training split's coin, not a choice). The threshold is chosen on trials disjoint from
    those it is evaluated on, or given (``_evaluation_trials``).

    Still assumed: ``epsilon_lower_bound`` treats the evaluated trials as independent Bernoulli trials, but the
    examples share target models (and a given threshold's models), so outcomes stay dependent through the models:
    an empirical audit in the style of Jagielski et al. / Nasr et al., not a proof about the training algorithm.

    Args:
      scores: float [M, N] membership scores (higher = member); keep: bool [M, N] membership.
      columns: int [C] distinct column indices of the audited examples (e.g. the canaries), C >= 2.
      key: ``jax.random`` key; the result is a deterministic function of it.
      threshold: predict member at score >= threshold; None: select one on half of the examples.
      config: delta, alpha and candidate FPRs.

    Returns:
      {"epsilon_lower_bound" >= 0, "tp", "fn", "fp", "tn", "num_trials" (evaluated), "threshold", "delta",
      "alpha", "selected_fpr" (None for a given threshold), "method": text}.
    """
    key_model, key_split = jax.random.split(key)
    s, y = _one_trial_per_example(scores, keep, columns, key_model)
    evaluate, threshold, selected, method = _evaluation_trials(s, y, key_split, threshold, config)
    counts = _confusion(s[evaluate], y[evaluate], float(threshold))
    return {
        "epsilon_lower_bound": epsilon_lower_bound(**counts, delta=config.delta, alpha=config.alpha),
        **counts,
        "threshold": float(threshold),
        "num_trials": int(evaluate.size),
        "delta": float(config.delta),
        "alpha": float(config.alpha),
        "selected_fpr": selected,
        "method": method,
    }
