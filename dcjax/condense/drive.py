"""The condensation driver: the iterations of one run (``condense.run``) or of a bank of c runs (``privacy.bank``).

Both build their jitted iteration here (``make_iteration_fn``: one run; ``models_iteration``: c runs at once over a
leading model axis), derive their keys here (``key_streams``: the ``keys.CONDENSE`` layout of a run's key, per run
for a bank; iteration t draws item t of the iterations stream, ``iteration_key``) and step through a span of
iterations here (``iterate``), cut at the points where they evaluate, checkpoint or snapshot (``segments``). Because
every key is a function of the run's key and the iteration only, a run cut into spans, or resumed, is a straight run.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Iterable
from typing import Any

import jax

from dcjax import engine
from dcjax import keys as keys_lib
from dcjax import models
from dcjax import progress
from dcjax.condense.config import (
    METHODS,
    CondenseConfig,
    SynState,
    check_network,
    describe,
    init_synthetic,
    iteration_units,
    resolve_class_strategy,
)
from dcjax.models import ModelFns


def condense_iteration(
    fns: ModelFns, config: CondenseConfig, strategy: str, state: SynState, real_data, key: jax.Array
):
    """One iteration of ``config.method``: (state, (pool, ClassIndex), key) -> (state, metrics).

    The method's ``Method.iteration``. Pure; strategy is a resolved class strategy.
    """
    fns = models.with_precision(fns, config.precision)  # The same parameters, its matmuls at config.precision.
    return METHODS[config.method].iteration(fns, config, strategy, state, real_data, key)


def make_iteration_fn(fns: ModelFns, config: CondenseConfig, strategy: str = "auto"):
    """jit(condense_iteration) with static settings closed over and the state donated.

    Returns f(state, (pool, index), key) -> (state, metrics), ready when it returns: each call
    is a ``progress.task`` (the first logs that it compiles; a long iteration logs its outer
    steps and an ETA). ``f.lower`` is the jitted function's. The pool is an argument, not a
    closed-over constant, so XLA does not embed 60k images in the executable.
    """
    check_network(fns)
    strategy = resolve_class_strategy(strategy if strategy != "auto" else config.class_strategy)
    step = functools.partial(condense_iteration, fns, config, strategy)
    unit = METHODS[config.method].unit
    return progress.Reporting(jax.jit(step, donate_argnums=(0,)), describe(fns, config), iteration_units(config), unit)


@functools.partial(jax.jit, static_argnums=(0,), donate_argnums=(1,))
def models_iteration(statics: tuple, states, data, keys):
    """One iteration of each of c runs at once (``engine.map_models``; no progress task of its own).

    statics: (ModelFns, CondenseConfig, resolved class strategy, model strategy), hashable; states: stacked [c]
    ``SynState``s (donated); data: (pool images [N, H, W, C], shared; [c]-stacked ClassIndex); keys: [c] this
    iteration's keys. Returns (states, metrics with "loss" [c]).
    """
    fns, config, class_strategy, model_strategy = statics
    pool, indexes = data

    def one(args):
        state, index, key = args
        return condense_iteration(fns, config, class_strategy, state, (pool, index), key)

    return engine.map_models(one, model_strategy, (states, indexes, keys))


def key_streams(key: jax.Array) -> dict[str, jax.Array]:
    """The ``keys.CONDENSE`` streams of one run's key [] (each stream []), or of c runs' keys [c] (each [c])."""
    if key.ndim == 0:
        return keys_lib.streams(key, keys_lib.CONDENSE)
    return jax.vmap(lambda k: keys_lib.streams(k, keys_lib.CONDENSE))(key)


def iteration_key(stream: jax.Array, t: int) -> jax.Array:
    """Iteration t's key: item t of the iterations stream, of each run for a bank's [c] streams."""
    if stream.ndim == 0:
        return keys_lib.item(stream, t)
    return jax.vmap(lambda k: keys_lib.item(k, t))(stream)


def initial_state(config: CondenseConfig, key: jax.Array, pool: jax.Array, index):
    """``init_synthetic`` from the init stream of one run's key []: (SynState, init indices [K*ipc])."""
    return init_synthetic(config, key_streams(key)["init"], pool, index)


def segments(start: int, stop: int, cuts: Iterable[int]) -> list[tuple[int, int]]:
    """[start, stop) cut at the ``cuts`` strictly inside it: consecutive (begin, end) spans; [] when start >= stop."""
    if start >= stop:
        return []
    bounds = sorted({start, stop} | {t for t in cuts if start < t < stop})
    return list(zip(bounds[:-1], bounds[1:]))


@dataclasses.dataclass(frozen=True)
class Loop:
    """What ``iterate`` steps.

    step: (state, data, key) -> (state, metrics): ``make_iteration_fn``'s, or ``models_iteration`` with its
      statics bound. data: (pool images [N, H, W, C], ClassIndex; [c]-stacked for a bank). stream: the
      iterations stream (``key_streams``), [] or [c]. after: called as after(t, state, metrics, started) after
      iteration t (started: ``time.perf_counter()`` before it was dispatched); it may raise to stop the run.
    """

    step: Callable[[Any, tuple, jax.Array], tuple[Any, dict]]
    data: tuple
    stream: jax.Array
    after: Callable[[int, Any, dict, float], None] | None = None


def iterate(loop: Loop, state, span: tuple[int, int]):
    """Iterations span = [start, stop) from ``state``; iteration t draws ``iteration_key(loop.stream, t)``.

    Returns the state after iteration stop - 1 (not blocked on: ``after`` or the caller syncs).
    """
    for t in range(*span):
        started = time.perf_counter()
        state, metrics = loop.step(state, loop.data, iteration_key(loop.stream, t))
        if loop.after is not None:
            loop.after(t, state, metrics, started)
    return state
