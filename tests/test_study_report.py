"""The study's generated tables, document and figure (dcjax.privacy.tables, dcjax.privacy.study_report)."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest

from dcjax import evaluation
from dcjax.privacy import results_schema, study_report, tables


def _summary(auc: float, tpr: float, low_fpr_resolvable: bool = True) -> dict:
    out = {"fpr_floor": 1 / 5000, "num_members": 500, "num_nonmembers": 5000}
    for name, v in (
        ("auc", auc),
        ("tpr_at_0.01", 2 * tpr),
        ("tpr_at_0.001", tpr),
        ("tpr_at_0.0001", tpr / 2 if low_fpr_resolvable else None),
    ):
        out.update(
            {name: v, f"{name}_ci_low": None if v is None else v / 2, f"{name}_ci_high": None if v is None else v * 1.5}
        )
    return out


def _pick(attack: str, tpr: float, samples, other: str | None = None) -> dict:
    """A cross-fitted headline (``headline.headline``'s keys); ``other`` chose in one of the four cells (and then
    0.01 % FPR is below the floor)."""
    cells = {"group0_half0": other or attack, "group0_half1": attack, "group1_half0": attack, "group1_half1": attack}
    out = {
        **_summary(0.6, tpr, low_fpr_resolvable=other is None),
        "attack": attack,
        "attack_by_cell": cells,
        "samples": list(samples),
    }
    out.update({"tpr_at_0.001_ci_examples": [tpr / 2, tpr], "tpr_at_0.001_ci_two_way": [tpr / 3, tpr * 1.5]})
    return out


def _null(excluded: int) -> dict:
    return {"draws": 20, "excluded": excluded, "allowed": 4, "passed": excluded <= 4}


def _row(name: str, description: str, headline: dict, **fields) -> dict:
    """A complete results row (``results_schema.STUDY_ROW``); unless ``fields`` say otherwise: 90 +- 1 % accurate,
    no Shokri inputs, no canaries, the headline attacks' own natural summaries and audits, null test 0/20."""
    picks = [p for p in headline.values() if p]
    row = {
        "name": name,
        "description": description,
        "utility": {"test_accuracy_mean": 0.9, "test_accuracy_std": 0.01, "test_accuracy": [0.89, 0.91]},
        "shokri_accuracy": None,
        "natural": {p["attack"]: _summary(0.55, 0.004) for p in picks},
        "headline": headline,
        "null_test": _null(0),
        "canary_detection": {},
        "empirical_epsilon": {p["attack"]: {"natural": {"epsilon_lower_bound": 0.0}} for p in picks},
        "roc_headline": {"fpr": [0.001, 1.0], "tpr": [0.002, 1.0]} if headline["model"] else None,
    }
    return {**row, **fields}


RESULTS = {
    "tier": "cpu",
    "command": "python experiments/privacy_study.py --flagfile=cpu.flags",
    "report_command": "python experiments/privacy_study.py --report_only --workdir=docs/x",
    "machine": "2 cores, no accelerator",
    "wall_seconds": 3725.4,
    "rows": [
        _row(
            "original",
            "all of the target's private data",
            {"model": _pick("rmia_online", 0.012, np.linspace(0.010, 0.014, 11)), "release": None},
            utility={"test_accuracy_mean": 0.98, "test_accuracy_std": 0.002, "test_accuracy": [0.978, 0.982]},
            shokri_accuracy={"mean": 0.51, "std": 0.01},
            natural={"loss": _summary(0.512, 0.002), "rmia_online": _summary(0.6, 0.012)},
            null_test=_null(1),
            canary_detection={
                "rmia_online": {
                    "detected": 7,
                    "members": 80,
                    "false_positives": 1,
                    "nonmembers": 80,
                    "threshold": 1.0,
                    "fpr": 0.001,
                }
            },
            empirical_epsilon={
                "rmia_online": {"natural": {"epsilon_lower_bound": 0.25}, "canaries": {"epsilon_lower_bound": 0.0}}
            },
        ),
        _row(
            "subset",
            "a random 10 per class",
            {"model": _pick("lira_recipe_online", 0.004, np.linspace(0.002, 0.006, 11), other="loss"), "release": None},
            natural={"lira_recipe_online": _summary(0.55, 0.004, low_fpr_resolvable=False)},
            null_test=_null(6),
        ),
        _row(
            "dc_real",
            "DC, real init",
            {
                "model": _pick("lira_offline", 0.003, np.linspace(0.001, 0.005, 11)),
                "release": _pick("nearest_synthetic", 0.5, np.full(11, 0.5)),
            },
            utility={"test_accuracy_mean": 0.93, "test_accuracy_std": 0.01, "test_accuracy": [0.92, 0.94]},
            natural={"lira_offline": _summary(0.53, 0.003)},
            null_test=_null(1),
        ),
    ],
}


