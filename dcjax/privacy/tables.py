"""Markdown tables of attack results, shared by one attack run's RESULTS.md (``run_document``) and the study's.

A table's rows are results rows of the study's schema (``study_report``'s docstring); one attack run's results
become one such row. Missing entries render as an en dash (``DASH``). Here, below both reports, so that the
attack run (``attack_run``) does not import the study's report.
"""

from __future__ import annotations

import math

DASH = "–"  # En dash: a missing or skipped entry.
HEADLINE = "tpr_at_0.001"

COLUMNS = (
    "target",
    "test accuracy (%)",
    "headline model attack (cross-fitted)",
    "TPR@0.1% FPR (%) [95% CI]",
    "AUC [95% CI]",
    "TPR@1% FPR (%)",
    "TPR@0.01% FPR (%)",
    "null test: CIs excluding chance",
    "Shokri accuracy (%)",
    "canaries flagged at the natural 0.1%-FPR threshold",
    "ε lower bound, natural / canaries",
    "DP-SGD ε (PLD / RDP)",
    "released set: headline TPR@0.1% (%)",
)


def get(tree, *path):
    """tree[path[0]][path[1]]... or None if any step is missing, null, or a skipped slice."""
    for step in path:
        if not isinstance(tree, dict) or tree.get(step) is None:
            return None
        tree = tree[step]
    if isinstance(tree, dict) and "skipped" in tree:
        return None
    return tree


def number(value) -> float | None:
    """A finite float, or None for anything else (missing, null, NaN, a string)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def pct_mean_std(mean, std) -> str:
    m, s = number(mean), number(std)
    if m is None:
        return DASH
    return f"{100 * m:.2f}" if s is None else f"{100 * m:.2f} +- {100 * s:.2f}"


def with_ci(value, low, high, scale: float, digits: int) -> str:
    v, lo, hi = number(value), number(low), number(high)
    if v is None:
        return DASH
    text = f"{scale * v:.{digits}f}"
    return text if lo is None or hi is None else f"{text} [{scale * lo:.{digits}f}, {scale * hi:.{digits}f}]"


def metric(summary, name: str, scale: float = 100, digits: int = 2) -> str:
    """A summary's metric with its CI; "below floor" when the FPR cannot be resolved."""
    if summary is None:
        return DASH
    if name.startswith("tpr_at_") and name in summary and summary[name] is None:
        return "below floor"
    return with_ci(get(summary, name), get(summary, f"{name}_ci_low"), get(summary, f"{name}_ci_high"), scale, digits)


def row_label(row: dict) -> str:
    """The row's name; a DP-SGD row adds its epsilon and noise multiplier."""
    name = str(row.get("name", DASH))
    eps, noise = number(get(row, "dp", "epsilon")), number(get(row, "dp", "noise_multiplier"))
    if eps is not None and noise is not None:
        name += f" (ε={eps:g}, σ={noise:.2f})"
    return name.replace("|", "\\|")


def _canaries(row: dict, attack: str | None) -> str:
    c = get(row, "canary_detection", attack) if attack else None
    if c is None:
        return DASH
    return f"{c['detected']}/{c['members']} (non-members: {c['false_positives']}/{c['nonmembers']})"


def _epsilons(row: dict, attack: str | None) -> str:
    audits = get(row, "empirical_epsilon", attack) if attack else None
    if audits is None:
        return DASH
    parts = [number(get(audits, part, "epsilon_lower_bound")) for part in ("natural", "canaries")]
    return " / ".join(DASH if p is None else f"{p:.2f}" for p in parts)


def _dp_epsilon(row: dict) -> str:
    pld, rdp = number(get(row, "dp", "epsilon_pld")), number(get(row, "dp", "epsilon_rdp"))
    if pld is None and rdp is None:
        return DASH
    return f"{DASH if pld is None else f'{pld:.2f}'} / {DASH if rdp is None else f'{rdp:.2f}'}"


def _release(row: dict) -> str:
    pick = get(row, "headline", "release")
    if pick is None:
        return DASH
    return f"{metric(pick, HEADLINE)} ({_attack_name(pick)})"


