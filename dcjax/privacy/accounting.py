"""Privacy accounting of DP-SGD: epsilon from the noise, and the noise for a target epsilon.

Uses the maintained ``dp_accounting`` package (Google): its RDP accountant on the event
"``steps`` compositions of the sampled Gaussian mechanism", i.e.
``SelfComposedDpEvent(PoissonSampledDpEvent(q, GaussianDpEvent(noise_multiplier)), steps)``,
with add-or-remove-one adjacency.

What this does and does not prove, honestly:

* The accountant assumes *Poisson sampling*: every step includes each example
  independently with probability q = B / N. Training here (``dcjax.train``) instead
  *shuffles* each epoch and cuts it into fixed-size batches (sampling without replacement,
  every example exactly once per epoch). Plugging q = B / N and
  steps = epochs * ceil(N / B) into a Poisson accountant is the common approximation of
  the TF Privacy and Opacus tutorials, NOT a formal guarantee for shuffled batches
  ("How to DP-fy ML", Ponomareva et al. 2023, section 5.6; Chua et al., "How Private are
  DP-SGD Implementations?", ICML 2024, show shuffling can be much worse than Poisson at
  the same q and noise). Read the epsilons as the usual nominal values, not proofs.
* The privacy unit is one training example; the noise is calibrated to the clip norm C
  and the batch sum is divided by the fixed batch size B (``dcjax.dpsgd``).
* RDP gives an upper bound on epsilon; a PLD accountant would give a tighter one.
"""

from __future__ import annotations

import functools
import math

import dp_accounting
from dp_accounting.rdp import rdp_privacy_accountant


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


def epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """(epsilon, delta)-DP epsilon of DP-SGD under the RDP accountant (inf for zero noise).

    Args:
      noise_multiplier: noise std / clip norm (>= 0).
      sample_rate: q = batch size / number of examples, in (0, 1].
      steps: number of noisy gradient steps (epochs * ceil(N / B)).
      delta: target delta, in (0, 1).
    """
    _check(sample_rate, steps, delta)
    if not noise_multiplier >= 0:
        raise ValueError(f"noise_multiplier must be >= 0, got {noise_multiplier}")
    accountant = rdp_privacy_accountant.RdpAccountant()
    accountant.compose(dpsgd_event(noise_multiplier, sample_rate, steps))
    return float(accountant.get_epsilon(delta))


@functools.lru_cache(maxsize=256)  # Pure; the study asks for the same rows several times.
def noise_for_epsilon(target_epsilon: float, sample_rate: float, steps: int, delta: float,
                      tol: float = 1e-6) -> float:
    """The smallest noise multiplier (up to ``tol``, rounded up) whose epsilon is <= target.

    Uses ``dp_accounting.calibrate_dp_mechanism`` (a bracket search, then Brent's method)
    with the RDP accountant of ``epsilon``. The result is rounded up by ``tol``, so
    ``epsilon(noise_for_epsilon(e, ...), ...) <= e`` holds.
    """
    _check(sample_rate, steps, delta)
    if not (0 < target_epsilon < math.inf):
        raise ValueError(f"target_epsilon must be finite and > 0, got {target_epsilon}")
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol}")
    noise = dp_accounting.calibrate_dp_mechanism(
        rdp_privacy_accountant.RdpAccountant,
        lambda sigma: dpsgd_event(sigma, sample_rate, steps),
        target_epsilon, delta,
        bracket_interval=dp_accounting.LowerEndpointAndGuess(0.0, 1.0), tol=tol)
    return float(noise) + tol


def dpsgd_steps(num_examples: int, batch_size: int, epochs: int) -> tuple[float, int]:
    """(sample rate q, steps) of DP-SGD with shuffled batches: (B / N, epochs * ceil(N / B)).

    The batch is capped at N, as ``dcjax.train.make_schedule`` caps it.
    """
    if num_examples < 1 or batch_size < 1 or epochs < 1:
        raise ValueError(f"num_examples, batch_size and epochs must be >= 1, got "
                         f"{num_examples}, {batch_size}, {epochs}")
    batch = min(batch_size, num_examples)
    return batch / num_examples, epochs * math.ceil(num_examples / batch)
