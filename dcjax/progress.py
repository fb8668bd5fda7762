"""Progress lines with an ETA from inside long jitted computations.

A whole training run (a scan over epochs of a scan over steps) or a DC iteration is ONE
jitted call that can run for many minutes. To report progress without splitting it (and
recompiling, or changing what XLA computes), the scans call ``tick``: every few loop
iterations a ``jax.debug.callback`` hands the host a count of finished units (training steps,
outer matching steps). The callback only reads a loop counter, and it is ``ordered=False``:
no token threads through the program, donation and sharding are untouched. The numbers the
computation produces are bitwise unchanged at the loop lengths of real runs (tests/test_progress.py
checks trainings; an attack bank with DC condensation at 4 outer x 5 inner steps and 6 epochs was
compared by hand) with one measured exception: a toy bank with DC condensation at 2 outer x 2
inner steps and 2 iterations, whose logits moved by up to 3e-7 with ticks traced in (not
investigated; most likely XLA optimises loops this short differently when they hold no side
effect). ``set_enabled(False)`` restores the programs without ticks exactly.

On the host the ticks go to the innermost open ``task``: a ``Tracker`` that adds them up and
logs ``label: 45% (810/1800 steps), 0h03m10s elapsed, ETA 0h03m52s`` at most once every
``INTERVAL_S`` seconds (so short tasks log nothing). The Python caller opens the task around
the jitted call and blocks until the result is ready, so every tick of the call lands in it.

Model axes: under ``lax.map`` a tick fires once per model; under ``vmap`` its arguments are
unbatched (a counter), so it fires ONCE for all the models of the device: the task's
``weight`` (models per call) turns it into model-units. Callers set it from their strategy.

``set_enabled(False)`` turns it all off (benchmarks/progress_overhead.py measures the cost):
functions traced afterwards contain no callback, and ticks of older executables are ignored.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import threading
import time
from collections.abc import Callable, Hashable

import jax
import jax.numpy as jnp
from absl import logging

INTERVAL_S = 30.0  # At most one line per task per this many seconds: two a minute leaves slack.
MAX_TICKS = 100  # A scan reports at most ~this many times (host callbacks cost ~0.1 ms each).
MAX_TICK_STEPS = 64  # ...but at least every this many training steps (a CPU step can take 0.5 s).

_enabled = True
_lock = threading.Lock()
_stack: list[Tracker] = []
_seen: set = set()


def enabled() -> bool:
    """Whether functions traced now report progress (the default: yes)."""
    return _enabled


def set_enabled(on: bool) -> None:
    """Switches progress reporting on or off (for functions traced afterwards, and on the host)."""
    global _enabled
    _enabled = bool(on)


def format_eta(seconds: float) -> str:
    """Seconds as '1h02m03s' (whole seconds, hours unbounded)."""
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"


class Tracker:
    """Counts finished units of a task and logs its progress, rate limited.

    The rate behind the ETA is measured from the first tick on: the time before it is mostly
    compilation, so until a second tick the ETA is unknown ('?'). interval: seconds between
    lines (None: ``INTERVAL_S`` as it is now); weight: units per reported unit.
    """

    def __init__(
        self,
        label: str,
        total: int,
        unit: str = "steps",
        weight: int = 1,
        interval: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.label, self.total, self.unit, self.weight = label, max(int(total), 1), unit, weight
        self.interval, self.clock = INTERVAL_S if interval is None else interval, clock
        self.start = self.last_line = clock()
        self.done = 0
        self.first: tuple[float, int] | None = None  # (time, done) at the first tick.
        self.lines, self.eta_shown = 0, False

    def eta(self, now: float) -> float | None:
        """Seconds left at the rate measured since the first tick; None before a second one."""
        if self.first is None or self.done <= self.first[1] or now <= self.first[0]:
            return None
        rate = (self.done - self.first[1]) / (now - self.first[0])
        return max(self.total - self.done, 0) / rate

    def line(self, now: float) -> str:
        eta = self.eta(now)
        job = _job.observe(self, now) if _job is not None else ""
        return (
            f"{self.label}: {100 * min(self.done / self.total, 1):.0f}% ({self.done}/{self.total} "
            f"{self.unit}), {format_eta(now - self.start)} elapsed, "
            f"ETA {'?' if eta is None else format_eta(eta)}{job}"
        )

    def advance(self, units: int) -> str | None:
        """Adds ``units`` (times ``weight``); returns the line if one was logged.

        A line is due once ``interval`` has passed since the last one, or, once, as soon as
        the ETA becomes known after a line that could not give it.
        """
        now = self.clock()
        self.done += int(units) * self.weight
        if self.first is None:
            self.first = (now, self.done)
        eta_news = self.lines and not self.eta_shown and self.eta(now) is not None
        if now - self.last_line < self.interval and not eta_news:
            return None
        self.last_line, self.lines = now, self.lines + 1
        self.eta_shown = self.eta(now) is not None
        text = self.line(now)
        logging.info("%s", text)
        return text

    def finish(self) -> None:
        """Logs the total time, only if the task was long enough to have logged progress."""
        if self.lines:
            logging.info("%s: done in %s", self.label, format_eta(self.clock() - self.start))


@dataclasses.dataclass
class Phase:
    """One phase of a job: ``kind`` groups phases timed alike ('iterations', 'evaluation'); ``cost`` is its
    estimated work in a unit common to every kind (the plan's shares), ``units`` its work in its own unit."""

    label: str
    kind: str
    cost: float
    units: int = 1


class JobPlan:
    """A job's phases with their estimated shares, and a whole-job ETA beside each phase's.

    The ETA counts only timed work: a kind's seconds per cost unit come from a phase of that kind once a step of
    it has been timed (compilation excluded, as for ``Tracker``); a kind not yet timed borrows another kind's
    rate through the cost estimates; before anything is timed the ETA is unknown ('?').
    """

    def __init__(self, phases: list[Phase]):
        self.phases, self.current = list(phases), -1
        self.rates: dict[str, float] = {}  # kind -> seconds per cost unit, measured.
        self.left_in_current: float | None = None  # Seconds, measured.

    def describe(self) -> str:
        """'plan: initial evaluation 12%, iterations 1-50 71%, ...' (estimated shares of the whole job)."""
        total = sum(p.cost for p in self.phases) or 1.0
        parts = [f"{p.label} {100 * p.cost / total:.0f}%" for p in self.phases]
        return "plan (estimated share of the job): " + (", ".join(parts) or "nothing left to do")

    def next(self) -> None:
        """The next phase starts (phases run in the plan's order)."""
        self.current = min(self.current + 1, len(self.phases))
        self.left_in_current = None

    def timed(self, units_done: float, seconds_per_unit: float) -> None:
        """The running phase's own timing: ``units_done`` of its units done, each taking ``seconds_per_unit``."""
        phase = self.phases[self.current]
        self.rates[phase.kind] = seconds_per_unit * phase.units / max(phase.cost, 1e-12)
        self.left_in_current = max(phase.units - units_done, 0) * seconds_per_unit

    def observe(self, tracker: Tracker, now: float) -> str:
        """Feeds the running phase's ``Tracker`` timing in (it covers the whole phase); returns ', job ETA ...'."""
        eta, left = tracker.eta(now), tracker.total - tracker.done
        if eta is not None and left > 0 and 0 <= self.current < len(self.phases):
            phase = self.phases[self.current]
            per_unit = eta / left * tracker.total / phase.units  # Seconds per phase unit, compile excluded.
            self.timed(tracker.done / tracker.total * phase.units, per_unit)
        return f", job ETA {self.eta_text()}"

    def remaining(self) -> float | None:
        """Seconds left in the whole job, or None while nothing has been timed."""
        if not self.rates:
            return None
        fallback = sum(self.rates.values()) / len(self.rates)  # Per cost unit, from the kinds timed so far.
        later = sum(p.cost * self.rates.get(p.kind, fallback) for p in self.phases[self.current + 1 :])
        if 0 <= self.current < len(self.phases):
            phase = self.phases[self.current]
            now = self.left_in_current
            later += phase.cost * self.rates.get(phase.kind, fallback) if now is None else now
        return later

    def eta_text(self) -> str:
        left = self.remaining()
        return "?" if left is None else format_eta(left)


_job: JobPlan | None = None


@contextlib.contextmanager
def job(plan: JobPlan):
    """Makes ``plan`` the running job: its phases' progress lines also give the whole job's ETA."""
    global _job
    logging.info("%s", plan.describe())
    _job = plan
    try:
        yield plan
    finally:
        _job = None


def first_call(signature: Hashable) -> bool:
    """True the first time ``signature`` (what a jitted call compiles for) is seen here."""
    with _lock:
        if signature in _seen:
            return False
        _seen.add(signature)
        return True


@contextlib.contextmanager
def task(label: str, total: int, unit: str = "steps", weight: int = 1, compiling: bool = False):
    """Receives the ticks of the jitted calls made inside; yields its ``Tracker``.

    The caller must block until the calls' results are ready before leaving (ticks that
    arrive later are dropped). ``compiling``: log a line now, as the first call compiles.
    """
    if compiling and _enabled:
        logging.info("compiling and running %s ...", label)
    tracker = Tracker(label, total, unit, weight)
    with _lock:
        _stack.append(tracker)
    try:
        yield tracker
    finally:
        with _lock:
            _stack.remove(tracker)
        tracker.finish()


def _on_tick(units) -> None:
    """Host side of ``tick``: credits the innermost open task; never raises into XLA."""
    if not _enabled:
        return
    try:
        with _lock:
            tracker = _stack[-1] if _stack else None
            if tracker is not None:
                tracker.advance(int(units))
    except Exception as err:  # A broken progress line must not kill a training run.
        logging.log_first_n(logging.WARNING, "progress tick failed: %s", 1, err)


def tick(index: jax.Array, length: int, stride: int, unit: int = 1) -> None:
    """Inside the body of a scan over ``length`` iterations: report every ``stride``-th one.

    index: the scan's int32 iteration counter (unbatched). Iteration i reports ``unit`` units
    per iteration since the previous report: ``stride * unit``, the remainder at the last one.
    Traced only while ``enabled()``.
    """
    if not _enabled:
        return
    if stride <= 1:
        jax.debug.callback(_on_tick, jnp.asarray(unit, jnp.int32))
        return
    done = index + 1
    units = jnp.where(done % stride == 0, stride, length % stride) * unit
    jax.lax.cond((done % stride == 0) | (done == length), lambda: jax.debug.callback(_on_tick, units), lambda: None)


def stride(length: int, max_units: int | None = None, unit: int = 1) -> int:
    """Iterations between ticks: <= MAX_TICKS ticks over ``length``, <= ``max_units`` units apart."""
    every = math.ceil(length / MAX_TICKS)
    if max_units is not None:
        every = min(every, max_units // max(unit, 1))
    return max(every, 1)


class Reporting:
    """A jitted function whose calls each run as a ``task`` (the first one announcing compilation).

    Other attributes (``lower``, ...) are the jitted function's: ahead-of-time compiled calls
    bypass the task and their ticks are dropped.
    """

    def __init__(self, jitted: Callable, label: str, total: int, unit: str = "steps"):
        self._jitted, self._label, self._total, self._unit = jitted, label, total, unit
        self._called = False

    def __call__(self, *args, **kwargs):
        with task(self._label, self._total, self._unit, compiling=not self._called):
            self._called = True
            return jax.block_until_ready(self._jitted(*args, **kwargs))

    def __getattr__(self, name):
        return getattr(self._jitted, name)