def _attack_name(pick: dict) -> str:
    """The headline's attack; "a (3/4 cells), b (1/4)" when the cells chose differently."""
    by_cell = list((pick.get("attack_by_cell") or {}).values())
    if len(set(by_cell)) <= 1:
        return str(pick.get("attack", DASH))
    counts = {a: by_cell.count(a) for a in dict.fromkeys(by_cell)}
    return ", ".join(f"{a} ({c}/{len(by_cell)} cells)" for a, c in counts.items())


def _null(row: dict) -> str:
    test = get(row, "null_test")
    if test is None:
        return DASH
    verdict = "" if test["passed"] else " FAILED"
    return f"{test['excluded']}/{test['draws']} (allowed ≤ {test['allowed']}){verdict}"


def _row_cells(row: dict) -> list[str]:
    pick = get(row, "headline", "model")
    attack = pick["attack"] if pick else None
    return [
        row_label(row),
        pct_mean_std(get(row, "utility", "test_accuracy_mean"), get(row, "utility", "test_accuracy_std")),
        _attack_name(pick) if pick else DASH,
        metric(pick, HEADLINE),
        metric(pick, "auc", scale=1, digits=3),
        metric(pick, "tpr_at_0.01"),
        metric(pick, "tpr_at_0.0001"),
        _null(row),
        pct_mean_std(get(row, "shokri_accuracy", "mean"), get(row, "shokri_accuracy", "std")),
        _canaries(row, attack),
        _epsilons(row, attack),
        _dp_epsilon(row),
        _release(row),
    ]


def table(header, lines) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(cells) + " |" for cells in lines]
    return "\n".join(out) + "\n"


def markdown_table(results: dict) -> str:
    """The study's headline table: one line per target row (see ``COLUMNS``)."""
    return table(COLUMNS, [_row_cells(row) for row in results.get("rows") or []])


SHORT_COLUMNS = ("target", "test accuracy (%)", "headline TPR@0.1% FPR (%) [95% CI]", "null test: CIs excluding chance")


def short_table(results: dict) -> str:
    """The short answer (README's): per row its target, accuracy, cross-fitted headline and null test only."""
    lines = [
        [
            row_label(row),
            pct_mean_std(get(row, "utility", "test_accuracy_mean"), get(row, "utility", "test_accuracy_std")),
            metric(get(row, "headline", "model"), HEADLINE),
            _null(row),
        ]
        for row in results.get("rows") or []
    ]
    return table(SHORT_COLUMNS, lines)


def attacks_table(results: dict) -> str:
    """Every attack of every row on the natural slice: AUC and TPR at 1 / 0.1 / 0.01 % FPR, with CIs."""
    header = ("target", "attack", "AUC [95% CI]", "TPR@1% FPR (%)", "TPR@0.1% FPR (%)", "TPR@0.01% FPR (%)")
    lines = []
    for row in results.get("rows") or []:
        for attack, summary in (row.get("natural") or {}).items():
            lines.append(
                [
                    row_label(row),
                    attack,
                    metric(summary, "auc", 1, 3),
                    metric(summary, "tpr_at_0.01"),
                    metric(summary, HEADLINE),
                    metric(summary, "tpr_at_0.0001"),
                ]
            )
    return table(header, lines)


def run_document(results: dict, command: str) -> str:
    """RESULTS.md of one attack run: utility, the headline attacks and every attack's natural-slice numbers."""
    row = {
        "name": results["config"]["recipe"]["kind"],
        "utility": results["utility"],
        "shokri_accuracy": results["shokri_accuracy"],
        "headline": results["headline"],
        "null_test": results.get("null_test"),
        "natural": {a: s.get("natural") for a, s in results["attacks"].items()},
        "canary_detection": results["canary_detection"],
        "empirical_epsilon": results["empirical_epsilon"],
    }
    u = results["utility"]
    return "\n".join(
        [
            f"# Attack run: {row['name']} recipe\n",
            "Regenerate from the export in this directory:\n\n```\n" + command + "\n```\n",
            f"Targets: test accuracy {pct_mean_std(u['test_accuracy_mean'], u['test_accuracy_std'])} %, "
            f"accuracy on members / non-members {100 * u['member_accuracy']:.1f} / "
            f"{100 * u['nonmember_accuracy']:.1f} %.\n",
            "## Headline (natural examples)\n\n" + markdown_table({"rows": [row]}),
            bootstraps_table({"rows": [row]}),
            "## Every attack, natural examples\n\n" + attacks_table({"rows": [row]}),
            LEGEND,
        ]
    )


