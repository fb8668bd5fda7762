"""Tables, results document and privacy-vs-accuracy figure of the privacy study, from its results JSON.

The study results dict (what ``dcjax.privacy.study.run_study`` writes; what this module reads is declared, and
checked on read, in ``results_schema.STUDY``)::

    {"tier": "cpu", "command": "python experiments/privacy_study.py ...", "machine": "...",
     "wall_seconds": 1234.5,
     "rows": [                                   # one per target recipe
       {"name": "original", "description": "...",
        "utility": {"test_accuracy_mean": 0.98, "test_accuracy_std": 0.002, ...},   # fractions
        "shokri_accuracy": {"mean": 0.51, "std": 0.01} or null,                      # balanced
        "natural": {attack: SUMMARY},             # every attack on the natural (non-canary) slice
        "attacks": {attack: {slice: SUMMARY or {"skipped": why}}},
        "headline": {"model": HEADLINE or null, "release": HEADLINE or null},
        "null_test": NULL,
        "canary_detection": {attack: {"detected", "members", "false_positives", "nonmembers", ...}} ({}: no canaries),
        "empirical_epsilon": {attack: {"natural": AUDIT, "canaries": AUDIT (with canaries)}},
        "dp": {...} (DP-SGD rows only),
        "movement": {...} (condensed rows only: ``attack_run.movement_summary``),
        "row": "dc_real", "iteration": 100 | "epochs": 10 (frontier points only: the point's row and its
           progress, condensation iterations or DP-SGD expected epochs; ``study.plan_points``)}, ...],
     "poster_protocol": {row: {"mean", "std", "per_target", "trained_on", "mode"}} (optional: only where the
        original row learns Shokri from the bank; ``dcjax.privacy.poster``)}

``SUMMARY`` is ``metrics.summarize_examples``'s dict (``auc``, ``tpr_at_0.01``, ``tpr_at_0.001``,
``tpr_at_0.0001`` with ``_ci_low`` / ``_ci_high``; a TPR at an FPR below the floor is None).
``HEADLINE`` is ``headline.headline``'s (the cross-fitted attack, "attack_by_cell", each metric with
``_ci_low`` / ``_ci_high`` and per bootstrap, "samples": two-way draws of TPR@0.1%); ``NULL`` is
``null.null_test``'s. Every row of a study shares the split and the bootstrap draws (same seed and
pool), so the per-resample samples of two rows pair up, which is what the contrasts table uses.
Every public function here checks its input first (``results_schema.check_study``, or ``check_rows`` where it
reads rows only): a missing field raises, naming it; an en dash renders only an optional, null or undefined entry.
"""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")  # Headless: no display on servers or CI.
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from dcjax import checkpoint  # noqa: E402
from dcjax import evaluation  # noqa: E402
from dcjax.plots import _save  # noqa: E402
from dcjax.privacy import multiplicity, null, power, results_schema  # noqa: E402
from dcjax.privacy.tables import (  # noqa: E402
    DASH,
    HEADLINE,
    LEGEND,
    attacks_table,
    bootstraps_table,
    get,
    markdown_table,
    metric,
    number,
    pct_mean_std,
    row_label,
    table,
    with_ci,
)


def contrasts(results: dict, baselines=("subset", "original")) -> list[tuple[dict, dict]]:
    """(row, baseline) pairs: every row against each baseline row present, and condensed rows vs DP rows; each
    unordered pair once."""
    results_schema.check_rows(results)
    rows = results["rows"]
    by_name = {r["name"]: r for r in rows}
    pairs = [(r, by_name[b]) for b in baselines if b in by_name for r in rows if r["name"] != b]
    condensed = [r for r in rows if r["name"].startswith(("dc_", "dsa_", "dm_"))]
    private = [r for r in rows if r.get("dp")]
    pairs += [(c, p) for c in condensed for p in private]
    # One contrast per pair of rows (subset - original is original - subset negated): a family counts each once.
    unique, seen = [], set()
    for a, b in pairs:
        key = frozenset((a["name"], b["name"]))
        if key not in seen:
            seen.add(key)
            unique.append((a, b))
    return unique


