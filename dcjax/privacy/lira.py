"""LiRA (Carlini et al., S&P 2022, "Membership Inference Attacks From First Principles") and the LOSS baseline.

Pipeline (docs/protocol.md section 7): logits of every model on every (example, query) -> ``logit_scale``
phi [M, N, Q] -> per-example Gaussians fitted to the IN and OUT shadow scores -> per-example membership score of a
target model.
``leave_one_out`` uses each of the M models in turn as the target with the other M - 1 as its shadows.

Choices (the reference implementation's, unless noted):
  * location = per-example MEDIAN of the shadow scores (robust to the odd diverged shadow model);
  * per-example scale = standard deviation with ddof=1; ``fixed_variance`` pools one std over all examples and
    queries, each example centred on its own mean, with the pooled (within-example) ddof; IN and OUT are pooled
    separately (the reference code takes the OUT std from the IN scores, a pitfall we do not copy);
  * stds are floored at ``MIN_STD`` so identical shadow scores (saturated models) give large but finite scores;
  * queries are combined by AVERAGING the per-query log-likelihood ratios (offline: per-query log CDFs);
  * NaN shadow scores mean "missing"; ``leave_one_out`` uses that to give every example equally many IN and OUT
    shadows (reference-style truncation), without which online LiRA is biased below 0.5 under the null;
  * all arithmetic is NumPy float64 (JAX defaults to float32, too coarse for phi of confident models).
"""

from __future__ import annotations

from typing import NamedTuple
from collections.abc import Callable

import numpy as np
import scipy.special

MIN_STD = 1e-6
_LOG_2PI = float(np.log(2 * np.pi))


