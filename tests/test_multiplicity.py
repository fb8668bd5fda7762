"""The family adjustment of paired contrasts (dcjax.privacy.multiplicity.max_t)."""

from __future__ import annotations

import numpy as np
import pytest

from dcjax.privacy import multiplicity


def _families(num: int, size: int, draws: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Families under the global null: each point is N(0, 1) noise around 0, its draws N(point, 1)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(num):
        points = rng.normal(size=size)
        out.append((points[:, None] + rng.normal(size=(size, draws)), points))
    return out


def test_the_adjustment_controls_the_family_wise_error_where_raw_p_values_do_not():
    raw = adjusted = 0
    families = _families(300, 10, 200, seed=0)
    for draws, points in families:
        tests = multiplicity.max_t(draws, points)
        raw += any(t["p_raw"] < 0.05 for t in tests)
        adjusted += any(t["p_adjusted"] < 0.05 for t in tests)
    # 10 null contrasts read alone: ~40 % of families show a "finding"; adjusted: ~5 % (binomial sd ~1.3 %).
    assert raw / len(families) > 0.25
    assert adjusted / len(families) < 0.09


def test_a_real_difference_survives_and_adjusted_p_values_are_never_below_raw():
    rng = np.random.default_rng(1)
    points = np.r_[8.0, np.zeros(5)]
    draws = points[:, None] + rng.normal(size=(6, 400))
    tests = multiplicity.max_t(draws, points)
    assert tests[0]["p_adjusted"] == pytest.approx(1 / 401)  # The floor: no draw as extreme.
    assert tests[0]["simultaneous_low"] > 0 and all(t["family_size"] == 6 for t in tests)
    for t in tests:
        assert t["p_adjusted"] >= t["p_raw"]
        assert t["simultaneous_low"] <= t["ci_low"] + 1e-12 or t["simultaneous_high"] >= t["ci_high"] - 1e-12
    assert all(t["p_adjusted"] > 0.5 for t in tests[1:])  # Points at 0: nothing to find.


def test_degenerate_draws_are_dropped_for_the_whole_family_and_flat_contrasts_handled():
    draws = np.array([[0.0, 0.0, 0.0, np.nan], [1.0, 2.0, 3.0, 4.0]])
    tests = multiplicity.max_t(draws, np.array([0.0, 2.0]))
    assert tests[0]["p_raw"] == 1.0 and tests[0]["num_resamples"] == 3  # Identical rows: nothing to find.
    with pytest.raises(ValueError, match="draws must be"):
        multiplicity.max_t(np.zeros(3), np.zeros(3))
    with pytest.raises(ValueError, match="fewer than 2"):
        multiplicity.max_t(np.full((2, 3), np.nan), np.zeros(2))