def _cells(table: str, line: int) -> list[str]:
    return [c.strip() for c in table.strip().split("\n")[line].strip("|").split("|")]


def test_headline_table_names_the_cross_fitted_attack_and_its_null_test():
    table = tables.markdown_table(RESULTS)
    original, subset, dc = (_cells(table, i) for i in (2, 3, 4))
    assert len(original) == len(tables.COLUMNS)
    assert original == [
        "original",
        "98.00 +- 0.20",
        "rmia_online",
        "1.20 [0.60, 1.80]",
        "0.600 [0.300, 0.900]",
        "2.40 [1.20, 3.60]",
        "0.60 [0.30, 0.90]",
        "1/20 (allowed ≤ 4)",
        "51.00 +- 1.00",
        "7/80 (non-members: 1/80)",
        "0.25 / 0.00",
        "–",
        "–",
    ]
    # Cells that chose differently are all named; 0.01 % FPR is unresolvable; a failed null test says so.
    assert subset[2] == "loss (1/4 cells), lira_recipe_online (3/4 cells)"
    assert subset[6] == "below floor" and subset[7] == "6/20 (allowed ≤ 4) FAILED"
    assert dc[-1] == "50.00 [25.00, 75.00] (nearest_synthetic)"  # The release headline, separately.


def test_the_short_table_keeps_only_target_accuracy_headline_and_null_test():
    table = tables.short_table(RESULTS)
    assert table.count("\n") == 2 + len(RESULTS["rows"])
    original, subset = _cells(table, 2), _cells(table, 3)
    # The same cells as the full table's, so the README's short answer cannot disagree with RESULTS.md.
    full = _cells(tables.markdown_table(RESULTS), 3)
    assert original == ["original", "98.00 +- 0.20", "1.20 [0.60, 1.80]", "1/20 (allowed ≤ 4)"]
    assert subset == [full[0], full[1], full[3], full[7]]
    bare = _row("bare", "tiny pool", {"model": None, "release": None})  # No headline: its cell alone is a dash.
    assert _cells(tables.short_table({"rows": [bare]}), 2) == ["bare", "90.00 +- 1.00", "–", "0/20 (allowed ≤ 4)"]


def test_the_short_table_keeps_the_first_and_last_point_of_each_series():
    point = lambda name, series: {**RESULTS["rows"][1], "name": name, "row": series}  # noqa: E731
    rows = [RESULTS["rows"][0], point("a_it0", "a"), point("b_ep1", "b"), point("a_it5", "a"), point("a_it9", "a")]
    rows += [point("b_ep2", "b"), point("b_ep3", "b"), point("c_it1", "c"), RESULTS["rows"][1]]
    table = tables.short_table({"rows": rows})
    assert table.count("\n") == 2 + 7
    names = [_cells(table, 2 + i)[0] for i in range(7)]
    assert names == ["original", "a_it0", "b_ep1", "a_it9", "b_ep3", "c_it1", "subset"]


def test_a_row_without_headlines_shokri_canaries_or_dp_renders_those_cells_as_dashes():
    bare = _row("bare", "tiny pool", {"model": None, "release": None}, natural={"loss": {"skipped": "no members"}})
    cells = _cells(tables.markdown_table({"rows": [bare]}), 2)
    assert cells == ["bare", "90.00 +- 1.00"] + ["–"] * 5 + ["0/20 (allowed ≤ 4)"] + ["–"] * 5
    assert _cells(tables.attacks_table({"rows": [bare]}), 2) == ["bare", "loss"] + ["–"] * 4  # A skipped slice.
    assert study_report.contrasts_table({"rows": [bare, {**bare, "name": "subset"}]}).count("\n") == 2