def _contrast_draws(a: dict, b: dict) -> tuple[np.ndarray, float] | None:
    """(paired draws [R], point difference) of two rows' headline TPR@0.1%, or None if either lacks one."""
    pa, pb = a["headline"]["model"], b["headline"]["model"]
    if pa is None or pb is None or pa[HEADLINE] is None or pb[HEADLINE] is None:
        return None
    sa, sb = (np.asarray(p["samples"], np.float64) for p in (pa, pb))  # null -> NaN
    if sa.shape != sb.shape:
        return None
    return sa - sb, pa[HEADLINE] - pb[HEADLINE]


def contrast_family(results: dict) -> list[dict]:
    """Every contrast (``contrasts``) with raw and max-T adjusted p-values (``multiplicity.max_t``):
    [{"a", "b", "difference", "p_raw", "p_adjusted", "ci_low", "ci_high", "simultaneous_low", ...}]."""
    pairs = [(a, b, drawn) for a, b in contrasts(results) if (drawn := _contrast_draws(a, b)) is not None]
    if not pairs:
        return []
    tests = multiplicity.max_t(np.stack([d for _, _, (d, _) in pairs]), np.asarray([p for _, _, (_, p) in pairs]))
    return [{"a": row_label(a), "b": row_label(b), **t} for (a, b, _), t in zip(pairs, tests)]


def _p(value: float) -> str:
    return f"{value:.3f}"


def contrasts_table(results: dict) -> str:
    """Paired bootstrap differences of the headline TPR at 0.1 % FPR, raw and adjusted for the family."""
    header = (
        "difference (row − row)",
        "TPR@0.1% difference (points) [95% CI]",
        "simultaneous 95% CI (max-T)",
        "p raw",
        "p adjusted (max-T)",
    )
    lines = [
        [
            f"{t['a']} − {t['b']}",
            with_ci(t["difference"], t["ci_low"], t["ci_high"], 100, 2),
            f"[{100 * t['simultaneous_low']:.2f}, {100 * t['simultaneous_high']:.2f}]",
            _p(t["p_raw"]),
            _p(t["p_adjusted"]),
        ]
        for t in contrast_family(results)
    ]
    return table(header, lines)


# The poster's balanced Shokri accuracies (docs/protocol.md section 6): against original and condensed targets.
POSTER_ACCURACY = {"original": 0.62, "condensed": 0.41}
_CONDENSED = ("dc_", "dsa_", "dm_")

_POSTER_INTRO = """\
## The poster's protocol

The poster trained Shokri's attack on shadow models trained on original data and applied it to
condensed targets: ~{original:.0f} % balanced accuracy against original targets, ~{condensed:.0f} % against
condensed ones (chance 50 %). Here target m's attack classifiers are the original row's, trained on
its other pipelines (leave one out), and each row's target m (same pool, keep masks and Shokri
subsample) is attacked with them ({mode}: classifiers trained on one half of the subsample score the
other). An accuracy below 50 % still carries membership signal (the flipped decision scores above 50 %):
this measures how an attack calibrated on original models transfers, not a row's privacy (the
headline table does). The results table's Shokri column is each row's own classifiers (leave one out
within the row); for the original row the two are the same.

"""


def _poster_reference(name: str) -> str:
    if name == "original":
        return f"~{100 * POSTER_ACCURACY['original']:.0f}"
    return f"~{100 * POSTER_ACCURACY['condensed']:.0f}" if name.startswith(_CONDENSED) else DASH


