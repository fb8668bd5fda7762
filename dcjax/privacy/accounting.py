"""Privacy accounting of DP-SGD: epsilon from the noise, and the noise for a target epsilon.

Uses the maintained ``dp_accounting`` package (Google) on the event "``steps`` compositions of
the Poisson-subsampled Gaussian mechanism", i.e.
``SelfComposedDpEvent(PoissonSampledDpEvent(q, GaussianDpEvent(noise_multiplier)), steps)``,
with add-or-remove-one adjacency, and two accountants:

* PLD (privacy loss distributions; ``epsilon_pld``): the tight one, and the one the noise is
  calibrated with (``noise_for_epsilon``). Its ``pessimistic_estimate`` discretisation makes
  the value an upper bound on the true epsilon of the event; ``PLD_DISCRETIZATION`` = 1e-3
  (dp_accounting's default is 1e-4, 10x slower) moves it by ~1e-5 relative at the study's
  settings (q ~ 0.1, 300 steps).
* RDP (``epsilon_rdp``): a looser upper bound, reported beside it.

What this proves: training here (``dcjax.train`` with ``TrainConfig.dp``) draws each step's
batch by Poisson sampling with rate q (``dcjax.dpsgd``), which is exactly the event above,
except that a step drawing more than B_max examples drops the extra ones. That happens with
probability at most eta over the whole run (``dcjax.dpsgd.overflow_probability``), so the
training is (epsilon, delta + (1 + e^epsilon) * eta)-DP (``overflow_delta``). The privacy unit
is one training example; the noise is calibrated to the clip norm C and the noisy sum is
divided by the constant expected batch size q * n. Not covered: hyper-parameter tuning on the
private data (``experiments/dp_tune.py`` tunes on disjoint public-split data instead) and
side channels such as timing.
"""

from __future__ import annotations

import functools
import math

import dp_accounting
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant

PLD_DISCRETIZATION = 1e-3  # value_discretization_interval of the PLD accountant.
ACCOUNTANTS = ("pld", "rdp")


def _check(sample_rate: float, steps: int, delta: float) -> None:
    if not 0 < sample_rate <= 1:
        raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")


def dpsgd_event(noise_multiplier: float, sample_rate: float, steps: int) -> dp_accounting.DpEvent:
    """``steps`` rounds of the Poisson-subsampled Gaussian mechanism (std = noise * clip)."""
    step = dp_accounting.PoissonSampledDpEvent(sample_rate, dp_accounting.GaussianDpEvent(noise_multiplier))
    return dp_accounting.SelfComposedDpEvent(step, steps)


def _pld_accountant() -> dp_accounting.PrivacyAccountant:
    return pld_privacy_accountant.PLDAccountant(value_discretization_interval=PLD_DISCRETIZATION)


_MAKE = {"pld": _pld_accountant, "rdp": rdp_privacy_accountant.RdpAccountant}


def epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float, accountant: str = "rdp") -> float:
    """(epsilon, delta)-DP epsilon of DP-SGD with Poisson sampling (inf for zero noise).

    Args:
      noise_multiplier: noise std / clip norm (>= 0).
      sample_rate: q, the Poisson inclusion probability, in (0, 1].
      steps: number of noisy gradient steps.
      delta: target delta, in (0, 1).
      accountant: 'rdp' or 'pld'.
    """
    _check(sample_rate, steps, delta)
    if not noise_multiplier >= 0:
        raise ValueError(f"noise_multiplier must be >= 0, got {noise_multiplier}")
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"accountant must be one of {ACCOUNTANTS}, got {accountant!r}")
    if noise_multiplier == 0:
        return math.inf  # No noise: no finite guarantee (and PLD cannot discretise it).
    acc = _MAKE[accountant]()
    acc.compose(dpsgd_event(noise_multiplier, sample_rate, steps))
    return float(acc.get_epsilon(delta))


def epsilon_rdp(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """``epsilon`` with the RDP accountant."""
    return epsilon(noise_multiplier, sample_rate, steps, delta, "rdp")


@functools.lru_cache(maxsize=256)  # Pure; the study asks for the same rows several times.
def epsilon_pld(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """``epsilon`` with the PLD accountant (the tighter bound)."""
    return epsilon(noise_multiplier, sample_rate, steps, delta, "pld")


@functools.lru_cache(maxsize=256)
def noise_for_epsilon(
    target_epsilon: float, sample_rate: float, steps: int, delta: float, accountant: str = "pld", tol: float = 1e-4
) -> float:
    """The smallest noise multiplier (up to ``tol``, rounded up) whose epsilon is <= target.

    Uses ``dp_accounting.calibrate_dp_mechanism`` (a bracket search, then Brent's method)
    with the given accountant; the result is rounded up by ``tol`` and then raised by further
    ``tol`` steps until ``epsilon(noise, ..., accountant) <= target_epsilon`` holds.
    """
    _check(sample_rate, steps, delta)
    if not (0 < target_epsilon < math.inf):
        raise ValueError(f"target_epsilon must be finite and > 0, got {target_epsilon}")
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"accountant must be one of {ACCOUNTANTS}, got {accountant!r}")
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol}")
    noise = (
        dp_accounting.calibrate_dp_mechanism(
            _MAKE[accountant],
            lambda sigma: dpsgd_event(sigma, sample_rate, steps),
            target_epsilon,
            delta,
            bracket_interval=dp_accounting.LowerEndpointAndGuess(0.0, 1.0),
            tol=tol,
        )
        + tol
    )
    while epsilon(noise, sample_rate, steps, delta, accountant) > target_epsilon:
        noise += tol  # The PLD's discretised epsilon is not exactly monotone in the noise.
    return float(noise)


def overflow_delta(delta: float, eps: float, overflow: float) -> float:
    """delta of the truncated training: delta + (1 + e^eps) * eta for overflow probability eta.

    Why: with the same randomness, truncated and Poisson training differ only on overflow, so
    for any output set S, P_trunc(D)[S] <= P(D)[S] + eta <= e^eps P(D')[S] + delta + eta
    <= e^eps P_trunc(D')[S] + delta + (1 + e^eps) eta (eta bounds D and D' alike).
    """
    if not (0 <= overflow <= 1 and 0 < delta < 1 and eps >= 0):
        raise ValueError(f"need overflow in [0, 1], delta in (0, 1), eps >= 0; got {overflow}, {delta}, {eps}")
    return min(1.0, delta + (1.0 + math.exp(min(eps, 700.0))) * overflow)  # exp(>709) overflows.
