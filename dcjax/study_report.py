"""Markdown table, results document and privacy-vs-accuracy figure of the privacy study, from its results JSON.

Schema of the study results dict (what ``experiments/privacy_study.py`` writes)::

    {"tier": "cpu",                                   # which protocol tier produced it
     "command": "python experiments/privacy_study.py --flagfile=...",   # exact command, for reproduction
     "machine": "2 cores ...",                         # free-text description of the hardware
     "wall_seconds": 1234.5,                           # total wall time of the study
     "rows": [                                         # one per target (training-set recipe)
       {"name": "original",
        "description": "all of the target's private data",
        "utility": {"test_accuracy_mean": 0.98, "test_accuracy_std": 0.002},   # fractions in [0, 1]
        "shokri_accuracy": {"mean": 0.51, "std": 0.01},                        # balanced, fractions
        "attacks": {                                   # attack name -> slice name -> SUMMARY or {"skipped": why}
          "loss": {"all": SUMMARY},
          "lira_online_fixed_var": {"all": SUMMARY,
                                    "used": SUMMARY or {"skipped": "..."},   # real images a synthetic set used
                                    "canaries": SUMMARY},                    # mislabelled canaries
          ...},
        "nearest": {"all": SUMMARY} or null,           # nearest-synthetic-image attack; null without a release
        "dp": {"epsilon": 4.0, "delta": 1e-05,         # DP-SGD rows only (absent otherwise): nominal
               "noise_multiplier": 2.82, "l2_clip": 1.0, ...}},   # (epsilon, delta), noise, clip
       ...]}

``SUMMARY`` is the dict of ``dcjax.privacy.metrics.summarize``: ``auc``, ``balanced_accuracy``, ``tpr_at_0``,
``tpr_at_0.001``, ``tpr_at_0.01``, each with ``_ci_low`` / ``_ci_high``, plus ``fpr_floor``, ``num_members`` and
``num_nonmembers``. Any entry may be missing or skipped; it then renders as an en dash, never as an error.
"""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")  # Headless: no display on servers or CI.
import matplotlib.pyplot as plt  # noqa: E402

from dcjax import checkpoint  # noqa: E402
from dcjax.plots import _save  # noqa: E402

LIRA = "lira_online_fixed_var"  # The headline LiRA variant.
DASH = "–"  # En dash: a missing or skipped entry.

COLUMNS = ("target", "test accuracy (%)", "Shokri accuracy (%)", "LOSS AUC", "LiRA AUC",
           "LiRA TPR@0.1% FPR (%) [95% CI]", "LiRA TPR@1% FPR (%) [95% CI]",
           "LiRA TPR@0.1% FPR on used images (%)", "LiRA TPR@0.1% FPR on canaries (%)", "nearest-synthetic AUC")


def _get(tree, *path):
    """tree[path[0]][path[1]]... or None if any step is missing, null, or a skipped slice."""
    for step in path:
        if not isinstance(tree, dict) or tree.get(step) is None:
            return None
        tree = tree[step]
    if isinstance(tree, dict) and "skipped" in tree:
        return None
    return tree


def _number(value) -> float | None:
    """A finite float, or None for anything else (missing, null, NaN, a string)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _pct_mean_std(mean, std) -> str:
    m, s = _number(mean), _number(std)
    if m is None:
        return DASH
    return f"{100 * m:.2f}" if s is None else f"{100 * m:.2f} +- {100 * s:.2f}"


def _auc(summary) -> str:
    value = _number(_get(summary, "auc"))
    return DASH if value is None else f"{value:.3f}"


def _tpr(summary, fpr: float) -> str:
    """TPR at ``fpr`` in % with its CI, e.g. "1.20 [0.40, 2.10]"."""
    name = f"tpr_at_{fpr:g}"
    value = _number(_get(summary, name))
    if value is None:
        return DASH
    low, high = _number(_get(summary, f"{name}_ci_low")), _number(_get(summary, f"{name}_ci_high"))
    if low is None or high is None:
        return f"{100 * value:.2f}"
    return f"{100 * value:.2f} [{100 * low:.2f}, {100 * high:.2f}]"


def _target(row: dict) -> str:
    """The row's name; a DP-SGD row adds its nominal epsilon and noise multiplier."""
    name = str(row.get("name", DASH))
    eps, noise = _number(_get(row, "dp", "epsilon")), _number(_get(row, "dp", "noise_multiplier"))
    if eps is not None and noise is not None:
        name += f" (ε={eps:g}, σ={noise:.2f})"
    return name.replace("|", "\\|")