def bootstraps_table(results: dict) -> str:
    """The headline's TPR@0.1% intervals from each bootstrap (examples only; examples and models)."""
    header = (
        "target",
        "TPR@0.1% FPR (%) [union, as reported]",
        "examples only [95% CI]",
        "examples and models [95% CI]",
    )
    lines = []
    for row in results.get("rows") or []:
        pick = get(row, "headline", "model")
        if pick is None:
            continue
        cis = [pick.get(f"{HEADLINE}_ci_{b}") or [None, None] for b in ("examples", "two_way")]
        lines.append(
            [row_label(row), metric(pick, HEADLINE)] + [with_ci(pick[HEADLINE], lo, hi, 100, 2) for lo, hi in cis]
        )
    intro = (
        "## The headline's intervals, by bootstrap\n\nThe table above reports the union of the two (the "
        "wider where they differ).\n\n"
    )
    return intro + table(header, lines)


LEGEND = """\
## How to read this

- **target**: the training-set recipe of the target models (one row each).
- **test accuracy**: utility on the held-out test set, mean +- std over the targets, in %.
- **headline model attack (cross-fitted)**: the candidates are every attack that sees only the target
  model's outputs (LiRA online/offline with per-example or fixed variance, RMIA online/offline,
  recipe-aware LiRA where the recipe copies some members' pixels, LOSS, confidence, Shokri), on the
  **natural** examples (every pool example except the injected canaries). The attack is chosen as an
  attacker could choose it, without the labels of the trials it is reported on: the targets are cut
  into two groups and the natural examples into two halves (by key), and the attack for one group on
  one half is the one with the highest TPR at 0.1% FPR (ties: TPR at 1% FPR, then AUC) on the OTHER
  group's trials on the OTHER half. The TPRs and AUC are the means over the four (group, half) cells
  of the chosen attack's values there; "below floor" means the FPR cannot be resolved with a cell's non-member trials.
  Where the cells chose differently, every choice is named. Chance TPR at x% FPR is x%. Every
  attack's own numbers are in the last table (those are not selection-free: do not pick the best).
- **Intervals of the headline**: the choice is redone in every bootstrap draw. Two bootstraps: over
  examples (the trials of an example are resampled together, because one image is easy or hard for
  every model; models fixed) and over examples and models (targets) independently; the table gives
  the union of the two 95% intervals (both are in "The headline's intervals, by bootstrap").
- **null test**: the headline rerun on 20 random balanced membership labellings independent of
  training (every attack rescored): how many of their 95% intervals exclude chance (0.1%). A correct
  interval does so in ~5% of draws; "allowed" is the 99th percentile of Binomial(20, 5%).
- **Shokri accuracy**: balanced accuracy of the Shokri et al. shadow-model attack on all trials
  (the poster's measure; chance 50%).
- **canaries flagged**: of the canary trials (mislabelled pool examples, planted outliers), how many
  member trials (and how many non-member trials) score above the threshold that flags 0.1% of the
  natural non-members, for the headline attack. This is TPR at a threshold set on natural data,
  not a TPR at 0.1% FPR among canaries.
- **ε lower bound**: an empirical lower bound on the (ε, δ = 1e-5) of the training pipeline implied
  by the headline attack, from Clopper-Pearson intervals (95%) on one trial per example (so that
  pooled trials of one example do not inflate it), threshold chosen on data disjoint from the
  evaluated trials (natural: a held-out half; canaries: the natural threshold). The models are shared
  between examples' trials, which this does not correct for.
- **DP-SGD ε**: the formal ε at δ of the DP-SGD rows (Poisson-sampled batches), from the PLD and RDP
  accountants.
- **released set**: the cross-fitted headline over the attacks on the released synthetic set itself
  (minus the distance to the nearest synthetic image, raw or calibrated against the shadows' sets);
  applies only when the synthetic set is published.
"""
