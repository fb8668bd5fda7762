"""dcjax.privacy.power: the detectable difference is (z_crit + z_power) x se, and it has the power it claims."""

import numpy as np
import pytest

from dcjax.privacy import power


def test_detectable_difference_matches_the_normal_quantiles():
    # One contrast at 95 %, 80 % power: the textbook 1.96 + 0.84 = 2.80 standard errors.
    assert power.detectable_difference(1.0) == pytest.approx(2.8016, abs=1e-4)
    # More contrasts ask for a larger difference; a zero se detects any difference.
    assert power.detectable_difference(1.0, 10) > power.detectable_difference(1.0, 2)
    assert power.detectable_difference(0.0, 5) == 0.0


def test_a_difference_of_that_size_is_detected_about_80_percent_of_the_time():
    rng = np.random.default_rng(0)
    se, contrasts = 0.5, 4
    delta = power.detectable_difference(se, contrasts)
    critical = delta / se - 0.8416
    observed = rng.normal(delta, se, 20000)
    assert np.mean(np.abs(observed) / se > critical) == pytest.approx(0.8, abs=0.01)


def test_contrast_se_pairs_the_draws_and_drops_degenerate_ones():
    rng = np.random.default_rng(1)
    shared = rng.normal(size=500)
    a, b = shared + rng.normal(0, 0.1, 500), shared + rng.normal(0, 0.1, 500)
    # Pairing removes the shared part: the se is that of the independent noise, sqrt(2) x 0.1.
    assert power.contrast_se(list(a), list(b)) == pytest.approx(0.1414, rel=0.1)
    assert power.contrast_se([None, 1.0, 2.0, 4.0], [0.0, np.nan, 1.0, 1.0]) == pytest.approx(
        np.std([1.0, 3.0], ddof=1)
    )
    with pytest.raises(ValueError, match="fewer than 2"):
        power.contrast_se([None, 1.0], [1.0, None])