def test_a_row_missing_a_required_field_is_refused_naming_it():
    for name in ("utility", "null_test", "canary_detection", "headline"):
        row = {k: v for k, v in RESULTS["rows"][1].items() if k != name}
        with pytest.raises(results_schema.SchemaError, match=re.escape(f"rows[0] (subset).{name}: missing")):
            tables.markdown_table({"rows": [row]})
    with pytest.raises(results_schema.SchemaError, match="rows: missing"):
        tables.short_table({})
    with pytest.raises(results_schema.SchemaError, match=re.escape("study results: machine: missing")):
        study_report.results_document({k: v for k, v in RESULTS.items() if k != "machine"}, {})


def test_contrasts_are_paired_differences_adjusted_as_a_family():
    pairs = [(a["name"], b["name"]) for a, b in study_report.contrasts(RESULTS)]
    assert pairs == [("original", "subset"), ("dc_real", "subset"), ("dc_real", "original")]  # Each pair once.
    family = study_report.contrast_family(RESULTS)
    assert [f["family_size"] for f in family] == [3] * 3
    assert all(f["p_adjusted"] >= f["p_raw"] for f in family)
    cells = _cells(study_report.contrasts_table(RESULTS), 2)
    # original - subset: every paired sample differs by exactly 0.8 points.
    assert cells[0] == "original − subset" and cells[1] == "0.80 [0.80, 0.80]"
    assert float(cells[3]) <= 1 / 11 and float(cells[4]) <= 1 / 11  # The floor of 10 draws: 1 / (1 + 10).


def test_the_two_bootstraps_are_shown_side_by_side():
    doc = study_report.results_document(RESULTS, {})
    assert "| original | 1.20 [0.60, 1.80] | 1.20 [0.60, 1.20] | 1.20 [0.40, 1.80] |" in doc


def test_every_attack_table_lists_each_rows_attacks():
    table = tables.attacks_table(RESULTS)
    lines = table.strip().split("\n")[2:]
    assert len(lines) == 4  # 2 + 1 + 1 attacks.
    # In the order a run computes them (RMIA before LOSS), not the row's dict order (results.json sorts its keys).
    assert _cells(table, 2)[:2] == ["original", "rmia_online"]
    assert _cells(table, 3)[:3] == ["original", "loss", "0.512 [0.256, 0.768]"]
    assert tables.in_order({"zeta": 1, "loss": 2, "alpha": 3, "lira_online": 4}) == [
        ("lira_online", 4),
        ("loss", 2),
        ("zeta", 1),  # Names no run computes: last, as given.
        ("alpha", 3),
    ]


def test_results_document_has_commands_tables_rows_and_figures():
    figures = {"privacy vs accuracy": "privacy_accuracy.png"}
    doc = study_report.results_document(RESULTS, figures)
    for text in (
        RESULTS["command"],
        RESULTS["report_command"],
        RESULTS["machine"],
        "1h 02m 05s",
        tables.markdown_table(RESULTS),
        study_report.contrasts_table(RESULTS),
        "- **subset**: a random 10 per class",
        "![privacy vs accuracy](privacy_accuracy.png)",
    ):
        assert text in doc, text
    assert "## Conclusion" not in doc


def test_write_results_document_is_atomic_and_appends_conclusion(tmp_path):
    path = os.path.join(tmp_path, "RESULTS.md")
    study_report.write_results_document(path, RESULTS, {}, conclusion="RMIA beats chance.")
    assert os.listdir(tmp_path) == ["RESULTS.md"]  # no temp files left behind
    text = open(path).read()
    assert text.startswith(study_report.results_document(RESULTS, {}))
    assert text.rstrip().endswith("## Conclusion\n\nRMIA beats chance.")


