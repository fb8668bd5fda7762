"""From attack scores to the numbers a reviewer reads: slices, intervals, the headline attack, audits.

Slices of the M x N trials (``trial_slices``):

* ``natural``: every non-canary example. The HEADLINE slice: canaries are planted outliers,
  so mixing them in would report a leak that natural data does not have.
* ``canaries``: the mislabelled canaries alone; also reported as k / n detected at the
  threshold that gives 0.1 % FPR on natural non-members (``canary_detection``).
* ``used`` (recipes that copy some members' pixels): natural members whose pixels reached the
  target's training set, against all natural non-members.
* ``all``: natural and canaries together, only for comparison with older reports.

Intervals of each attack: an example-level bootstrap (``metrics.example_resamples``): trials that
share an example are resampled together, since one image is easy or hard for every model; the same
resample indices serve every attack and every row of a study with the same seed.

The headline of a row (``headlines``) is NOT the attack that scores best on the reported trials
(the maximum of noisy estimates is biased upwards): it is cross-fitted (``dcjax.privacy.headline``):
the attack for one group of targets on one half of the examples is chosen on the other targets'
trials on the other half, and its intervals come from a bootstrap over examples and over models
(the union of the two). The null test (``dcjax.privacy.null``) reruns it on random membership
labels. Release attacks (on the synthetic set itself) get their own headline, the same way: they
need the set to be published.
"""

from __future__ import annotations

import jax
import numpy as np

from collections.abc import Callable

from dcjax.privacy import attacks as attacks_lib
from dcjax.privacy import audit, metrics, null
from dcjax.privacy import headline as headline_lib
from dcjax.privacy.attack_data import AttackData

NullScores = Callable[[np.ndarray, np.ndarray], dict]

FPRS = headline_lib.FPRS  # Every attack's TPRs at the headline's FPRs.
HEADLINE_FPR = headline_lib.CHOICE_FPR  # The canary threshold's FPR on natural non-members.
AUDIT_DELTA = 1e-5


def trial_slices(d: AttackData) -> dict[str, np.ndarray]:
    """{slice name: bool [M, N] trial mask} (see the module docstring)."""
    m, n = d.keep.shape
    natural = np.broadcast_to(d.natural(), (m, n))
    slices = {"natural": natural, "all": np.ones((m, n), bool)}
    if d.canaries.size:
        slices["canaries"] = ~natural
    if attacks_lib.uses_some_pixels(d):
        slices["used"] = natural & (d.used | ~d.keep)
    return slices


def _skip_reason(keep: np.ndarray, include: np.ndarray) -> str | None:
    members, total = int((keep & include).sum()), int(include.sum())
    if members == 0 or members == total:
        return f"{members} members among {total} trials: needs both"
    return None


def slice_summaries(scores: np.ndarray, d: AttackData, slices: dict, resamples: np.ndarray) -> dict:
    """{slice: example-bootstrap summary (``metrics.summarize_examples``) or {"skipped": why}}.

    A slice with the same trials as an earlier one (``all`` is ``natural`` without canaries) gets a copy of its
    summary: the same numbers, without a second full bootstrap of every trial.
    """
    out: dict = {}
    for name, include in slices.items():
        same = next((n for n in out if np.array_equal(slices[n], include)), None)
        if same is not None:
            out[name] = dict(out[same])
            continue
        reason = _skip_reason(d.keep, include)
        out[name] = (
            {"skipped": reason} if reason else metrics.summarize_examples(scores, d.keep, include, resamples, FPRS)
        )
    return out


def attack_summaries(scores: dict, d: AttackData, slices: dict, resamples: np.ndarray) -> dict:
    """{attack: ``slice_summaries``}. Attacks that rank every trial alike (``headline.identical_groups``: same
    order, same ties, e.g. LOSS and confidence) share every summary statistic, so the later ones get copies."""
    names = list(scores)
    group = headline_lib.identical_groups(scores)
    out: dict = {}
    for i, name in enumerate(names):
        if group[i] == i:
            out[name] = slice_summaries(scores[name], d, slices, resamples)
        else:
            out[name] = {s: dict(summary) for s, summary in out[names[group[i]]].items()}
    return out


def crossfit(d: AttackData, keys: dict, num_resamples: int) -> tuple[headline_lib.Split, headline_lib.Resamples]:
    """The headline's cross-fitting split of the natural examples and its shared bootstrap draws (both from
    the run's "crossfit" key, so every row of a study with the same seed and pool has the same ones)."""
    split = headline_lib.draw_split(jax.random.fold_in(keys["crossfit"], 0), d.num_models, d.natural())
    return split, headline_lib.draw_resamples(jax.random.fold_in(keys["crossfit"], 1), split, num_resamples)


def headlines(scores: dict, d: AttackData, split, res) -> dict:
    """{"model": cross-fitted headline over the model attacks, "release": over the release attacks or None}."""
    names = tuple(scores)
    model = attacks_lib.model_attacks(names)
    release = [n for n in names if n in attacks_lib.RELEASE_ATTACKS]
    return {
        kind: headline_lib.headline({n: scores[n] for n in group}, d.keep, split, res) if group else None
        for kind, group in (("model", model), ("release", release))
    }


