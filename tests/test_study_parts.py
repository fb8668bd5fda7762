"""Privacy-study parts: mislabelled canaries, nearest-synthetic distances, the results table and document."""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest

from dcjax import study_report
from dcjax.privacy import canaries, nearest


# ---------------------------------------------------------------- canaries


def _labels(n: int = 50, k: int = 10) -> np.ndarray:
    return np.arange(n) % k


def test_mislabel_changes_exactly_the_canaries_to_other_classes():
    y = _labels()
    new, idx = canaries.mislabel(jax.random.PRNGKey(0), y, 7, 10)
    assert new.dtype == np.int32 and new.shape == y.shape
    assert idx.shape == (7,) and np.all(np.diff(idx) > 0)  # distinct and sorted
    changed = np.flatnonzero(new != y)
    np.testing.assert_array_equal(changed, idx)
    assert np.all((new >= 0) & (new < 10))
    assert y.tolist() == _labels().tolist()  # the input is not modified


def test_mislabel_is_deterministic_per_key():
    y = _labels()
    a = canaries.mislabel(jax.random.PRNGKey(1), y, 10, 10)
    b = canaries.mislabel(jax.random.PRNGKey(1), y, 10, 10)
    c = canaries.mislabel(jax.random.PRNGKey(2), y, 10, 10)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1]) or not np.array_equal(a[0], c[0])


def test_mislabel_zero_and_all():
    y = _labels(12, 2)
    new, idx = canaries.mislabel(jax.random.PRNGKey(0), y, 0, 2)
    np.testing.assert_array_equal(new, y)
    assert idx.size == 0
    new, idx = canaries.mislabel(jax.random.PRNGKey(0), y, 12, 2)
    # With two classes the only wrong label is the other one.
    np.testing.assert_array_equal(new, 1 - y)
    np.testing.assert_array_equal(idx, np.arange(12))


@pytest.mark.parametrize("labels, num, k, match", [
    (np.arange(5), -1, 10, "num_canaries"),
    (np.arange(5), 6, 10, "num_canaries"),
    (np.zeros(5, np.int32), 1, 1, "num_classes"),
    (np.arange(5), 1, 3, "labels"),
    (np.zeros(5, np.float32), 1, 3, "labels"),
])
def test_mislabel_errors(labels, num, k, match):
    with pytest.raises(ValueError, match=match):
        canaries.mislabel(jax.random.PRNGKey(0), labels, num, k)


# ---------------------------------------------------------------- nearest


def _images(key: int, n: int) -> np.ndarray:
    return np.array(jax.random.normal(jax.random.PRNGKey(key), (n, 4, 3, 2)))  # writable copy


def test_nearest_distances_match_brute_force_and_padding():
    syn, pool = _images(0, 6), _images(1, 11)
    pool[3] = syn[4]  # a pool image that was released verbatim
    brute = np.sqrt(((pool.reshape(11, 1, -1).astype(np.float64)
                      - syn.reshape(1, 6, -1)) ** 2).sum(-1)).min(1)
    for batch_size in (4, 11, 1024):  # 4 pads the last batch
        got = nearest.nearest_distances(syn, pool, batch_size=batch_size)
        assert got.dtype == np.float64 and got.shape == (11,)
        np.testing.assert_allclose(got, brute, rtol=1e-5, atol=1e-5)
        assert got[3] == 0.0


def test_nearest_distances_is_zero_for_synthetic_images():
    syn = _images(2, 5)
    np.testing.assert_array_equal(nearest.nearest_distances(syn, syn[::-1], batch_size=2), np.zeros(5))


def test_nearest_distances_errors():
    with pytest.raises(ValueError, match="pool"):
        nearest.nearest_distances(_images(0, 2), _images(1, 2)[..., :1])
    with pytest.raises(ValueError, match="synthetic"):
        nearest.nearest_distances(_images(0, 2)[0], _images(1, 2))
    with pytest.raises(ValueError, match="batch_size"):
        nearest.nearest_distances(_images(0, 2), _images(1, 2), batch_size=0)


def test_nearest_distance_scores_shape_and_sign():
    sets = np.stack([_images(3, 4), _images(4, 4)])
    pool = _images(5, 7)
    pool[0] = sets[1, 2]
    scores = nearest.nearest_distance_scores(sets, pool)
    assert scores.shape == (2, 7) and scores.dtype == np.float64
    assert np.all(scores <= 0)
    np.testing.assert_allclose(scores[0], -nearest.nearest_distances(sets[0], pool))
    assert scores[1, 0] == 0.0 and scores[1, 0] > scores[0, 0]  # the released copy is the "member" guess


# ---------------------------------------------------------------- study report


def _summary(auc: float, tpr: float) -> dict:
    out = {"fpr_floor": 1 / 500, "num_members": 500, "num_nonmembers": 500}
    for name, v in (("auc", auc), ("balanced_accuracy", 0.5), ("tpr_at_0", 0.0), ("tpr_at_0.001", tpr),
                    ("tpr_at_0.01", 2 * tpr)):
        out.update({name: v, f"{name}_ci_low": v / 2, f"{name}_ci_high": v * 1.5})
    return out