def test_a_dp_sgd_row_shows_its_formal_epsilons():
    dp_row = {
        **RESULTS["rows"][0],
        "name": "dpsgd_eps4",
        "dp": {"epsilon": 4.0, "noise_multiplier": 2.8234, "epsilon_pld": 3.99, "epsilon_rdp": 4.61},
    }
    results = {**RESULTS, "rows": RESULTS["rows"] + [dp_row]}
    cells = _cells(tables.markdown_table(results), 5)
    assert cells[0] == "dpsgd_eps4 (ε=4, σ=2.82)" and cells[11] == "3.99 / 4.61"


def test_privacy_accuracy_figure_writes_png(tmp_path):
    path = os.path.join(tmp_path, "fig", "privacy_accuracy.png")
    study_report.privacy_accuracy_figure(path, RESULTS)
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(path) > 1000
    assert os.listdir(os.path.dirname(path)) == ["privacy_accuracy.png"]


def test_the_document_sums_the_null_test_over_rows():
    doc = study_report.results_document(RESULTS, {})
    # Rows: 1, 6 and 1 of 20 exclusions; 8 of 60 is above Binomial(60, 5%)'s 99th percentile (7).
    assert "Null test over all 3 rows: 8 of 60 headline intervals excluded chance" in doc and "FAILED." in doc


def test_the_posters_protocol_is_a_section_beside_the_posters_numbers_only_when_measured():
    assert study_report.poster_section(RESULTS) == "" and "poster's protocol" not in study_report.results_document(
        RESULTS, {}
    )
    mode = "bank, leave-one-out, 2000 examples, cross-fitted"
    measured = {
        **RESULTS,
        "poster_protocol": {
            "subset": {"mean": 0.49, "std": 0.01, "per_target": [0.48, 0.5], "trained_on": "original", "mode": mode},
            "dc_real": {"mean": 0.43, "std": 0.02, "per_target": [0.41, 0.45], "trained_on": "original", "mode": mode},
        },
    }
    section = study_report.poster_section(measured)
    assert section.startswith("## The poster's protocol") and mode in section and "~62 %" in section
    table = section[section.index("| target") :]
    rows = [_cells(table, i) for i in (2, 3, 4)]
    assert rows[0] == ["original", "its own row (leave one out)", "51.00 +- 1.00", "~62"]
    assert rows[1] == ["subset", "the original row", "49.00 +- 1.00", "–"]  # The poster had no subset row.
    assert rows[2] == ["dc_real", "the original row", "43.00 +- 2.00", "~41"]
    doc = study_report.results_document(measured, {})
    assert section in doc and doc.replace(section + "\n", "") == study_report.results_document(RESULTS, {})


def test_what_the_tier_can_resolve_is_the_paired_se_times_the_power_factor():
    from dcjax.privacy import power

    rng = np.random.default_rng(0)
    shared = rng.normal(0.01, 0.002, 50)
    a, b = shared + rng.normal(0, 0.001, 50), shared + rng.normal(0.002, 0.001, 50)
    rows = [
        _row(name, "", {"model": _pick("loss", tpr, s), "release": None})
        for name, tpr, s in [
            ("original", 0.01, a),
            ("subset", 0.012, b),
        ]
    ]
    text = study_report.resolution_section({"rows": rows})
    se = np.std(a - b, ddof=1)  # Every row is contrasted with the subset baseline: original - subset.
    assert f"| original - subset | {100 * se:.3f} | {100 * power.detectable_difference(se, 1):.3f} |" in text
    assert 0.1 < 100 * se < 0.2  # The shared part cancels: sqrt(2) x 0.1 points, not the rows' own spread.
    assert "## What this tier can resolve" in study_report.results_document(RESULTS, {})
    assert study_report.resolution_section({"rows": rows[:1]}) == ""


def test_a_rows_ladder_points_form_one_series_in_the_frontier_figure():
    rows = [{**RESULTS["rows"][1], "name": f"dm_real_it{t}", "row": "dm_real", "iteration": t} for t in (10, 20)] + [
        RESULTS["rows"][0]
    ]
    groups = [(p[0], p[1]) for p in study_report._figure_points({"rows": rows})]
    assert groups == [("dm_real_it10", "dm_real"), ("dm_real_it20", "dm_real"), ("original", "original")]


