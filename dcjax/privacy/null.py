"""The null test of a row's headline: random membership labels that have nothing to do with training.

Replace the export's keep masks by random balanced masks (each example IN for half the models, drawn by
key, independent of which models really trained on it), recompute every attack's scores with them and
rerun the headline. No attack can have any signal, so the TPR at 0.1 % FPR is at chance (0.1 %), and a
95 % interval that accounts for how the headline is chosen excludes chance in at most ~5 % of the draws.
A headline that picks its attack on the reported trials fails this (on 16 x 1000 no-signal exports,
the maximum over 11 attacks excluded chance in every draw).

Monte-Carlo tolerance (``allowed_exclusions``): with K draws and a true exclusion rate of 5 %, the
number of exclusions is at most Binomial(K, 0.05); the test passes when it is at or below that
binomial's 99th percentile (K = 20: at most 4; a correct interval fails with probability < 1 %).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np
from scipy import stats

from dcjax import progress
from dcjax.privacy import headline as headline_lib
from dcjax.privacy import masks

NUM_DRAWS = 20
NOMINAL = 0.05  # A 95 % interval may exclude the truth in 5 % of the draws.
TOLERANCE_QUANTILE = 0.99
CHANCE = headline_lib.CHOICE_FPR  # TPR = FPR for an attack without signal.


def allowed_exclusions(num_draws: int) -> int:
    """The most exclusions a correct 95 % interval shows in ``num_draws`` draws, at the 99th percentile."""
    return int(stats.binom.ppf(TOLERANCE_QUANTILE, num_draws, NOMINAL))


def null_masks(key: jax.Array, keep: np.ndarray, used: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Random balanced (keep, used) [M, N] bool, independent of training.

    ``used`` (members whose pixels reached the training set) is redrawn inside the new keep at each model's
    real rate, so recipe-aware attacks stay candidates exactly as in the real row (the selection bias
    grows with the number of candidates).
    """
    num_models, num_examples = keep.shape
    key_keep, key_used = jax.random.split(key)
    keep0 = np.asarray(masks.lira_keep_masks(key_keep, num_models, num_examples), bool)
    if not used.any() or np.array_equal(used, keep):
        return keep0, keep0.copy() if used.any() else np.zeros_like(keep0)
    rate = used.sum(1, keepdims=True) / np.maximum(keep.sum(1, keepdims=True), 1)
    draw = np.asarray(jax.random.uniform(key_used, keep.shape), np.float64) < rate
    return keep0, keep0 & draw


def _summary(num_draws: int, excluded: int, tprs: list, intervals: list) -> dict:
    """``null_test``'s result from its draws: how many headline intervals excluded chance, against the number a
    correct interval allows (``allowed_exclusions``), and each draw's headline TPR [K] and interval [K] [low, high]
    (None where a draw had no headline)."""
    allowed = allowed_exclusions(num_draws)
    return {
        "draws": num_draws,
        "excluded": int(excluded),
        "rate": excluded / num_draws,
        "allowed": allowed,
        "passed": bool(excluded <= allowed),
        "chance": CHANCE,
        "tpr": tprs,
        "ci": intervals,
    }


def null_test(
    score_fn: Callable[[np.ndarray, np.ndarray], dict],
    keep: np.ndarray,
    used: np.ndarray,
    split: headline_lib.Split,
    res: headline_lib.Resamples,
    key: jax.Array,
) -> dict:
    """Runs the headline on ``NUM_DRAWS`` null relabellings of one row.

    Args:
      score_fn: (keep [M, N], used [M, N]) -> {attack: float [M, N]}, the row's candidate attacks scored as
        if those were the membership labels (everything else of the export unchanged).
      keep, used: the row's real masks (for shapes and the used rate).
      split, res: the row's cross-fitting split and resamples (the headline's own).
      key: draw i uses ``fold_in(key, i)``.

    Returns:
      {"draws": K, "excluded": how many headline 95 % intervals excluded chance, "rate", "allowed":
      ``allowed_exclusions(K)``, "passed", "chance", "tpr": [K] headline TPRs, "ci": [K] [low, high]}.
    """
    tprs, intervals, excluded = [], [], 0
    # Each draw rescores every attack and reruns both bootstraps: minutes in all on a 60,000-example bank.
    with progress.task(f"null test: {NUM_DRAWS} random labellings", NUM_DRAWS, "draws") as tracker:
        for i in range(NUM_DRAWS):
            keep0, used0 = null_masks(jax.random.fold_in(key, i), keep, used)
            h = headline_lib.headline(score_fn(keep0, used0), keep0, split, res, with_auc=False) or {}
            excluded += headline_lib.excludes(h, CHANCE)
            tprs.append(h.get(headline_lib.CHOICE))
            intervals.append([h.get(f"{headline_lib.CHOICE}_ci_low"), h.get(f"{headline_lib.CHOICE}_ci_high")])
            tracker.advance(1)
    return _summary(NUM_DRAWS, excluded, tprs, intervals)
