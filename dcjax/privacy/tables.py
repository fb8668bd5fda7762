"""Markdown tables of attack results, shared by one attack run's RESULTS.md (``run_document``) and the study's.

A table's rows are results rows (``results_schema.ROW``); one attack run's results become one such row. Every
table checks its rows first (``results_schema.check_rows``: a missing field raises, naming it); an entry renders
as an en dash (``DASH``) only where the schema declares it optional or nullable (not applicable: a row without
DP-SGD has no formal epsilon), or where a number is undefined (NaN). Here, below both reports, so that the attack
run (``attack_run``) does not import the study's report.
"""

from __future__ import annotations

import math

from dcjax.privacy import attacks, results_schema

DASH = "–"  # En dash: a not applicable (optional, null or skipped) entry.
HEADLINE = results_schema.HEADLINE

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
    """tree[path[0]][path[1]]... or None if any step is missing, null, or a skipped slice: for the fields that
    ``results_schema`` declares optional or nullable (the required ones are indexed)."""
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
    """A summary's metric with its CI (``results_schema.SLICE`` or ``HEADLINE_PICK``); "below floor" when the FPR
    cannot be resolved; a dash for no summary (null headline) or a skipped slice."""
    if summary is None or "skipped" in summary:
        return DASH
    if name.startswith("tpr_at_") and summary[name] is None:
        return "below floor"
    return with_ci(summary[name], summary[f"{name}_ci_low"], summary[f"{name}_ci_high"], scale, digits)


def row_label(row: dict) -> str:
    """The row's name; a DP-SGD row adds its epsilon and noise multiplier."""
    name = row["name"]
    eps, noise = number(get(row, "dp", "epsilon")), number(get(row, "dp", "noise_multiplier"))
    if eps is not None and noise is not None:
        name += f" (ε={eps:g}, σ={noise:.2f})"
    return name.replace("|", "\\|")


def _canaries(row: dict, attack: str | None) -> str:
    """The headline attack's canaries flagged; a dash without a headline or without canaries."""
    c = row["canary_detection"].get(attack) if attack else None
    if c is None:
        return DASH
    return f"{c['detected']}/{c['members']} (non-members: {c['false_positives']}/{c['nonmembers']})"


def _epsilons(row: dict, attack: str | None) -> str:
    """The headline attack's epsilon lower bounds, natural / canaries (a dash without canaries)."""
    if attack is None:
        return DASH
    audits = row["empirical_epsilon"][attack]
    parts = [number(get(audits, part, "epsilon_lower_bound")) for part in ("natural", "canaries")]
    return " / ".join(DASH if p is None else f"{p:.2f}" for p in parts)


def _dp_epsilon(row: dict) -> str:
    pld, rdp = number(get(row, "dp", "epsilon_pld")), number(get(row, "dp", "epsilon_rdp"))
    if pld is None and rdp is None:
        return DASH
    return f"{DASH if pld is None else f'{pld:.2f}'} / {DASH if rdp is None else f'{rdp:.2f}'}"


def _release(row: dict) -> str:
    pick = row["headline"]["release"]
    if pick is None:
        return DASH
    return f"{metric(pick, HEADLINE)} ({_attack_name(pick)})"


def _attack_name(pick: dict) -> str:
    """The headline's attack; "a (3/4 cells), b (1/4)" when the cells chose differently."""
    by_cell = list(pick["attack_by_cell"].values())
    if len(set(by_cell)) <= 1:
        return pick["attack"]
    counts = {a: by_cell.count(a) for a in dict.fromkeys(by_cell)}
    return ", ".join(f"{a} ({c}/{len(by_cell)} cells)" for a, c in counts.items())


def _null(row: dict) -> str:
    test = row["null_test"]
    verdict = "" if test["passed"] else " FAILED"
    return f"{test['excluded']}/{test['draws']} (allowed ≤ {test['allowed']}){verdict}"


def _accuracy(row: dict) -> str:
    return pct_mean_std(row["utility"]["test_accuracy_mean"], row["utility"]["test_accuracy_std"])


def _row_cells(row: dict) -> list[str]:
    pick = row["headline"]["model"]
    attack = pick["attack"] if pick else None
    return [
        row_label(row),
        _accuracy(row),
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
    results_schema.check_rows(results)
    return table(COLUMNS, [_row_cells(row) for row in results["rows"]])


SHORT_COLUMNS = ("target", "test accuracy (%)", "headline TPR@0.1% FPR (%) [95% CI]", "null test: CIs excluding chance")


def series_ends(rows: list[dict]) -> list[dict]:
    """``rows`` without the inner points of each frontier series (rows sharing a ``"row"``: a ladder, or DP-SGD's
    checkpoints): its first and last point stay, in their places; rows outside a series all stay."""
    last: dict = {}
    for i, row in enumerate(rows):
        if "row" in row:
            last.setdefault(row["row"], [i, i])[1] = i
    return [row for i, row in enumerate(rows) if "row" not in row or i in last[row["row"]]]


def short_table(results: dict) -> str:
    """The short answer (README's): per row its target, accuracy, cross-fitted headline and null test only; of a
    frontier series its first and last point only (RESULTS.md has every point)."""
    results_schema.check_rows(results)
    lines = [
        [row_label(row), _accuracy(row), metric(row["headline"]["model"], HEADLINE), _null(row)]
        for row in series_ends(results["rows"])
    ]
    return table(SHORT_COLUMNS, lines)


def in_order(by_attack: dict) -> list[tuple[str, dict]]:
    """The (attack, value) items in the order a run computes the attacks (``attacks.ORDER``), other names last in
    their own order: a run's results read back from results.json (keys sorted) render as the run wrote them."""
    rank = {name: i for i, name in enumerate(attacks.ORDER)}
    return sorted(by_attack.items(), key=lambda item: rank.get(item[0], len(rank)))


def attacks_table(results: dict) -> str:
    """Every attack of every row on the natural slice: AUC and TPR at 1 / 0.1 / 0.01 % FPR, with CIs."""
    header = ("target", "attack", "AUC [95% CI]", "TPR@1% FPR (%)", "TPR@0.1% FPR (%)", "TPR@0.01% FPR (%)")
    results_schema.check_rows(results)
    lines = []
    for row in results["rows"]:
        for attack, summary in in_order(row["natural"]):
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
    results_schema.check_run(results)
    row = {
        "name": results["config"]["recipe"]["kind"],
        "utility": results["utility"],
        "shokri_accuracy": results["shokri_accuracy"],
        "headline": results["headline"],
        "null_test": results["null_test"],
        "natural": {a: s["natural"] for a, s in results["attacks"].items()},
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
    results_schema.check_rows(results)
    lines = []
    for row in results["rows"]:
        pick = row["headline"]["model"]
        if pick is None:
            continue
        cis = [pick[f"{HEADLINE}_ci_{b}"] for b in ("examples", "two_way")]
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
