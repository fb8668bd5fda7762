"""The null test (dcjax.privacy.null): random labels, no signal, and the headline's intervals at chance."""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest

from dcjax import checkpoint
from dcjax.privacy import attack_data, attack_run, headline, masks, null

M, N, ATTACKS, DRAWS = 16, 1000, 8, 100


def test_null_masks_are_balanced_random_and_keep_the_used_rate():
    keep = masks.lira_keep_masks(jax.random.key(0), M, N)
    used = keep & (np.asarray(jax.random.uniform(jax.random.key(1), (M, N))) < 0.2)
    keep0, used0 = null.null_masks(jax.random.key(2), keep, used)
    assert (keep0.sum(0) == M // 2).all() and not np.array_equal(keep0, keep)
    assert not (used0 & ~keep0).any()
    np.testing.assert_allclose(used0.sum() / keep0.sum(), used.sum() / keep.sum(), atol=0.02)
    # Recipes whose used mask is keep itself (or empty) keep that shape.
    assert np.array_equal(null.null_masks(jax.random.key(2), keep, keep)[1], keep0)
    assert not null.null_masks(jax.random.key(2), keep, np.zeros_like(keep))[1].any()


def test_the_tolerance_is_the_binomial_99th_percentile():
    assert null.allowed_exclusions(20) == 4 and null.allowed_exclusions(180) == 16


def _no_signal_scores(keep: np.ndarray, used: np.ndarray, seed: int) -> dict:
    """ATTACKS noisy attacks with no signal: an example effect shared by every model, plus trial noise."""
    del keep, used  # No attack sees the labels: that is the point.
    rng = np.random.default_rng(seed)
    return {f"a{i}": 0.7 * rng.normal(size=(1, N)) + rng.normal(size=(M, N)) for i in range(ATTACKS)}


def _run(seed: int) -> dict:
    natural = np.ones(N, bool)
    natural[:20] = False
    split = headline.draw_split(jax.random.key(1), M, natural)
    res = headline.draw_resamples(jax.random.key(2), split, DRAWS)
    keep = masks.lira_keep_masks(jax.random.key(0), M, N)
    calls = iter(range(1000))
    score_fn = lambda k, u: _no_signal_scores(k, u, seed + next(calls))
    return null.null_test(score_fn, keep, keep, split, res, jax.random.key(3))


@pytest.mark.slow
def test_a_no_signal_export_passes_and_fails_once_the_selection_bias_is_back(monkeypatch):
    passed = _run(seed=10)
    assert passed["passed"] and passed["excluded"] <= passed["allowed"]
    assert np.mean(passed["tpr"]) < 0.003  # Around chance (0.1 %), not inflated.
    # The biased headline: each cell picks the attack that scores best on its own trials.
    monkeypatch.setattr(headline, "choose", _same_cell_choice)
    biased = _run(seed=10)
    assert not biased["passed"], biased["excluded"]


def _same_cell_choice(samples) -> np.ndarray:
    tpr = np.nan_to_num(np.stack([s[headline.CHOICE] for s in samples.values()]), nan=-1.0)
    return np.argmax(tpr, axis=0)


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STUDY = os.path.join(ROOT, "docs", "privacy_study_cpu")
SANITY = os.path.join(ROOT, "docs", "results", "attack_sanity_cpu")


def _committed_tests() -> dict[str, dict]:
    rows = checkpoint.read_json(os.path.join(STUDY, "results.json"))["rows"]
    tests = {row["name"]: row["null_test"] for row in rows}
    tests["attack_sanity_cpu"] = checkpoint.read_json(os.path.join(SANITY, "results.json"))["null_test"]
    return tests


def test_every_committed_row_passes_its_null_test():
    tests = _committed_tests()
    assert len(tests) == 10
    for name, test in tests.items():
        assert test["draws"] >= 20 and test["passed"] and test["excluded"] <= test["allowed"], name
    draws = sum(t["draws"] for t in tests.values())
    assert sum(t["excluded"] for t in tests.values()) <= null.allowed_exclusions(draws)


@pytest.mark.slow
def test_a_committed_rows_null_test_recomputes_from_its_export():
    """dc_real: the row with the most candidate attacks (recipe-aware LiRA too), where selection bias is largest."""
    recorded = _committed_tests()["dc_real"]
    _, results = attack_run.evaluate_export(attack_data.load(os.path.join(STUDY, "dc_real", attack_data.EXPORT)))
    test = results["null_test"]
    assert test["passed"] and test["draws"] == recorded["draws"]
    # Another CPU may round a near-tie the other way: a TPR moves by ~1 member trial of a cell, no more.
    np.testing.assert_allclose(test["tpr"], recorded["tpr"], atol=2e-4)
