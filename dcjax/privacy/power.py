"""What a tier can resolve: the smallest difference in headline TPR between two rows it detects at 80 % power.

Why: a tier with 8 pipelines per row answers some contrasts and not others; the flagfile and the report say
which before a reader takes "no difference" for "the same". For a paired contrast with bootstrap standard
error se (the two rows' headline draws share their resamples, ``headline``), a two-sided test at family level
alpha over J contrasts (Bonferroni: each at alpha / J, conservative next to the max-T adjustment the report
uses) detects a true difference delta with probability ``power`` when

    delta >= (z_{1 - alpha / (2 J)} + z_{power}) * se.

The se is measured at the tier's own scale (its finished rows' draws), not extrapolated from another tier.
"""

from __future__ import annotations

import statistics

import numpy as np


def contrast_se(samples_a, samples_b) -> float:
    """Standard deviation of the paired draws a - b (float [R] each, None/NaN for degenerate draws dropped)."""
    a, b = (np.asarray([np.nan if v is None else v for v in s], np.float64) for s in (samples_a, samples_b))
    if a.shape != b.shape:
        raise ValueError(f"paired draws must have one shape, got {a.shape} and {b.shape}")
    d = (a - b)[~(np.isnan(a) | np.isnan(b))]
    if d.size < 2:
        raise ValueError("fewer than 2 draws where both rows are defined")
    return float(d.std(ddof=1))


def detectable_difference(se: float, num_contrasts: int = 1, level: float = 0.95, power: float = 0.8) -> float:
    """The smallest true difference detected with probability ``power`` by a two-sided test at family level
    1 - ``level`` over ``num_contrasts`` contrasts (Bonferroni), given the contrast's standard error."""
    if num_contrasts < 1 or not 0 < level < 1 or not 0 < power < 1 or not se >= 0:
        raise ValueError(
            f"need num_contrasts >= 1, level and power in (0, 1), se >= 0; got {num_contrasts}, {level}, {power}, {se}"
        )
    normal = statistics.NormalDist()
    critical = normal.inv_cdf(1 - (1 - level) / (2 * num_contrasts))
    return (critical + normal.inv_cdf(power)) * se
