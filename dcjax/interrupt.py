"""Ctrl-C that lands within a second or two, even while the main thread is inside a long jitted call.

Python runs a signal handler only between bytecodes of the main thread, so a SIGINT that arrives while the main
thread waits on XLA (an evaluation's whole training is ONE jitted call of minutes) used to wait for that call to
end. Here the C-level handler also writes to a wakeup descriptor that a watcher thread reads:

* if the main thread is running Python, its handler raises ``Interrupted`` at once (deferred to the end of a
  ``critical`` section: an atomic write or a checkpoint save is never cut in half);
* if the main thread has not handled the signal after ``GRACE_S`` (it is inside XLA), the watcher waits for any
  critical section to end and calls the launcher's ``on_exit`` (one line, exit 130) from its own thread.

* if the main thread is running Python inside a host callback that XLA called (a progress tick), raising there
  would reach XLA as an INTERNAL error (exit 1, a traceback): the handler only records the request and the watcher
  exits as if the main thread were inside XLA, which it is.

Either way what is on disk is what a kill at that moment leaves, which every run resumes from bitwise (each
output is renamed into place whole; the tests in tests/test_crash_resume.py kill runs anywhere). A second
Ctrl-C exits at once. The library only records what it saved (``note_saved``); the launcher says it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable

GRACE_S = 1.0  # The main thread's own handler gets this long before the watcher exits for it.


class Interrupted(KeyboardInterrupt):
    """Raised in the main thread by the SIGINT handler; a KeyboardInterrupt, so ``except Exception`` passes it."""


_state = threading.Condition()  # Guards the fields below; the watcher waits on it for critical sections.
_critical = 0  # Critical sections open in the main thread.
_requested = False  # A SIGINT arrived.
_handled = threading.Event()  # The main thread's handler ran.
_saved: list[str] = []  # What the run has saved so far, newest last (``note_saved``).
_installed = False


def note_saved(what: str) -> None:
    """Records that ``what`` (e.g. 'the checkpoint after iteration 20 in runs/x/checkpoints') is safely on disk."""
    with _state:
        _saved.append(what)


def saved() -> str | None:
    """The newest thing ``note_saved`` recorded, or None."""
    with _state:
        return _saved[-1] if _saved else None


@contextlib.contextmanager
def critical():
    """A section a Ctrl-C must not cut (an atomic write, a checkpoint save): the interrupt waits for its end."""
    global _critical
    with _state:
        _critical += 1
    try:
        yield
    finally:
        with _state:
            _critical -= 1
            due = _requested and _critical == 0 and _in_main_thread()
            if due:
                _handled.set()  # The main thread raises now: the watcher must not exit for it as well.
            _state.notify_all()
    if due:
        raise Interrupted()


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _inside_host_callback(frame) -> bool:
    """Whether ``frame`` runs under a host callback of a jitted call (jax's callback wrapper is on its stack)."""
    module = sys.modules.get("jax._src.callback")  # Not imported: no callback can be running.
    wrapper = getattr(module, "__file__", None)
    while frame is not None and wrapper is not None:
        if frame.f_code.co_filename == wrapper:
            return True
        frame = frame.f_back
    return False


def _handler(signum, frame):
    """The main thread's SIGINT handler: raise now, or at the end of the open critical section; inside a host
    callback, leave it to the watcher (an exception must not cross XLA)."""
    global _requested
    in_callback = _inside_host_callback(frame)
    with _state:
        _requested = True
        if in_callback:
            return
        _handled.set()
        deferred = _critical > 0
    if not deferred:
        raise Interrupted()


def _watch(fd: int, on_exit: Callable[[], None]) -> None:
    """The watcher thread: on SIGINT, give the main thread GRACE_S, then exit for it (after critical sections)."""
    while True:
        try:
            signals = os.read(fd, 64)
        except OSError:
            return
        if signal.SIGINT not in signals:
            continue
        if not _handled.wait(GRACE_S):  # The main thread is inside XLA (or C code): it cannot raise.
            with _state:
                _state.wait_for(lambda: _critical == 0)
                on_exit()  # Holding the lock: the main thread cannot open a critical section meanwhile.
            return
        # Handled: the main thread is unwinding. A second Ctrl-C means "now".
        os.read(fd, 64)
        on_exit()
        return


def install(on_exit: Callable[[], None]) -> None:
    """Installs the SIGINT handler and its watcher (main thread only; once per process).

    ``on_exit`` is called from the watcher thread when the main thread cannot raise in time; it must end the
    process (e.g. write one line and ``os._exit(130)``).
    """
    global _installed
    if _installed or not _in_main_thread():
        return
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)  # The C handler must never block.
    signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    signal.signal(signal.SIGINT, _handler)
    threading.Thread(target=_watch, args=(read_fd, on_exit), name="sigint-watcher", daemon=True).start()
    _installed = True