def _row_cells(row: dict) -> list[str]:
    lira = _get(row, "attacks", LIRA)
    return [
        _target(row),
        _pct_mean_std(_get(row, "utility", "test_accuracy_mean"), _get(row, "utility", "test_accuracy_std")),
        _pct_mean_std(_get(row, "shokri_accuracy", "mean"), _get(row, "shokri_accuracy", "std")),
        _auc(_get(row, "attacks", "loss", "all")),
        _auc(_get(lira, "all")),
        _tpr(_get(lira, "all"), 0.001),
        _tpr(_get(lira, "all"), 0.01),
        _tpr(_get(lira, "used"), 0.001),
        _tpr(_get(lira, "canaries"), 0.001),
        _auc(_get(row, "nearest", "all")),
    ]


def markdown_table(results: dict) -> str:
    """The study's headline table: one markdown line per target row (see ``COLUMNS``), plus header lines."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in results.get("rows") or []:
        lines.append("| " + " | ".join(_row_cells(row)) + " |")
    return "\n".join(lines) + "\n"


def _wall_time(seconds) -> str:
    value = _number(seconds)
    if value is None:
        return DASH
    total = int(round(value))
    return f"{total // 3600}h {total % 3600 // 60:02d}m {total % 60:02d}s"


def _floor_note(results: dict) -> str:
    """The LiRA FPR floors actually reached, e.g. "original: 1/5000 = 0.020%"; empty if none are known."""
    notes = []
    for row in results.get("rows") or []:
        n = _number(_get(row, "attacks", LIRA, "all", "num_nonmembers"))
        if n:
            notes.append(f"{row.get('name', DASH)}: 1/{int(n)} = {100 / n:.3f}%")
    return ("LiRA FPR floors here: " + "; ".join(notes) + ".") if notes else ""


_LEGEND = """\
## How to read this

- **target**: the training-set recipe of the target models (one row each).
- **test accuracy**: utility of the target models on the held-out test set, mean +- std over targets, in %.
- **Shokri accuracy**: balanced accuracy of the Shokri et al. shadow-model attack, mean +- std, in %
  (chance is 50).
- **LOSS AUC**: ROC AUC of the loss-threshold attack; **LiRA AUC**: ROC AUC of online LiRA with a fixed
  (global) variance, the headline attack. Chance AUC is 0.5.
- **LiRA TPR@x% FPR**: the fraction of members LiRA finds while flagging at most x% of non-members, in %, with
  a 95% stratified-bootstrap confidence interval. Chance TPR at x% FPR is x%.