def _per_example(fn: Callable, logits, labels, example_axis: int) -> np.ndarray:
    """Validates logits/labels and applies ``fn(z [..., N, K] float64, one_hot [N, K]) -> [..., N]``.

    The example axis is moved next to the class axis so ``fn`` only ever sees [..., N, K], then moved back.
    """
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim < 2 or z.shape[-1] < 2:
        raise ValueError(f"logits must be [..., N, K] with K >= 2 classes, got shape {z.shape}")
    axis = example_axis + z.ndim if example_axis < 0 else example_axis
    if not 0 <= axis < z.ndim - 1:
        raise ValueError(f"example_axis {example_axis} must name a non-class axis of logits {z.shape}")
    z = np.moveaxis(z, axis, -2)
    y = np.asarray(labels)
    if y.ndim != 1 or y.shape[0] != z.shape[-2]:
        raise ValueError(f"labels must be [N] with N = {z.shape[-2]} (logits axis {example_axis}), got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer) or (y < 0).any() or (y >= z.shape[-1]).any():
        raise ValueError(f"labels must be integers in [0, {z.shape[-1]})")
    if not np.isfinite(z).all():
        raise ValueError("logits must be finite (found NaN or inf)")
    one_hot = np.arange(z.shape[-1]) == y[:, None]
    return np.moveaxis(fn(z, one_hot), -1, axis)


def _true_logit(z: np.ndarray, one_hot: np.ndarray) -> np.ndarray:
    # The one-hot row has exactly one True, so a masked sum picks z_y without any float error.
    return np.sum(np.where(one_hot, z, 0.0), axis=-1)


def _phi(z: np.ndarray, one_hot: np.ndarray) -> np.ndarray:
    return _true_logit(z, one_hot) - scipy.special.logsumexp(np.where(one_hot, -np.inf, z), axis=-1)


def _log_prob(z: np.ndarray, one_hot: np.ndarray) -> np.ndarray:
    return _true_logit(z, one_hot) - scipy.special.logsumexp(z, axis=-1)


def logit_scale(logits, labels, example_axis: int = -2) -> np.ndarray:
    """LiRA's score phi = z_y - logsumexp_{y' != y} z_{y'}, i.e. log(p_y / (1 - p_y)) without forming p.

    Computed from the logits directly (not from softmax probabilities), so it stays finite and exact even when
    p_y rounds to 0 or 1 (true class dominating or dominated by thousands).

    Args:
      logits: [..., N, K] with any leading axes; other layouts via ``example_axis``.
      labels: [N] integer true classes.
      example_axis: the axis of ``logits`` that indexes examples, e.g. 1 for [M, N, Q, K] (models, examples,
        queries, classes).

    Returns:
      float64 logits.shape[:-1], e.g. [..., N] or [M, N, Q].
    """
    return _per_example(_phi, logits, labels, example_axis)


def loss_threshold_scores(logits, labels, example_axis: int = -2) -> np.ndarray:
    """LOSS attack score (Yeom et al.): minus the cross-entropy, z_y - logsumexp(z); higher = member.

    Shapes as for ``logit_scale``; float64 logits.shape[:-1].
    """
    return _per_example(_log_prob, logits, labels, example_axis)


def confidence_scores(logits, labels, example_axis: int = -2) -> np.ndarray:
    """Softmax probability of the true class, float64 logits.shape[:-1] (shapes as for ``logit_scale``)."""
    return np.exp(loss_threshold_scores(logits, labels, example_axis))


def loss_from_phi(phi) -> np.ndarray:
    """The LOSS score log p_y = -log(1 + exp(-phi)) from phi (``logit_scale``): float64, same shape.

    The same quantity as ``loss_threshold_scores`` for an export that keeps phi instead of the logits;
    ``logaddexp`` keeps it finite and exact for phi of either sign and any size.
    """
    return -np.logaddexp(0.0, -np.asarray(phi, np.float64))


def confidence_from_phi(phi) -> np.ndarray:
    """The true-class probability p_y = sigmoid(phi) from phi (``logit_scale``): float64, same shape."""
    return scipy.special.expit(np.asarray(phi, np.float64))


class GaussianFit(NamedTuple):
    """Per-example Gaussians for the IN and OUT shadow scores; every array is float64 [N, Q] and finite."""

    mu_in: np.ndarray
    std_in: np.ndarray
    mu_out: np.ndarray
    std_out: np.ndarray


def _check_shadows(scores, keep) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """scores [M, N] or [M, N, Q], keep [M, N] -> (float64 [M, N, Q], IN mask [M, N], OUT mask [M, N]).

    A NaN shadow score means "missing" (a (model, example) pair with any NaN query is in neither mask), so callers
    can drop shadows per example; ``leave_one_out`` uses this to equalise set sizes.
    """
    s = np.asarray(scores, dtype=np.float64)
    k = np.asarray(keep)
    if s.ndim == 2:
        s = s[..., None]
    if s.ndim != 3:
        raise ValueError(f"shadow scores must be [M, N] or [M, N, Q], got shape {s.shape}")
    if k.shape != s.shape[:2]:
        raise ValueError(f"keep shape {k.shape} does not match shadow scores [M, N] = {s.shape[:2]}")
    if k.dtype != bool and not np.isin(k, (0, 1)).all():
        raise ValueError("keep must be boolean (or 0/1)")
    if np.isinf(s).any():
        raise ValueError("shadow scores must be finite or NaN (= missing), found inf")
    present = ~np.isnan(s).any(-1)
    k = k.astype(bool)
    return s, k & present, ~k & present


def _masked_median(scores: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Median over models of the selected scores: [M, N, Q], [M, N] -> [N, Q], NaN where nothing is selected."""
    count = mask.sum(0)
    # NaNs sort last, so the selected scores of each example occupy the first ``count`` rows.
    ordered = np.sort(np.where(mask[..., None], scores, np.nan), axis=0)
    lo = np.maximum((count - 1) // 2, 0)[None, :, None]
    hi = np.minimum(count // 2, scores.shape[0] - 1)[None, :, None]
    median = (np.take_along_axis(ordered, lo, 0) + np.take_along_axis(ordered, hi, 0))[0] / 2
    return np.where(count[:, None] > 0, median, np.nan)


def _centred_squares(scores: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sum of squared deviations from each example's mean [N, Q], degrees of freedom count - 1 [N])."""
    count = mask.sum(0)
    w = mask[..., None]
    mean = np.sum(np.where(w, scores, 0.0), 0) / np.maximum(count, 1)[:, None]
    squares = np.sum(np.where(w, (scores - mean) ** 2, 0.0), 0)
    return squares, count - 1


def _pooled_from(squares: np.ndarray, dof: np.ndarray, num_queries: int) -> float:
    """One within-example std over all examples and queries, from ``_centred_squares``' output; NaN when no
    example has 2 selected scores."""
    total_dof = np.sum(np.maximum(dof, 0)) * num_queries
    return float(np.sqrt(squares.sum() / total_dof)) if total_dof > 0 else float("nan")


class _SetStats(NamedTuple):
    """One set's (IN or OUT) statistics, shared by every fit of it: median ``mu`` [N, Q] (NaN where empty),
    ``squares`` [N, Q] and ``dof`` [N] (``_centred_squares``), ``pooled`` (``_pooled_from``, NaN possible)."""

    mu: np.ndarray
    squares: np.ndarray
    dof: np.ndarray
    pooled: float


def _set_stats(scores: np.ndarray, mask: np.ndarray) -> _SetStats:
    squares, dof = _centred_squares(scores, mask)
    return _SetStats(_masked_median(scores, mask), squares, dof, _pooled_from(squares, dof, scores.shape[2]))


def _set_std(squares: np.ndarray, dof: np.ndarray, fixed_variance: bool, pooled: float) -> np.ndarray:
    """std [N, Q] of a set: per example (``pooled`` for examples with < 2 scores) or ``pooled`` everywhere."""
    if fixed_variance:
        std = np.full(squares.shape, pooled)
    else:
        std = np.sqrt(squares / np.maximum(dof, 1)[:, None])
        std = np.where(dof[:, None] >= 1, std, pooled)
    return np.maximum(std, MIN_STD)


def fit_gaussians(scores, keep, fixed_variance: bool) -> GaussianFit:
    """Fits per-example IN and OUT Gaussians to shadow scores.

    Fallbacks, so every output is finite: an example with < 2 scores in a set uses that set's pooled std (or the
    other set's when the set has no example with 2 scores); an example with no IN (no OUT) shadow gets
    mu_in = mu_out + shift (mu_out = mu_in - shift), with shift [Q] the median of mu_in - mu_out over the examples
    that have both. Raises ValueError when no example has both, e.g. 2 models under leave-one-out.

    Args:
      scores: [M, N, Q] (or [M, N]) shadow phi scores.
      keep: [M, N] bool, True where example n was in shadow m's training set.
      fixed_variance: pool one std per set (IN, OUT) instead of per-example stds.

    Returns:
      GaussianFit of [N, Q] float64 arrays.
    """
    return _fit(*_check_shadows(scores, keep), fixed_variance)


def _fit(s: np.ndarray, k_in: np.ndarray, k_out: np.ndarray, fixed_variance: bool) -> GaussianFit:
    """``fit_gaussians`` on checked inputs: s [M, N, Q], IN / OUT masks [M, N] (see ``_check_shadows``)."""
    return _fit_stats(_set_stats(s, k_in), _set_stats(s, k_out), k_in, k_out, fixed_variance)


def _fit_stats(
    stats_in: _SetStats, stats_out: _SetStats, k_in: np.ndarray, k_out: np.ndarray, fixed_variance: bool
) -> GaussianFit:
    """``_fit`` from both sets' ``_set_stats`` (k_in, k_out: the masks [M, N] they were computed on)."""
    pooled_in = np.nan_to_num(stats_in.pooled, nan=stats_out.pooled)
    pooled_out = np.nan_to_num(stats_out.pooled, nan=stats_in.pooled)
    has_in, has_out = np.any(k_in, axis=0)[:, None], np.any(k_out, axis=0)[:, None]
    both = (has_in & has_out)[:, 0]
    if not both.any() or np.isnan(pooled_in):
        raise ValueError(
            "need an example with both IN and OUT shadows and an example with >= 2 IN or >= 2 OUT "
            f"shadows to estimate a std; got {k_in.shape[0]} shadow models"
        )
    mu_in, std_in = stats_in.mu, _set_std(stats_in.squares, stats_in.dof, fixed_variance, pooled_in)
    mu_out, std_out = stats_out.mu, _set_std(stats_out.squares, stats_out.dof, fixed_variance, pooled_out)
    shift = np.median(mu_in[both] - mu_out[both], axis=0)
    mu_in_filled = np.where(has_in, mu_in, mu_out + shift)
    mu_out_filled = np.where(has_out, mu_out, mu_in - shift)
    return GaussianFit(mu_in_filled, std_in, mu_out_filled, std_out)


def _check_target(target_scores, num_examples: int, num_queries: int) -> np.ndarray:
    """target [N] or [N, Q] -> float64 [N, Q] matching the shadows."""
    t = np.asarray(target_scores, dtype=np.float64)
    if t.ndim == 1:
        t = t[:, None]
    if t.shape != (num_examples, num_queries):
        raise ValueError(f"target scores shape {t.shape} does not match shadows [N, Q] = {(num_examples, num_queries)}")
    if not np.isfinite(t).all():
        raise ValueError("target scores must be finite (found NaN or inf)")
    return t


def _norm_logpdf(x: np.ndarray, mu: np.ndarray, std: np.ndarray) -> np.ndarray:
    return -0.5 * ((x - mu) / std) ** 2 - np.log(std) - 0.5 * _LOG_2PI


def lira_online(target_scores, shadow_scores, shadow_keep, fixed_variance: bool) -> np.ndarray:
    """Online LiRA: log N(phi; mu_in, s_in) - log N(phi; mu_out, s_out), AVERAGED over queries.

    Args:
      target_scores: [N, Q] (or [N]) phi of the target model.
      shadow_scores: [M, N, Q] (or [M, N]) phi of the shadow models (the target must not be among them);
        NaN marks a missing (model, example) score, which is left out of both sets.
      shadow_keep: [M, N] bool IN mask of the shadows.
      fixed_variance: one pooled std per set instead of per-example stds (better with few shadows).

    Returns:
      float64 [N] membership scores, higher = member. Examples never IN (or never OUT) among the shadows use the
      shifted-mean fallback of ``fit_gaussians``, so they stay on the same likelihood-ratio scale.
    """
    s, k_in, k_out = _check_shadows(shadow_scores, shadow_keep)
    t = _check_target(target_scores, *s.shape[1:])
    fit = _fit(s, k_in, k_out, fixed_variance)
    llr = _norm_logpdf(t, fit.mu_in, fit.std_in) - _norm_logpdf(t, fit.mu_out, fit.std_out)
    return llr.mean(-1)


def lira_offline(target_scores, shadow_scores, shadow_keep, fixed_variance: bool) -> np.ndarray:
    """Offline LiRA: one-sided test against the OUT Gaussian only, log Phi((phi - mu_out) / s_out), query-averaged.

    Phi is the standard normal CDF via ``scipy.special.log_ndtr`` (float64, accurate far into the lower tail).
    Higher = member. Only OUT shadows are used; an example with no OUT shadow falls back to the median and std of
    all OUT scores of all examples (the population OUT distribution). Shapes as for ``lira_online``.
    """
    s, _, out = _check_shadows(shadow_scores, shadow_keep)
    t = _check_target(target_scores, *s.shape[1:])
    if not out.any():
        raise ValueError("offline LiRA needs at least one OUT shadow score")
    return _offline(t, s, out, _set_stats(s, out), fixed_variance)


def _offline(t: np.ndarray, s: np.ndarray, out: np.ndarray, stats: _SetStats, fixed_variance: bool) -> np.ndarray:
    """``lira_offline`` on checked inputs (target [N, Q], shadows [M, N, Q], a non-empty OUT mask [M, N]) and
    the OUT set's ``_set_stats``."""
    population = s[out]  # [num OUT scores, Q]
    pooled = stats.pooled if np.isfinite(stats.pooled) else float(np.std(population))
    mu, std = stats.mu, _set_std(stats.squares, stats.dof, fixed_variance, pooled)
    has_out = np.any(out, axis=0)[:, None]
    mu = np.where(has_out, mu, np.median(population, axis=0))
    std = np.where(has_out, std, np.maximum(np.std(population, axis=0), MIN_STD))
    return scipy.special.log_ndtr((t - mu) / std).mean(-1)


def _first_k(mask: np.ndarray) -> np.ndarray:
    """Keeps, per example (column), the first c True entries in model order; c = the smallest non-zero count."""
    counts = mask.sum(0)
    if not counts.any():
        return mask
    return mask & (np.cumsum(mask, 0) <= counts[counts > 0].min())


def leave_one_out(scores, keep, attack_fn: Callable, equalize: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Uses each model in turn as the target, with all OTHER models as its shadows.

    Why ``equalize``: with an exactly balanced mask, dropping the target leaves M/2 - 1 shadows in the target's own
    set and M/2 in the other, so the set sizes depend on the label. A Gaussian fitted to fewer points explains a
    fresh score worse, which pushes online scores of members down: with no signal at all, M = 16 gives AUC about
    0.47 instead of 0.5. ``equalize`` keeps only the first c_in IN and c_out OUT shadows of each example (model
    order; c = the smallest non-zero count over examples, M/2 - 1 here), as the reference code's truncation does;
    dropped shadows are passed as NaN (= missing).

    Args:
      scores: [M, N, Q] (or [M, N]) finite phi of every model on every example.
      keep: [M, N] bool IN mask.
      attack_fn: ``attack_fn(target_scores [N, Q], shadow_scores [M-1, N, Q], shadow_keep [M-1, N]) -> [N]``,
        e.g. ``functools.partial(lira_online, fixed_variance=True)``.
      equalize: equalise IN / OUT shadow counts per example as above.

    Returns:
      (membership scores float64 [M, N], labels bool [M, N] = keep): M * N target trials for ``metrics``.
    """
    s, k = _check_bank(scores, keep)
    out = np.empty(k.shape, np.float64)
    for m in range(s.shape[0]):
        out[m] = attack_fn(s[m], *_shadows_of(s, k, m, equalize))
    return out, k.copy()


def _check_bank(scores, keep) -> tuple[np.ndarray, np.ndarray]:
    """``leave_one_out``'s inputs checked: (float64 [M, N, Q], bool [M, N]), finite, M >= 2."""
    s, k, _ = _check_shadows(scores, keep)
    if np.isnan(s).any():
        raise ValueError("leave_one_out needs finite scores (found NaN)")
    if s.shape[0] < 2:
        raise ValueError(f"leave_one_out needs >= 2 models, got {s.shape[0]}")
    return s, k


def _shadows_of(s: np.ndarray, k: np.ndarray, m: int, equalize: bool) -> tuple[np.ndarray, np.ndarray]:
    """(shadow scores [M-1, N, Q], their keep [M-1, N]) of target m: every other model; with ``equalize``, the
    IN / OUT shadows beyond the first c of each example passed as NaN (missing), see ``leave_one_out``."""
    # Excluding the target matters: its own IN score would pull mu_in toward it and inflate the attack.
    others = np.arange(s.shape[0]) != m
    shadows, shadow_keep = s[others], k[others]
    if equalize:
        used = _first_k(shadow_keep) | _first_k(~shadow_keep)
        shadows = np.where(used[..., None], shadows, np.nan)
    return shadows, shadow_keep


LIRA_VARIANTS = ("lira_online", "lira_online_fixed_var", "lira_offline", "lira_offline_fixed_var")


def leave_one_out_lira(scores, keep, equalize: bool = True) -> dict[str, np.ndarray]:
    """``leave_one_out`` of ``lira_online`` and ``lira_offline``, each with and without ``fixed_variance``.

    Why: the four fits of a target share its shadows, their IN / OUT medians and squared deviations; computing
    those once per target instead of once per variant roughly halves LiRA's cost (the null test rescores every
    attack 20 times). Bitwise what the four ``leave_one_out`` calls return (tests/test_lira.py).

    Args:
      scores: [M, N, Q] (or [M, N]) finite phi of every model on every example.
      keep: [M, N] bool IN mask.
      equalize: as for ``leave_one_out``.

    Returns:
      {name in ``LIRA_VARIANTS``: float64 [M, N] membership scores}.
    """
    s, k = _check_bank(scores, keep)
    out = {name: np.empty(k.shape, np.float64) for name in LIRA_VARIANTS}
    for m in range(s.shape[0]):
        shadows, k_in, k_out = _check_shadows(*_shadows_of(s, k, m, equalize))
        t = _check_target(s[m], *shadows.shape[1:])
        stats_in, stats_out = _set_stats(shadows, k_in), _set_stats(shadows, k_out)
        for fixed, suffix in ((False, ""), (True, "_fixed_var")):
            fit = _fit_stats(stats_in, stats_out, k_in, k_out, fixed)
            llr = _norm_logpdf(t, fit.mu_in, fit.std_in) - _norm_logpdf(t, fit.mu_out, fit.std_out)
            out["lira_online" + suffix][m] = llr.mean(-1)
        if not k_out.any():
            raise ValueError("offline LiRA needs at least one OUT shadow score")
        for fixed, suffix in ((False, ""), (True, "_fixed_var")):
            out["lira_offline" + suffix][m] = _offline(t, shadows, k_out, stats_out, fixed)
    return out


# ---------------------------------------------------------------- recipe-aware LiRA
#
# Some target recipes put only some members' pixels into the training set: a random subset of the private data, or
# the real images that initialise a condensed synthetic set. ``used`` [M, N] bool says, per model, which examples
# reached its training set as pixels (used implies keep). The attacker runs the recipe itself, so it knows ``used``
# for its shadows, never for the target. The IN scores are then a mixture of "used" members (shifted) and
# "in-unused" members (distributed like, or close to, non-members), which one IN Gaussian fits badly.


def _check_used(used, keep) -> np.ndarray:
    """used [M, N] -> bool [M, N]; ValueError unless it matches ``keep`` (already checked) in shape and implies it."""
    u = np.asarray(used)
    k = np.asarray(keep).astype(bool)
    if u.shape != k.shape:
        raise ValueError(f"used shape {u.shape} does not match keep [M, N] = {k.shape}")
    if u.dtype != bool and not np.isin(u, (0, 1)).all():
        raise ValueError("used must be boolean (or 0/1)")
    u = u.astype(bool)
    if (u & ~k).any():
        raise ValueError("used must imply keep (an example used as pixels was in the training set)")
    return u


def lira_recipe_online(target_scores, shadow_scores, shadow_keep, shadow_used) -> np.ndarray:
    """Online LiRA with a two-component member hypothesis (fixed variances), query-averaged.

    score = log(rho * N(phi; mu_used, s_used) + (1 - rho) * N(phi; mu_unused, s_unused)) - log N(phi; mu_out, s_out)
    with per-example medians, one pooled std per group (per-example used counts are tiny) and rho = the fraction
    of the shadows' IN (model, example) pairs that are used, over all examples. Each IN group is fitted against
    OUT by ``fit_gaussians``' rules (fixed variance), so examples with no used (no in-unused, no OUT) shadow get
    its shifted-mean fallback. rho = 1 (used == keep, the "original" recipe) is exactly
    ``lira_online(fixed_variance=True)``; rho = 0 is online LiRA on the in-unused group.

    Args:
      target_scores: [N, Q] (or [N]) phi of the target model.
      shadow_scores: [M, N, Q] (or [M, N]) phi of the shadows; NaN = missing (left out of every group).
      shadow_keep: [M, N] bool IN mask of the shadows.
      shadow_used: [M, N] bool, True where the example reached the shadow's training set as pixels (implies keep).

    Returns:
      float64 [N] membership scores, higher = member.
    """
    s, k_in, k_out = _check_shadows(shadow_scores, shadow_keep)
    t = _check_target(target_scores, *s.shape[1:])
    used = _check_used(shadow_used, shadow_keep) & k_in
    if not k_in.any():
        raise ValueError("recipe-aware LiRA needs at least one IN shadow score")
    rho = float(used.sum() / k_in.sum())
    fits = [_fit(s, mask, k_out, True) for w, mask in ((rho, used), (1.0 - rho, k_in & ~used)) if w > 0]
    if len(fits) == 1:  # rho in {0, 1}: plain online LiRA (fixed variance) on the populated IN group
        log_member, mu_out = _norm_logpdf(t, fits[0].mu_in, fits[0].std_in), fits[0].mu_out
    else:
        fit_used, fit_unused = fits
        log_member = np.logaddexp(
            np.log(rho) + _norm_logpdf(t, fit_used.mu_in, fit_used.std_in),
            np.log1p(-rho) + _norm_logpdf(t, fit_unused.mu_in, fit_unused.std_in),
        )
        # OUT medians agree between the two fits except where an example has no OUT shadow (each fit fills those
        # from its own IN group): take the used fit's fill where the example has used shadows.
        mu_out = np.where(used.any(0)[:, None], fit_used.mu_out, fit_unused.mu_out)
    return (log_member - _norm_logpdf(t, mu_out, fits[0].std_out)).mean(-1)


def lira_recipe_offline(target_scores, shadow_scores, shadow_keep, shadow_used) -> np.ndarray:
    """Offline LiRA against every shadow that did NOT use the example as pixels (OUT or in-unused), fixed variance.

    log Phi((phi - mu) / s) averaged over queries, mu the per-example median of those shadows and s their pooled
    std, i.e. ``lira_offline(fixed_variance=True)`` with ``shadow_used`` as the keep mask. For a subset recipe the
    in-unused shadows are distributed exactly like non-members, so the null gets more samples; for a condensation
    recipe the in-unused members still shaped the synthetic set through gradients, so the null is slightly
    shifted towards members (conservative). Shapes as for ``lira_recipe_online``.
    """
    _check_shadows(shadow_scores, shadow_keep)
    used = _check_used(shadow_used, shadow_keep)
    # lira_offline's "OUT" = not used: OUT and in-unused shadows; it drops NaN (missing) pairs by itself.
    return lira_offline(target_scores, shadow_scores, used, fixed_variance=True)


def leave_one_out_recipe(scores, keep, used, attack_fn: Callable, equalize: bool = True) -> np.ndarray:
    """``leave_one_out`` for the recipe-aware attacks: each model the target, the other M - 1 its shadows.

    The fixed (pooled) variances remove the per-example std's dependence on the set sizes, but the target's own
    group still has one shadow fewer, which makes its per-example median noisier; with no signal that alone pulls
    online LiRA to AUC about 0.48 at M = 16 (see ``test_equalize_removes_null_bias``). ``equalize`` therefore drops
    shadows exactly as ``leave_one_out`` does (first c_in IN and c_out OUT per example, by ``keep``; the used split
    of the kept IN shadows is whatever the recipe made it). The target's ``used`` row is never passed on.

    Args:
      scores: [M, N, Q] (or [M, N]) finite phi of every model on every example.
      keep: [M, N] bool IN mask.
      used: [M, N] bool, the examples that reached each model's training set as pixels (implies keep).
      attack_fn: ``attack_fn(target [N, Q], shadows [M-1, N, Q], shadow_keep [M-1, N], shadow_used [M-1, N])
        -> [N]``, e.g. ``lira_recipe_online``.
      equalize: equalise IN / OUT shadow counts per example as above.

    Returns:
      float64 [M, N] membership scores; the labels for ``metrics`` are ``keep``.
    """
    s, k, _ = _check_shadows(scores, keep)
    u = _check_used(used, keep)
    if np.isnan(s).any() or s.shape[0] < 2:
        raise ValueError(f"leave_one_out_recipe needs finite scores and >= 2 models, got {s.shape[0]} models")
    out = np.empty(k.shape, np.float64)
    for m in range(s.shape[0]):
        others = np.arange(s.shape[0]) != m
        shadows, shadow_keep = s[others], k[others]
        if equalize:
            kept = _first_k(shadow_keep) | _first_k(~shadow_keep)
            shadows = np.where(kept[..., None], shadows, np.nan)
        out[m] = attack_fn(s[m], shadows, shadow_keep, u[others])
    return out