def test_the_dp_sgd_rows_form_one_series_in_epsilon_order_and_a_wide_spread_gets_a_zoomed_panel(tmp_path):
    privacy = {"noise_multiplier": 1.0, "epsilon_pld": 1.0, "epsilon_rdp": 1.0}
    dp = [{**RESULTS["rows"][1], "name": f"dpsgd_eps{e}", "dp": {**privacy, "epsilon": float(e)}} for e in (8, 1)]
    low = {**RESULTS["rows"][0], "name": "far", "utility": {**RESULTS["rows"][0]["utility"], "test_accuracy_mean": 0.5}}
    rows = [RESULTS["rows"][0]] + dp + [low]
    groups = [(p[0], p[1]) for p in study_report._figure_points({"rows": rows})]
    series = study_report.DP_SERIES
    assert groups == [("original", "original"), ("dpsgd_eps1", series), ("dpsgd_eps8", series), ("far", "far")]
    wide, narrow = tmp_path / "wide.png", tmp_path / "narrow.png"
    study_report.privacy_accuracy_figure(str(wide), {**RESULTS, "rows": rows})
    study_report.privacy_accuracy_figure(str(narrow), {**RESULTS, "rows": rows[:3]})
    width = lambda path: int.from_bytes(path.read_bytes()[16:20], "big")  # noqa: E731  # The PNG header's width.
    assert width(wide) > 1.5 * width(narrow)  # Two panels side by side.


def test_condensed_rows_show_their_ladder_movement_and_whether_the_last_doubling_gained():
    def point(t: int, accuracy: float, per_target=None) -> dict:
        movement = {
            "synthetic_to_nearest_real": {"median": 4.0},
            "real_to_nearest_real": {"median": 8.0},
            "median_ratio": 0.5,
        }
        per_target = per_target or [accuracy - 0.001, accuracy + 0.001]
        utility = {"test_accuracy_mean": accuracy, "test_accuracy_std": 0.001, "test_accuracy": per_target}
        headline = {"model": None, "release": None}
        return _row(f"dm_real_it{t}", "", headline, row="dm_real", iteration=t, utility=utility, movement=movement)

    converged = study_report.condensation_section({"rows": [RESULTS["rows"][0], point(50, 0.9), point(100, 0.902)]})
    assert "### dm_real" in converged and "| 100 | 90.20 +- 0.10 |" in converged
    assert "4.00 / 8.00 (0.50)" in converged and "iterations 50 -> 100: +0.20 accuracy points (converged" in converged
    gaining = study_report.condensation_section({"rows": [point(50, 0.9), point(100, 0.91)]})
    assert "+1.00 accuracy points (still gaining" in gaining
    assert "not assessed" in study_report.condensation_section({"rows": [point(30, 0.9), point(100, 0.91)]})
    assert study_report.condensation_section({"rows": RESULTS["rows"][:2]}) == ""
    assert "Gain over the initial set" not in converged  # No iteration-0 point: nothing to pair with.


def test_a_ladder_from_iteration_0_reports_its_gain_over_the_initial_set_paired_by_pipeline():
    def point(t: int, per_target: list[float]) -> dict:
        utility = {
            "test_accuracy_mean": float(np.mean(per_target)),
            "test_accuracy_std": 0.0,
            "test_accuracy": per_target,
        }
        return _row(f"dm_real_it{t}", "", {"model": None, "release": None}, row="dm_real", iteration=t, utility=utility)

    init = [0.90, 0.92, 0.94, 0.96]
    cases = {  # Pairing removes the targets' spread: +1 point each is a sure gain though the spreads overlap.
        "it beats its initial set": [a + 0.01 for a in init],
        "it is worse than its initial set": [a - 0.01 for a in init],
        "does not beat its own initial set (a subset in disguise)": [0.91, 0.91, 0.95, 0.95],
    }
    for verdict, final in cases.items():
        text = study_report.condensation_section({"rows": [point(0, init), point(50, final), point(100, final)]})
        gain = evaluation.paired_difference(init, final)
        assert f"iterations 0 -> 100: {gain.mean:+.2f} test-accuracy points [{gain.low:+.2f}, {gain.high:+.2f}]" in text
        assert verdict in text, text
    assert evaluation.paired_difference(init, cases["it beats its initial set"]).low == pytest.approx(1.0)
