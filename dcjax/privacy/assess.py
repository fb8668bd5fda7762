"""From attack scores to the numbers a reviewer reads: slices, intervals, the strongest attack, audits.

Slices of the M x N trials (``trial_slices``):

* ``natural``: every non-canary example. The HEADLINE slice: canaries are planted outliers,
  so mixing them in would report a leak that natural data does not have.
* ``canaries``: the mislabelled canaries alone; also reported as k / n detected at the
  threshold that gives 0.1 % FPR on natural non-members (``canary_detection``).
* ``used`` (recipes that copy some members' pixels): natural members whose pixels reached the
  target's training set, against all natural non-members.
* ``all``: natural and canaries together, only for comparison with older reports.

Intervals: an example-level bootstrap (``metrics.example_resamples``): trials that share an
example are resampled together, since one image is easy or hard for every model; the same
resample indices serve every attack and every row of a study with the same seed, so
differences between attacks or rows get paired intervals. Trials also share models
(targets and shadows), which this bootstrap does not resample: the intervals treat the bank
of models as fixed.

The strongest attack of a row is the model attack with the highest TPR at 0.1 % FPR on the
natural slice; since it is picked from many, its interval is that of the per-resample
maximum over model attacks (``strongest``), which carries the selection. Release attacks
(on the synthetic set itself) are reported separately: they need the set to be published.
"""

from __future__ import annotations

import jax
import numpy as np

from dcjax.privacy import attacks as attacks_lib
from dcjax.privacy import audit, metrics
from dcjax.privacy.attack_data import AttackData

FPRS = (0.01, 0.001, 0.0001)
HEADLINE_FPR = 0.001
HEADLINE = "tpr_at_0.001"
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
    """{slice: example-bootstrap summary (``metrics.summarize_examples``) or {"skipped": why}}."""
    out = {}
    for name, include in slices.items():
        reason = _skip_reason(d.keep, include)
        out[name] = (
            {"skipped": reason} if reason else metrics.summarize_examples(scores, d.keep, include, resamples, FPRS)
        )
    return out


def headline_samples(scores: dict, d: AttackData, resamples: np.ndarray) -> dict[str, np.ndarray]:
    """{attack: [R] bootstrap samples of TPR at 0.1 % FPR on the natural slice}."""
    natural = trial_slices(d)["natural"]
    return {
        name: np.asarray(metrics.bootstrap_samples(s, d.keep, natural, resamples, FPRS)[HEADLINE])
        for name, s in scores.items()
    }


def strongest(summaries: dict, samples: dict, names) -> dict | None:
    """The attack among ``names`` with the highest natural TPR at 0.1 % FPR (ties: higher AUC).

    Returns {"attack", "tpr", "auc", "ci_low", "ci_high"} with the 95 % interval of the per-resample
    maximum over ``names`` (the selection is inside the bootstrap), or None when none applies.
    """
    names = [n for n in names if "skipped" not in summaries[n]["natural"]]
    if not names:
        return None

    def rank(n):  # An unresolvable TPR (FPR floor above 0.1 %) ranks below every resolved one.
        tpr = summaries[n]["natural"][HEADLINE]
        return (-1.0 if tpr is None else tpr, summaries[n]["natural"]["auc"])

    best = max(names, key=rank)
    # A resample without a member or non-member is NaN for every attack (left out, as in the summaries).
    maxima = np.max(np.stack([samples[n] for n in names]), axis=0)
    low = high = None
    if not np.isnan(maxima).all():
        low, high = (float(v) for v in np.nanquantile(maxima, [0.025, 0.975]))
    return {
        "attack": best,
        "tpr": summaries[best]["natural"][HEADLINE],
        "auc": summaries[best]["natural"]["auc"],
        "ci_low": low,
        "ci_high": high,
        "samples": _json_floats(maxima),
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
        "shadow_test_accuracy_mean": float(d.test_accuracy[m:].mean()),
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


def assess(scores: dict, d: AttackData, keys: dict, num_resamples: int) -> dict:
    """Every number of a run's report from its scores ({attack: [M, N]}) and export.

    keys: the run's named keys (``attack_data.run_keys``): "bootstrap" draws the example
    resamples (the same for every row of a study), "audit" the epsilon audits' trials.
    """
    resamples = metrics.example_resamples(keys["bootstrap"], d.keep.shape[1], num_resamples)
    slices = trial_slices(d)
    summaries = {name: slice_summaries(s, d, slices, resamples) for name, s in scores.items()}
    samples = headline_samples(scores, d, resamples)
    names = tuple(scores)
    best = {
        "model": strongest(summaries, samples, attacks_lib.model_attacks(names)),
        "release": strongest(summaries, samples, [n for n in names if n in attacks_lib.RELEASE_ATTACKS]),
    }
    detected = canaries_detected(scores, d)
    epsilon = {}
    for pick in best.values():
        if pick is not None:
            threshold = detected[pick["attack"]]["threshold"] if detected else None
            epsilon[pick["attack"]] = empirical_epsilon(scores[pick["attack"]], d, keys["audit"], threshold)
    return {
        "attacks": summaries,
        "strongest": best,
        "canary_detection": detected,
        "empirical_epsilon": epsilon,
        "roc": _roc(scores, d),
        "bootstrap": {
            "method": "example-level (all trials of a resampled example together)",
            "num_resamples": int(num_resamples),
            "headline_samples": {n: _json_floats(v) for n, v in samples.items()},
        },
    }


def _json_floats(values: np.ndarray) -> list:
    """Floats for JSON, NaN (a degenerate resample) as null."""
    return [None if np.isnan(v) else float(v) for v in values]