- **on used images**: LiRA TPR@0.1% FPR restricted to the real images that reached a target's training set
  as pixels (the subset's chosen images, or the real images its synthetic set was initialised from) as
  members, against all its non-members; **on canaries**: restricted to the injected
  mislabelled canaries.
- **nearest-synthetic AUC**: ROC AUC of scoring each real image by minus its distance to the nearest released
  synthetic image (no model needed).
- A dash (–) means the entry does not apply to the row or was skipped (e.g. a slice without members).
- The smallest resolvable FPR (the FPR floor) is 1/#non-member trials; a TPR at an FPR below the floor is the
  TPR at zero FPR.
"""


_DP_LEGEND = """\
- **dpsgd_epsE (ε=E, σ=s)**: targets trained like `original` but with DP-SGD{lr}: each example's gradient clipped
  to L2 norm {clip}, Gaussian noise of std σ x clip added to the batch sum; σ calibrated so that the RDP accountant
  gives (ε, δ={delta})-DP. Nominal ε: the accountant assumes Poisson sampling at rate B/n with n the expected
  private-half size, while training shuffles fixed-size batches (see `dcjax/privacy/accounting.py`).
"""


def _g(value) -> str:
    number = _number(value)
    return DASH if number is None else f"{number:g}"


def _dp_legend(results: dict) -> str:
    """The DP-SGD bullet of the legend, only when some row is a DP-SGD row."""
    for row in results.get("rows") or []:
        dp = _get(row, "dp")
        if dp is not None:
            lr = f" at learning rate {_g(dp['lr'])}" if dp.get("lr") is not None else ""
            return _DP_LEGEND.format(clip=_g(dp.get("l2_clip")), delta=_g(dp.get("delta")), lr=lr)
    return ""


def results_document(results: dict, figures: dict[str, str]) -> str:
    """The generated part of the results document (markdown), without a conclusion.

    Args:
      results: the study results dict (see the module docstring).
      figures: figure name -> path relative to the document, rendered as image links in this order.
    """
    floors = _floor_note(results)
    parts = [
        f"# Privacy study results (tier: {results.get('tier', DASH)})\n",
        "Command:\n\n```\n" + str(results.get("command", DASH)) + "\n```\n",
        f"Machine: {results.get('machine', DASH)}\n\nWall time: {_wall_time(results.get('wall_seconds'))}\n",
        "## Results\n\n" + markdown_table(results),
        _LEGEND + _dp_legend(results) + (f"\n{floors}\n" if floors else ""),
    ]
    if figures:
        parts.append("## Figures\n\n" + "\n".join(f"![{name}]({path})\n" for name, path in figures.items()))
    return "\n".join(parts)


def write_results_document(path: str, results: dict, figures: dict[str, str], conclusion: str = "") -> None:
    """Atomically writes ``results_document`` plus, if given, a hand-written "## Conclusion" section."""
    text = results_document(results, figures)
    if conclusion:
        text += "\n## Conclusion\n\n" + conclusion
    if not text.endswith("\n"):
        text += "\n"
    checkpoint.atomic_write_bytes(path, text.encode())


def _figure_points(results: dict) -> list[tuple[str, float, float, float, float, float]]:
    """(name, accuracy %, accuracy std %, tpr %, tpr - ci_low %, ci_high - tpr %) of rows that have both."""
    points = []
    for row in results.get("rows") or []:
        acc = _number(_get(row, "utility", "test_accuracy_mean"))
        lira = _get(row, "attacks", LIRA, "all")
        tpr = _number(_get(lira, "tpr_at_0.001"))
        if acc is None or tpr is None:
            continue
        std = _number(_get(row, "utility", "test_accuracy_std")) or 0.0
        low = _number(_get(lira, "tpr_at_0.001_ci_low"))
        high = _number(_get(lira, "tpr_at_0.001_ci_high"))
        # Clamp at 0: matplotlib rejects negative error-bar lengths (possible if a CI is stored inconsistently).
        down = max(tpr - low, 0.0) if low is not None else 0.0
        up = max(high - tpr, 0.0) if high is not None else 0.0
        points.append((str(row.get("name", "?")), 100 * acc, 100 * std, 100 * tpr, 100 * down, 100 * up))
    return points


def privacy_accuracy_figure(path: str, results: dict) -> None:
    """Scatter of utility vs privacy risk (PNG, atomic): x = test accuracy (%), y = LiRA TPR@0.1% FPR (%).

    One labelled point per row that has both numbers; error bars are the accuracy std and the TPR's 95% CI.
    The dashed line is chance (TPR = FPR = 0.1%).
    """
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, acc, acc_std, tpr, down, up in _figure_points(results):
        ax.errorbar([acc], [tpr], xerr=[[acc_std], [acc_std]], yerr=[[down], [up]], fmt="o", capsize=3)
        ax.annotate(name, (acc, tpr), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.axhline(0.1, color="k", ls="--", lw=0.8, label="chance (0.1%)")
    ax.set_xlabel("test accuracy (%)")
    ax.set_ylabel("LiRA TPR at 0.1% FPR (%)")
    ax.set_title("Privacy risk vs utility")
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    _save(fig, path)
