"""RMIA (Zarifzadeh, Liu & Shokri, ICML 2024, "Low-Cost High-Power Membership Inference Attacks").

For a target model theta, an example x and a population sample z (an image no model trained on):

    LR_theta(x, z) = (Pr(x | theta) / Pr(x)) / (Pr(z | theta) / Pr(z)),
    Score(x; theta) = fraction of the P population samples z with LR_theta(x, z) >= gamma.

Pr(. | theta) is the softmax probability of the true label, averaged over the Q queries (``true_class_probability``
then the mean over the query axis). The marginals come from the reference models theta':

  * ONLINE Pr(x) = 0.5 * (mean over references with x IN + mean over references with x OUT). The balanced mixture
    keeps the leave-one-out imbalance (M/2 - 1 references in the target's own group, M/2 in the other) from
    biasing Pr(x) towards either group; an example whose IN (OUT) group is empty uses the other group's mean.
  * OFFLINE Pr(x) (OUT references only): the paper's linear approximation of the IN/OUT mixture,
    Pr(x) = 0.5 * ((1 + a) * mean_OUT Pr(x | theta') + (1 - a)). An example with no OUT reference (only possible
    with very few references) uses the mean of all reference probabilities on the population instead, the same
    population fallback as ``lira.lira_offline``.
  * Pr(z), both modes: z is OUT for every reference model, so its mean over references is an OUT mean, and the
    paper's Pr(z) is the same IN/OUT marginal as Pr(x). We therefore use the same linear approximation,
    Pr(z) = 0.5 * ((1 + a) * mean_refs Pr(z | theta') + (1 - a)); using the raw OUT mean for z but a mixture for x
    would put x and z on different scales.

Every reference model is used (no "keep only the largest OUT signals" truncation). Marginals are floored at the
smallest positive float64, so probabilities that underflowed to 0 give large but finite ratios.

The comparison is evaluated as ratio_x >= gamma * ratio_z (the same inequality as LR >= gamma, multiplied out), so
for a fixed target the score is monotone in ratio_x: the thresholds gamma * ratio_z are sorted once and counted
with ``searchsorted(side="right")``, which counts ties (LR exactly gamma) as dominated, like ">=". (The one case
where the two forms differ: a z with Pr(z | theta) = 0 is dominated by every x, even one with Pr(x | theta) = 0.)
All arithmetic is NumPy float64.

Tie-breaking (``RMIAConfig.tie_break``, on by default). The fraction takes only P + 1 values, and every example with
ratio_x >= gamma * max_z ratio_z scores exactly 1: on a well-fitted target many members (and some non-members) tie
there, so no threshold separates them and the TPR at a low FPR such as 0.1 % reads 0. With ``tie_break`` the score is

    (count + t) / P,   count = #{z : ratio_x >= gamma * ratio_z},   t = 0.5 * ratio_x / (1 + ratio_x) in [0, 1/2],

i.e. the paper's fraction first, then the likelihood ratio ratio_x = Pr(x | theta) / Pr(x) itself (t is sigmoid(log
ratio_x) / 2, monotone in it) among examples with the same count. The score lies in [count / P, (count + 1/2) / P]:
the paper's fraction, raised by less than half a step, so it ranges over [0, 1 + 1 / (2P)]. ``tie_break=False`` gives
the paper's fraction exactly. A config recorded before this option existed reads back with the default, tie-broken
(``RMIAConfig(**recorded)``); ``workdir.ADDED_SETTINGS`` does not list it, so such a workdir no longer matches a new
config (its scores would change) and reports a difference at "rmia" instead of resuming.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from dcjax import errors
from dcjax.privacy import lira

_TINY = float(np.finfo(np.float64).tiny)


@dataclasses.dataclass(frozen=True)
class RMIAConfig:
    """RMIA settings.

    Attributes:
      a: offline linear-approximation coefficient, 0 <= a <= 1 (the paper tunes it per dataset; 0.3 by default).
      gamma: likelihood-ratio threshold a population sample must be dominated by, gamma > 0 (1.0 by default).
      online: use the IN references for Pr(x) (online RMIA); False = offline, OUT references only.
      tie_break: rank examples with the same dominated fraction by their likelihood ratio Pr(x | theta) / Pr(x)
        (see the module docstring); False = the paper's fraction alone, whose ties at the top leave the TPR at
        low FPRs unresolved.
    """

    a: float = 0.3
    gamma: float = 1.0
    online: bool = True
    tie_break: bool = True

    def __post_init__(self):
        if not 0.0 <= self.a <= 1.0:
            raise errors.ConfigError("a", f"must be in [0, 1], got {self.a}")
        if not (np.isfinite(self.gamma) and self.gamma > 0):
            raise errors.ConfigError("gamma", f"must be finite and > 0, got {self.gamma}")
        if not isinstance(self.tie_break, (bool, np.bool_)):  # a JSON string such as "false" would read as True
            raise errors.ConfigError("tie_break", f"must be a bool, got {self.tie_break!r}")


def true_class_probability(logits, labels, example_axis: int = -2) -> np.ndarray:
    """Softmax probability of the true label, exp(z_y - logsumexp(z)) (stable, from the logits).

    Args:
      logits: [..., N, K] (other layouts via ``example_axis``, e.g. 1 for [M, N, Q, K]).
      labels: [N] integer true classes.
      example_axis: the axis of ``logits`` that indexes examples.

    Returns:
      float64 logits.shape[:-1], e.g. [..., N] or [M, N, Q].
    """
    return lira.confidence_scores(logits, labels, example_axis)


def linear_marginal(mean_out_prob, a: float) -> np.ndarray:
    """The paper's offline approximation 0.5 * ((1 + a) * mean_out_prob + (1 - a)), float64, same shape."""
    return 0.5 * ((1.0 + a) * np.asarray(mean_out_prob, np.float64) + (1.0 - a))