def poster_section(results: dict) -> str:
    """ "The poster's protocol": each row's Shokri accuracy under the original row's classifiers beside the
    poster's; empty without ``results["poster_protocol"]``."""
    results_schema.check_study(results)
    protocol = results.get("poster_protocol")
    if not protocol:
        return ""
    header = ("target", "attack trained on", "Shokri accuracy (%)", "the poster (%)")
    lines = []
    for row in results["rows"]:
        name = row["name"]
        summary = row["shokri_accuracy"] if name == "original" else protocol[name]
        trained_on = "its own row (leave one out)" if name == "original" else "the original row"
        accuracy = pct_mean_std(get(summary, "mean"), get(summary, "std"))
        lines.append([row_label(row), trained_on, accuracy, _poster_reference(name)])
    mode = next((v["mode"] for v in protocol.values() if v["mode"]), DASH)
    intro = _POSTER_INTRO.format(**{k: 100 * v for k, v in POSTER_ACCURACY.items()}, mode=mode)
    return intro + table(header, lines)


def _condensed_series(results: dict) -> dict[str, list[dict]]:
    """{base row: its points in order} for every condensed row (a ladder's points, or the row itself)."""
    series: dict[str, list[dict]] = {}
    for row in results["rows"]:
        base = row.get("row") or row["name"]
        if base.startswith(_CONDENSED):
            series.setdefault(base, []).append(row)
    return series


def _movement_cell(row: dict) -> str:
    """ "synthetic median / real median (ratio)" of a point's image movement, or a dash."""
    synthetic = number(get(row, "movement", "synthetic_to_nearest_real", "median"))
    real = number(get(row, "movement", "real_to_nearest_real", "median"))
    ratio = number(get(row, "movement", "median_ratio"))
    if synthetic is None or real is None or ratio is None:
        return DASH
    return f"{synthetic:.2f} / {real:.2f} ({ratio:.2f})"