def canaries_detected(scores: dict, d: AttackData) -> dict:
    """{attack: canary members detected at the natural 0.1 %-FPR threshold}, {} without canaries."""
    if not d.canaries.size:
        return {}
    natural = trial_slices(d)["natural"]
    return {name: metrics.canary_detection(s, d.keep, natural, d.canaries, HEADLINE_FPR) for name, s in scores.items()}


def empirical_epsilon(scores: np.ndarray, d: AttackData, key: jax.Array, threshold: float | None) -> dict:
    """Epsilon lower bounds of one attack at delta 1e-5: natural examples and, if any, canaries.

    One trial per example (``audit.audit_epsilon``); the canaries' threshold is the natural
    0.1 %-FPR threshold, set on data disjoint from them.
    """
    natural_cols = np.flatnonzero(d.natural())
    config = audit.AuditConfig(delta=AUDIT_DELTA)
    out = {"natural": audit.audit_epsilon(scores, d.keep, natural_cols, jax.random.fold_in(key, 0), config=config)}
    if d.canaries.size:
        out["canaries"] = audit.audit_epsilon(
            scores, d.keep, d.canaries, jax.random.fold_in(key, 1), threshold=threshold, config=config
        )
    return out


def utility(d: AttackData) -> dict:
    """Test accuracy of the targets, their accuracy on members / non-members, the shadows' accuracy."""
    m = d.num_models
    acc = d.test_accuracy[:m]
    correct = d.correct  # Query 0's argmax == the label, [M, N].
    return {
        "test_accuracy_mean": float(acc.mean()),
        "test_accuracy_std": float(acc.std()),
        "test_accuracy": acc.tolist(),
        # The generalisation gap that membership inference feeds on.
        "member_accuracy": float(correct[d.keep].mean()),
        "nonmember_accuracy": float(correct[~d.keep].mean()),
        # None without shadows (Shokri from the bank: its "shadows" are the targets themselves).
        "shadow_test_accuracy_mean": float(d.test_accuracy[m:].mean()) if d.test_accuracy.size > m else None,
    }


def _roc(scores: dict, d: AttackData) -> dict:
    natural = trial_slices(d)["natural"]
    return {name: roc_points(s[natural], d.keep[natural]) for name, s in scores.items()}


def roc_points(scores: np.ndarray, keep: np.ndarray, max_points: int = 400) -> dict:
    """Log-log ROC points of flat trials, thinned for JSON: {"fpr": [P], "tpr": [P]}, P <= max_points + 2.

    Points are kept at log-spaced FPRs (the highest-TPR point at or below each), so the low-FPR end
    that the log axis magnifies keeps its detail; the (floor, floor) and (1, 1) ends are kept.
    """
    fpr, tpr = metrics.log_log_roc_points(scores, keep)
    if fpr.size > max_points:
        grid = np.logspace(np.log10(fpr[0]), 0.0, max_points)
        # fpr is non-decreasing: the last point at or below each grid value has the highest TPR there.
        # (max with 0: 10 ** log10(x) can round just below x.)
        idx = np.unique(np.r_[0, np.maximum(np.searchsorted(fpr, grid, side="right") - 1, 0), fpr.size - 1])
        fpr, tpr = fpr[idx], tpr[idx]
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist()}


def assess(scores: dict, d: AttackData, keys: dict, num_resamples: int, null_scores: NullScores | None = None) -> dict:
    """Every number of a run's report from its scores ({attack: [M, N]}) and export.

    keys: the run's named keys (``attack_data.run_keys``): "bootstrap" draws the example
    resamples of every attack's own intervals (the same for every row of a study), "crossfit" the
    headline's split and draws, "audit" the epsilon audits' trials, "null" the null test's labels.
    null_scores: (keep, used) -> the model attacks' scores under those labels; None skips the null test.
    """
    resamples = metrics.example_resamples(keys["bootstrap"], d.keep.shape[1], num_resamples)
    slices = trial_slices(d)
    summaries = attack_summaries(scores, d, slices, resamples)
    split, res = crossfit(d, keys, num_resamples)
    best = headlines(scores, d, split, res)
    detected = canaries_detected(scores, d)
    epsilon = {}
    for pick in best.values():
        if pick is not None:
            threshold = detected[pick["attack"]]["threshold"] if detected else None
            epsilon[pick["attack"]] = empirical_epsilon(scores[pick["attack"]], d, keys["audit"], threshold)
    out = {
        "attacks": summaries,
        "headline": best,
        "canary_detection": detected,
        "empirical_epsilon": epsilon,
        "roc": _roc(scores, d),
        "bootstrap": {
            "method": "example-level (all trials of a resampled example together)",
            "num_resamples": int(num_resamples),
            "headline": "cross-fitted (dcjax.privacy.headline); intervals: union of example and two-way bootstraps",
        },
    }
    if null_scores is not None:
        out["null_test"] = null.null_test(null_scores, d.keep, d.used, split, res, keys["null"])
    return out
