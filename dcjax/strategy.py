"""How an axis of independent work (models, classes) runs on a backend: the one chooser.

  'vmap': vectorised in one program; fastest on GPU/TPU, where the batched kernels fill the device.
  'map':  a sequential ``lax.map`` inside one program; on XLA:CPU a vmap over parameter sets or classes turns
          per-item convolutions into grouped convolutions / batched GEMMs that run slower than one item at a
          time (docs/protocol.md section 8), so this is the CPU choice.
  'loop': a Python loop over separately jitted calls (models) or classes unrolled in one trace; the plain
          baseline the other two are checked against.
  'auto': 'map' on CPU, 'vmap' elsewhere.
A caller that cannot run one of them says so (``supported``): an unsupported strategy is an error, never
silently replaced by another.
"""

from __future__ import annotations

import jax

from dcjax import errors

STRATEGIES = ("auto", "vmap", "map", "loop")


def resolve(strategy: str, what: str, backend: str | None = None, supported: tuple[str, ...] = STRATEGIES[1:]) -> str:
    """The concrete strategy for ``strategy`` on ``backend`` (default: JAX's); ConfigError naming ``what``.

    what: the setting, for the message ('model-axis strategy', 'class strategy').
    supported: the concrete strategies the caller can run.
    """
    if strategy not in STRATEGIES:
        raise errors.ConfigError(None, f"unknown {what} {strategy!r}; expected one of {STRATEGIES}")
    if strategy == "auto":
        strategy = "map" if (backend or jax.default_backend()) == "cpu" else "vmap"
    if strategy not in supported:
        raise errors.ConfigError(None, f"{what} {strategy!r} is not supported here; use one of {supported}")
    return strategy