def _check_probs(name: str, x, ndim: int) -> np.ndarray:
    """x -> float64 array with ``ndim`` dims and every entry a probability in [0, 1]; ValueError naming ``name``."""
    p = np.asarray(x, dtype=np.float64)
    if p.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dims, got shape {p.shape}")
    if not (np.isfinite(p).all() and (p >= 0).all() and (p <= 1).all()):
        raise ValueError(f"{name} must be probabilities in [0, 1] (found NaN, inf or out-of-range values)")
    return p


def _group_mean(p: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean over the selected rows [N], NaN where none; counts [N]) for p [R, N], mask [R, N]."""
    count = mask.sum(0)
    total = np.sum(np.where(mask, p, 0.0), 0)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan), count


def marginal_x(ref_px, ref_keep, config: RMIAConfig, population_mean: float = float("nan")) -> np.ndarray:
    """Pr(x) from the reference models (see the module docstring for the online / offline formulas).

    Args:
      ref_px: [R, N] query-averaged true-class probabilities of the R reference models, R >= 1.
      ref_keep: [R, N] bool, True where example n was in reference r's training set.
      config: ``RMIAConfig`` (``a`` and ``online`` are used).
      population_mean: offline only, the OUT mean used for examples with no OUT reference (``rmia_scores`` passes
        the mean reference probability on the population); NaN = raise if it is needed.

    Returns:
      float64 [N].
    """
    p = _check_probs("ref_px", ref_px, 2)
    keep = np.asarray(ref_keep)
    if keep.shape != p.shape or p.shape[0] < 1:
        raise ValueError(f"ref_keep shape {keep.shape} must match ref_px {p.shape} with >= 1 reference model")
    if keep.dtype != bool and not np.isin(keep, (0, 1)).all():
        raise ValueError("ref_keep must be boolean (or 0/1)")
    keep = keep.astype(bool)
    mean_in, count_in = _group_mean(p, keep)
    mean_out, count_out = _group_mean(p, ~keep)
    if config.online:
        return np.where(count_in == 0, mean_out, np.where(count_out == 0, mean_in, 0.5 * (mean_in + mean_out)))
    if (count_out == 0).any() and not np.isfinite(population_mean):
        raise ValueError("offline RMIA: an example has no OUT reference and no population_mean was given")
    return linear_marginal(np.where(count_out > 0, mean_out, population_mean), config.a)


def marginal_z(ref_pz, config: RMIAConfig) -> np.ndarray:
    """Pr(z): ref_pz [R, P] (z OUT for every reference) -> float64 [P], the linear approximation in both modes."""
    p = _check_probs("ref_pz", ref_pz, 2)
    if p.shape[0] < 1 or p.shape[1] < 1:
        raise ValueError(f"ref_pz must be [R, P] with R >= 1 and P >= 1, got shape {p.shape}")
    return linear_marginal(p.mean(0), config.a)


def _dominated_count(ratio_x: np.ndarray, ratio_z: np.ndarray, gamma: float) -> np.ndarray:
    """Number of z with ratio_x >= gamma * ratio_z, for each x: [N], [P] -> int64 [N] in O((N + P) log P)."""
    thresholds = np.sort(gamma * ratio_z)
    # side="right" counts thresholds equal to ratio_x too: ties (LR == gamma) are dominated, as ">=" requires.
    return np.searchsorted(thresholds, ratio_x, side="right").astype(np.int64)


def tie_broken_score(count, ratio_x, num_z: int) -> np.ndarray:
    """(count + t) / num_z with t = 0.5 * ratio_x / (1 + ratio_x): the fraction, ties ranked by ratio_x.

    Args:
      count: int [N], 0 <= count <= num_z, the number of population samples each x dominates.
      ratio_x: float [N], ratio_x >= 0 and finite, Pr(x | theta) / Pr(x).
      num_z: P >= 1, the number of population samples (P < 2**49).

    Returns:
      float64 [N]; a larger count always scores higher, and for equal counts a larger ratio_x never scores lower.
    """
    # t is built from IEEE +, - and / only, each correctly rounded and so monotone: t never decreases as ratio_x
    # grows (ratios closer than float resolution may tie, never swap), and 0 <= t <= 1/2 after rounding.
    t = 0.5 - 0.5 / (1.0 + np.asarray(ratio_x, np.float64))
    # Why a count can never be overtaken, even after rounding: count and count + 1/2 are exact doubles (integers
    # below 2**52), so the rounded count + t stays in [count, count + 1/2], half a unit below count + 1. Dividing
    # by P is monotone too; the exact quotients (count + 1/2) / P and (count + 1) / P are 1 / (2P) > 2**-50 apart,
    # more than two float spacings (<= 2**-52 below 2), so two doubles lie between them and the rounded quotients
    # stay strictly ordered. (tests/test_rmia.py checks every band edge for several P.)
    return (np.asarray(count, np.float64) + t) / num_z


def rmia_scores(target_px, target_pz, ref_px, ref_pz, ref_keep, config: RMIAConfig) -> np.ndarray:
    """RMIA membership scores of one target model (higher = member).

    Args:
      target_px: [N] the target's query-averaged true-class probabilities on the examples.
      target_pz: [P] the same on the population samples.
      ref_px: [R, N] reference models on the examples (the target must not be among them).
      ref_pz: [R, P] reference models on the population samples.
      ref_keep: [R, N] bool IN mask of the reference models.
      config: ``RMIAConfig`` (a, gamma, online, tie_break).

    Returns:
      float64 [N]: the fraction of population samples z with LR(x, z) >= gamma, in [0, 1]; with
      ``config.tie_break`` raised by less than half a step 1 / P to rank ties by the likelihood ratio of x
      (``tie_broken_score``), in [0, 1 + 1 / (2P)].
    """
    tx = _check_probs("target_px", target_px, 1)
    tz = _check_probs("target_pz", target_pz, 1)
    px = _check_probs("ref_px", ref_px, 2)
    pz = _check_probs("ref_pz", ref_pz, 2)
    if tx.shape[0] != px.shape[1] or tz.shape[0] != pz.shape[1] or px.shape[0] != pz.shape[0]:
        raise ValueError(
            f"shapes do not match: target_px {tx.shape}, target_pz {tz.shape}, ref_px {px.shape}, ref_pz {pz.shape}"
        )
    pr_z = marginal_z(pz, config)  # validates R >= 1, P >= 1 before anything is averaged
    pr_x = marginal_x(px, ref_keep, config, population_mean=float(pz.mean()))
    ratio_x = tx / np.maximum(pr_x, _TINY)
    ratio_z = tz / np.maximum(pr_z, _TINY)
    count = _dominated_count(ratio_x, ratio_z, config.gamma)
    if config.tie_break:
        return tie_broken_score(count, ratio_x, tz.shape[0])
    return count / tz.shape[0]


def leave_one_out_rmia(px, pz, keep, config: RMIAConfig) -> np.ndarray:
    """Each of the M models in turn is the target, the other M - 1 its reference models.

    No equalisation of IN / OUT counts is needed: the online Pr(x) is a balanced 0.5 / 0.5 mixture of the group
    means (a mean, unlike a fitted variance, is unbiased whatever the group size), and offline uses OUT only.

    Args:
      px: [M, N] query-averaged true-class probabilities of every model on every example.
      pz: [M, P] the same on the P population samples.
      keep: [M, N] bool IN mask.
      config: ``RMIAConfig``.

    Returns:
      float64 [M, N] membership scores; the labels for ``metrics`` are ``keep``.
    """
    p = _check_probs("px", px, 2)
    z = _check_probs("pz", pz, 2)
    k = np.asarray(keep)
    if k.shape != p.shape or z.shape[0] != p.shape[0]:
        raise ValueError(f"shapes do not match: px {p.shape}, pz {z.shape}, keep {k.shape}")
    if p.shape[0] < 2:
        raise ValueError(f"leave_one_out_rmia needs >= 2 models, got {p.shape[0]}")
    out = np.empty(p.shape, np.float64)
    for m in range(p.shape[0]):
        others = np.arange(p.shape[0]) != m
        out[m] = rmia_scores(p[m], z[m], p[others], z[others], k[others], config)
    return out