def _doubling_note(points: list[dict]) -> str:
    """Whether the last doubling of iterations gained < 0.3 accuracy points (needs points at T and T / 2)."""
    by_iteration = {p.get("iteration"): number(p["utility"]["test_accuracy_mean"]) for p in points}
    last = points[-1].get("iteration")
    if not isinstance(last, int) or last % 2:
        return "no point at half the last iteration: convergence not assessed"
    end, half = by_iteration.get(last), by_iteration.get(last // 2)
    if end is None or half is None:
        return "no point at half the last iteration: convergence not assessed"
    gain = 100 * (end - half)
    verdict = "converged by this test" if gain < 0.3 else "still gaining"
    return f"iterations {last // 2} -> {last}: {gain:+.2f} accuracy points ({verdict}: < 0.3 points)"


def _gain_note(points: list[dict]) -> str:
    """ "Gain over the initial set: ..." line: the last point's test-accuracy gain over the row's iteration-0 point
    (its initial set), paired by pipeline (target m of each point trains from the same key on the same private
    half), with its 95 % t-interval; empty without an iteration-0 point."""
    first, last = points[0], points[-1]
    if first.get("iteration") != 0 or last is first:
        return ""
    before, after = (p["utility"]["test_accuracy"] for p in (first, last))
    gain = evaluation.paired_difference(before, after)
    if gain.low > 0:
        verdict = "it beats its initial set"
    elif gain.high < 0:
        verdict = "it is worse than its initial set"
    else:
        verdict = "the interval holds 0: at this length it does not beat its own initial set (a subset in disguise)"
    return (
        f"Gain over the initial set: iterations 0 -> {last['iteration']}: {gain.mean:+.2f} test-accuracy points "
        f"[{gain.low:+.2f}, {gain.high:+.2f}] (95 % t-interval over {len(gain.differences)} pipelines, paired): "
        f"{verdict}.\n"
    )


def condensation_section(results: dict) -> str:
    """ "Condensed rows: ladders and image movement": per condensed row, each point's accuracy, headline TPR at
    0.1 % FPR and how far its images sit from private ones; empty without condensed rows."""
    results_schema.check_rows(results)
    series = _condensed_series(results)
    if not series:
        return ""
    parts = [
        "## Condensed rows: ladders and image movement\n\n"
        "Per point: test accuracy, the headline TPR at 0.1% FPR, and the median L2 distance (normalised pixels) "
        "of a synthetic image to its nearest private image beside the median distance of a private image to its "
        "nearest other private image (their ratio: 0 is a copy; about 1 or more, as far as real digits are "
        "from each other). The subset row (10 random private images per class) is the real-init rows' "
        "initial set in distribution.\n"
    ]
    for base, points in series.items():
        lines = [
            [
                str(p.get("iteration", DASH)),
                pct_mean_std(p["utility"]["test_accuracy_mean"], p["utility"]["test_accuracy_std"]),
                metric(p["headline"]["model"], HEADLINE),
                _movement_cell(p),
            ]
            for p in points
        ]
        header = ("iteration", "test accuracy (%)", "TPR at 0.1% FPR (%)", "nearest-real: synthetic / real (ratio)")
        notes = f"\nLadder: {_doubling_note(points)}.\n" + _gain_note(points)
        parts.append(f"### {base}\n\n" + table(header, lines) + notes)
    return "\n".join(parts)


def _wall_time(seconds) -> str:
    value = number(seconds)
    if value is None:
        return DASH
    total = int(round(value))
    return f"{total // 3600}h {total % 3600 // 60:02d}m {total % 60:02d}s"


def _null_note(results: dict) -> str:
    """The null test over every row, e.g. "3 of 180 intervals excluded chance (allowed <= 16)"; empty if none ran."""
    tests = [row["null_test"] for row in results["rows"]]
    if not tests:
        return ""
    draws, excluded = sum(t["draws"] for t in tests), sum(t["excluded"] for t in tests)
    allowed = null.allowed_exclusions(draws)
    verdict = "passed" if excluded <= allowed else "FAILED"
    return (
        f"Null test over all {len(tests)} rows: {excluded} of {draws} headline intervals excluded chance "
        f"(a correct 95% interval: at most {allowed}, the 99th percentile of Binomial({draws}, 5%)): {verdict}."
    )


def _floor_note(results: dict) -> str:
    """The headline's FPR floors, e.g. "original: 0.051%"; empty if none are known."""
    notes = []
    for row in results["rows"]:
        floor = number(get(row, "headline", "model", "fpr_floor"))
        if floor:
            notes.append(f"{row['name']}: {100 * floor:.3f}%")
    if not notes:
        return ""
    return "FPR floors of the headline (1 / the non-member trials of its smallest cell): " + "; ".join(notes) + "."


def resolution_section(results: dict) -> str:
    """ "What this tier can resolve": per contrast of the family, the paired draws' standard error and the
    smallest true difference detected at 80 % power at family level 5 % (``power``; Bonferroni over the
    family); empty without contrasts."""
    pairs = [(a, b) for a, b in contrasts(results) if _contrast_draws(a, b) is not None]
    if not pairs:
        return ""
    lines = []
    for a, b in pairs:
        pa, pb = (r["headline"]["model"] for r in (a, b))
        se = power.contrast_se(pa["samples"], pb["samples"])
        mdd = power.detectable_difference(se, len(pairs))
        lines.append([f"{row_label(a)} - {row_label(b)}", f"{100 * se:.3f}", f"{100 * mdd:.3f}"])
    return (
        "## What this tier can resolve\n\n"
        f"For each contrast of the family ({len(pairs)}): the standard error of the paired difference in headline "
        "TPR at 0.1% FPR (its two-way bootstrap draws) and the smallest true difference this tier detects with 80% "
        f"power at family level 5% (two-sided, Bonferroni over the {len(pairs)} contrasts, so conservative next to "
        "the max-T adjustment; dcjax/privacy/power.py). A smaller difference may exist and go undetected.\n\n"
        + table(["contrast", "se (points)", "detectable at 80% power (points)"], lines)
    )


_CONTRASTS_INTRO = """\
## Paired differences between rows

Same examples, same models' private halves, same bootstrap draws; the statistic is each row's
cross-fitted headline TPR at 0.1% FPR, its draws from the bootstrap over examples and models. The
contrasts are one family: "p adjusted" and the simultaneous interval hold for all of them at once
(single-step max-T over the family's bootstrap draws; a p-value's floor is 1 / (1 + draws)). Read a
contrast as a finding only by its adjusted p-value.

"""


def results_document(results: dict, figures: dict[str, str]) -> str:
    """The generated part of the results document (markdown), without a conclusion."""
    results_schema.check_study(results)
    floors = "\n\n".join(n for n in (_null_note(results), _floor_note(results)) if n)
    regenerate = results.get("report_command")
    parts = [
        f"# Privacy study results (tier: {results['tier']})\n",
        "Command:\n\n```\n" + results["command"] + "\n```\n",
        *(["Tables regenerated from the exported scores by:\n\n```\n" + regenerate + "\n```\n"] if regenerate else []),
        f"Machine: {results['machine']}\n\nWall time: {_wall_time(results['wall_seconds'])}\n",
        "## Results (natural examples; canaries separately)\n\n" + markdown_table(results),
        "Rows:\n\n" + "".join(f"- **{row_label(r)}**: {r['description']}\n" for r in results["rows"]),
        LEGEND + (f"\n{floors}\n" if floors else ""),
        *([poster] if (poster := poster_section(results)) else []),
        *([condensed] if (condensed := condensation_section(results)) else []),
        bootstraps_table(results),
        _CONTRASTS_INTRO + contrasts_table(results),
        *([resolution] if (resolution := resolution_section(results)) else []),
        "## Every attack, natural examples\n\n" + attacks_table(results),
    ]
    if figures:
        parts.append("## Figures\n\n" + "\n".join(f"![{name}]({path})\n" for name, path in figures.items()))
    return "\n".join(parts)


def document(results: dict, figures: dict[str, str], conclusion: str = "") -> str:
    """RESULTS.md: ``results_document`` plus, if given, a hand-written "## Conclusion" section."""
    text = results_document(results, figures)
    if conclusion:
        text += "\n## Conclusion\n\n" + conclusion
    return text if text.endswith("\n") else text + "\n"


def write_results_document(path: str, results: dict, figures: dict[str, str], conclusion: str = "") -> None:
    """Atomically writes ``document``."""
    checkpoint.atomic_write_bytes(path, document(results, figures, conclusion).encode())


DP_SERIES = "DP-SGD (by ε)"  # The target-ε DP-SGD rows: one series in the frontier figure, joined in ε order.


def _series_of(row: dict) -> tuple[str, float]:
    """(series, order within it): a ladder point's or checkpoint's row (``"row"``) and its iteration or epochs; a
    target-ε DP-SGD row (``dp`` without ``"row"``) the DP series at its ε; any other row its own name."""
    if row.get("row"):
        return row["row"], float(row.get("iteration", row.get("epochs", 0)) or 0)
    if row.get("dp"):
        return DP_SERIES, float(row["dp"]["epsilon"])
    return row["name"], 0.0


def _figure_points(results: dict) -> list[tuple[str, str, float, float, float, float, float]]:
    """(label, series, accuracy %, accuracy std %, tpr %, ci_low %, ci_high %) of rows that have both, each
    series' points in its order (``_series_of``: ladder iterations, checkpoint epochs, DP-SGD's ε), series in
    the order of their first row."""
    results_schema.check_rows(results)
    points: list[tuple[tuple[int, float], tuple]] = []
    order: dict[str, int] = {}  # Series -> the position of its first row.
    for row in results["rows"]:
        acc = number(row["utility"]["test_accuracy_mean"])
        pick = row["headline"]["model"] or {}
        tpr, low, high = (number(pick.get(k)) for k in (HEADLINE, f"{HEADLINE}_ci_low", f"{HEADLINE}_ci_high"))
        if acc is None or tpr is None or low is None or high is None:
            continue
        std = number(row["utility"]["test_accuracy_std"]) or 0.0
        group, rank = _series_of(row)
        order.setdefault(group, len(order))
        point = (row["name"], group, 100 * acc, 100 * std, 100 * tpr, 100 * low, 100 * high)
        points.append(((order[group], rank), point))
    return [point for _, point in sorted(points, key=lambda p: p[0])]


def _draw_frontier(ax, points: list, colours: dict, label_below: float = math.inf) -> None:
    """Every point of ``_figure_points`` on ``ax`` in its series' colour, a series' points joined by a line and
    its first and last point labelled if their accuracy is below ``label_below`` (the rest: RESULTS.md's tables;
    the zoomed panel labels the crowded ones)."""
    for group, colour in colours.items():
        members = [p for p in points if p[1] == group]
        # A log axis cannot show 0: clamp the points and their intervals at 0.01 %.
        xs, ys = [p[2] for p in members], [max(p[4], 0.01) for p in members]
        lows, highs = [max(p[5], 0.01) for p in members], [max(p[6], 0.01) for p in members]
        xerr = [[p[3] for p in members]] * 2
        yerr = [[y - lo for y, lo in zip(ys, lows)], [hi - y for y, hi in zip(ys, highs)]]
        ax.errorbar(xs, ys, xerr=xerr, yerr=yerr, fmt="o-", color=colour, lw=0.8, ms=4, capsize=2, label=group)
        for k in sorted({0, len(members) - 1}):
            if xs[k] < label_below:
                ax.annotate(members[k][0], (xs[k], ys[k]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.axhline(0.1, color="k", ls="--", lw=0.8, label="chance (0.1%)")
    ax.set_yscale("log")
    ax.set_xlabel("test accuracy (%)")
    ax.grid(alpha=0.3, which="both")


def privacy_accuracy_figure(path: str, results: dict) -> None:
    """Utility vs privacy risk (PNG, atomic): x = test accuracy (%), y = the headline model attack's TPR
    at 0.1 % FPR on natural examples (%, log scale), with the accuracy std and the TPR's 95 % CI; one colour per
    row, a row's ladder points or checkpoints (and the DP-SGD rows, by ε) joined by a line (the frontier). The
    dashed line is chance (0.1 %). Where the points span more than 10 accuracy points, a second panel zooms on the
    most accurate ones (within 8 points of the best), where the rows crowd."""
    points = _figure_points(results)
    groups = list(dict.fromkeys(p[1] for p in points))
    colours = {g: plt.get_cmap("tab10" if len(groups) <= 10 else "tab20")(i % 20) for i, g in enumerate(groups)}
    accuracies = [p[2] for p in points] or [0.0]
    zoom = max(accuracies) - min(accuracies) > 10
    fig, axes = plt.subplots(1, 2 if zoom else 1, figsize=(12.5 if zoom else 6.5, 5.2), squeeze=False)
    window = max(accuracies) - 8  # The zoomed panel's left edge.
    for ax, label_below in zip(axes[0], (window if zoom else math.inf, math.inf)):
        _draw_frontier(ax, points, colours, label_below)
    axes[0][0].set_ylabel("headline attack (cross-fitted): TPR at 0.1% FPR (%)")
    axes[0][0].set_title("Privacy risk vs utility (natural examples, 95% CIs)")
    if zoom:
        axes[0][1].set_xlim(window, max(accuracies) + 1)
        axes[0][1].set_title("the same, zoomed on the most accurate rows")
    axes[0][-1].legend(loc="upper left", fontsize=7)
    _save(fig, path)