RESULTS = {
    "tier": "cpu", "command": "python experiments/privacy_study.py --flagfile=cpu.flags",
    "machine": "2 cores, no accelerator", "wall_seconds": 3725.4,
    "rows": [
        {"name": "original", "description": "all of the target's private data",
         "utility": {"test_accuracy_mean": 0.98, "test_accuracy_std": 0.002},
         "shokri_accuracy": {"mean": 0.51, "std": 0.01},
         "attacks": {"loss": {"all": _summary(0.512, 0.002)},
                     "lira_online_fixed_var": {"all": _summary(0.6, 0.012), "used": {"skipped": "empty slice"},
                                               "canaries": _summary(0.9, 0.3)}},
         "nearest": None},
        {"name": "dc_ipc10", "description": "DC condensation, 10 images per class",
         "utility": {"test_accuracy_mean": 0.9, "test_accuracy_std": 0.01},
         "attacks": {"lira_online_fixed_var": {"all": _summary(0.55, 0.004), "used": _summary(0.7, 0.05)}},
         "nearest": {"all": _summary(0.5234, 0.0)}},
    ],
}


def test_markdown_table_cells():
    table = study_report.markdown_table(RESULTS)
    lines = table.strip().split("\n")
    assert len(lines) == 2 + 2  # header, separator, one line per row
    original = [c.strip() for c in lines[2].strip("|").split("|")]
    dc = [c.strip() for c in lines[3].strip("|").split("|")]
    assert len(original) == len(dc) == len(study_report.COLUMNS)
    assert original == ["original", "98.00 +- 0.20", "51.00 +- 1.00", "0.512", "0.600", "1.20 [0.60, 1.80]",
                        "2.40 [1.20, 3.60]", "–", "30.00 [15.00, 45.00]", "–"]
    assert dc == ["dc_ipc10", "90.00 +- 1.00", "–", "–", "0.550", "0.40 [0.20, 0.60]", "0.80 [0.40, 1.20]",
                  "5.00 [2.50, 7.50]", "–", "0.523"]


def test_markdown_table_survives_empty_rows():
    table = study_report.markdown_table({"rows": [{"name": "bare"}, {"name": "x", "attacks": None}]})
    assert table.count("–") == 2 * (len(study_report.COLUMNS) - 1)


def test_results_document_has_command_table_and_figures():
    figures = {"privacy vs accuracy": "figures/privacy_accuracy.png", "ROC": "figures/roc.png"}
    doc = study_report.results_document(RESULTS, figures)
    assert RESULTS["command"] in doc and RESULTS["machine"] in doc
    assert "1h 02m 05s" in doc
    assert study_report.markdown_table(RESULTS) in doc
    assert "![privacy vs accuracy](figures/privacy_accuracy.png)" in doc and "![ROC](figures/roc.png)" in doc
    assert "0.5" in doc and "## Conclusion" not in doc


def test_write_results_document_is_atomic_and_appends_conclusion(tmp_path):
    path = os.path.join(tmp_path, "RESULTS.md")
    study_report.write_results_document(path, RESULTS, {}, conclusion="LiRA beats chance.")
    assert os.listdir(tmp_path) == ["RESULTS.md"]  # no temp files left behind
    text = open(path).read()
    assert text.startswith(study_report.results_document(RESULTS, {}))
    assert text.rstrip().endswith("## Conclusion\n\nLiRA beats chance.")
    study_report.write_results_document(path, RESULTS, {})
    assert "## Conclusion" not in open(path).read()


def test_privacy_accuracy_figure_writes_png(tmp_path):
    path = os.path.join(tmp_path, "fig", "privacy_accuracy.png")
    study_report.privacy_accuracy_figure(path, RESULTS)
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(path) > 1000
    assert os.listdir(os.path.dirname(path)) == ["privacy_accuracy.png"]


def test_a_dp_sgd_row_shows_its_epsilon_and_noise_and_gets_a_legend_bullet():
    dp_row = {**RESULTS["rows"][0], "name": "dpsgd_eps4",
              "dp": {"epsilon": 4.0, "delta": 1e-5, "noise_multiplier": 2.8234, "l2_clip": 1.0}}
    results = {**RESULTS, "rows": RESULTS["rows"] + [dp_row]}
    lines = study_report.markdown_table(results).strip().split("\n")
    assert lines[2:4] == study_report.markdown_table(RESULTS).strip().split("\n")[2:4]  # Others unchanged.
    cells = [c.strip() for c in lines[4].strip("|").split("|")]
    assert cells[0] == "dpsgd_eps4 (ε=4, σ=2.82)" and cells[1:] == [
        c.strip() for c in lines[2].strip("|").split("|")][1:]
    doc = study_report.results_document(results, {})
    assert "**dpsgd_epsE (ε=E, σ=s)**" in doc and "δ=1e-05" in doc and "L2 norm 1," in doc
    assert "dpsgd_epsE" not in study_report.results_document(RESULTS, {})  # No DP row, no DP legend.
    dp_row["dp"]["lr"] = 0.05  # A DP-specific learning rate is named in the legend.
    assert "DP-SGD at learning rate 0.05:" in study_report.results_document(results, {})
