"""The suite's launcher server: runs launcher commands, each in its own process, for the price of one import.

Usage: python tests/launch_server.py (by tests/launch_flags.py, one server per test process, on its first launch)

A launcher run on mock data spends ~15 CPU-seconds of an AMD EPYC's 2 cores importing jax, dcjax and TensorFlow
before it does anything (TensorFlow alone ~10), as much as a tiny end-to-end run computes. This process imports all
of it once (every launcher's top-level imports, TensorFlow and TFDS) and then forks one child per command, which runs
it as ``python SCRIPT ARGS`` would: the script as ``__main__`` with its own absl flags, its directory first on
sys.path, the request's environment, working directory and stdin from /dev/null, its exit status. The bitwise tests
compare runs that were all started this way or all as fresh interpreters: nothing a launcher computes depends on
which (test_suite.py checks a served run against a fresh one).

Protocol, one JSON object per line. In (stdin): {"id", "argv": [script, args...], "env", "cwd", "out", "err"} with
out/err the files for the child's stdout and stderr (the same path: both to one file). Out (stdout): {"id": "ready",
"env": its environment after the imports} once, then {"id", "pid"} when a child starts and {"id", "returncode"} when
it ends (negative: killed by that signal, as subprocess reports it). Children run side by side (the crash-and-resume
tests run two and signal them by pid). The server exits when its stdin closes, once its children have ended.

Nothing runs on XLA in this process (checked): a child forked from a process with live XLA threads could hang. A
child's environment is the request's, over the variables the imports set (as in a fresh interpreter after them); the
client sends only launches whose environment matches the one the imports saw (launch_flags._Server.serves).
"""

import ast
import contextlib
import gc
import glob
import importlib
import json
import os
import runpy
import select
import sys
import threading
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _imports(script: str) -> list[str]:
    """The modules a launcher imports at its top level (``from a import b``: a.b when that is a module, else a)."""
    with open(os.path.join(ROOT, script)) as f:
        tree = ast.parse(f.read())
    names = []
    for node in tree.body:
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    return names


class _WouldStartXla(BaseException):  # BaseException: no `except Exception` in an imported module may swallow it.
    pass


def _refuse_backend(*args, **kwargs):
    raise _WouldStartXla


def _preimport(scripts) -> None:
    """Imports the launchers' modules, all but those whose import would start XLA (a config default that asks for
    the backend): those fail here, with everything they import loaded, and each child imports them anew."""
    from jax._src import xla_bridge

    sys.path.insert(0, os.path.join(ROOT, "experiments"))  # As each launcher does for common and configs.
    real = xla_bridge.get_backend
    xla_bridge.get_backend = _refuse_backend
    try:
        for name in sorted({n for s in scripts for n in _imports(s)}):
            try:
                importlib.import_module(name)
            except (ModuleNotFoundError, _WouldStartXla):  # Not a module (`from a import function`), or see above.
                pass
    finally:
        xla_bridge.get_backend = real
    sys.path.remove(os.path.join(ROOT, "experiments"))
    assert not xla_bridge._backends, "XLA started before the forks: the children could hang"


def _threads() -> int:
    """This process's threads, Python's and native ones (Linux); 0 where /proc is absent."""
    return len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else 0


def _prepare() -> None:
    """Everything a launcher imports, and TensorFlow with TFDS (as dcjax.data imports it, after its settings)."""
    scripts = [os.path.relpath(p, ROOT) for p in sorted(glob.glob(os.path.join(ROOT, "experiments", "*.py")))]
    _preimport(scripts)
    # The native threads now running are numpy's and scipy's OpenBLAS pools, idle, which fork safely (their atfork
    # handlers); nothing after may add one, and no Python thread may run.
    threads = _threads()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    import tensorflow  # noqa: F401
    import tensorflow_datasets  # noqa: F401

    assert _threads() == threads, "importing TensorFlow started a thread: the children could hang"
    assert threading.active_count() == 1, f"Python threads run before the forks: {threading.enumerate()}"
    # What the imports built stays out of the children's garbage collections: a collection writes to every object it
    # visits, and so would copy the server's whole heap into each child, page by page.
    gc.freeze()


def _child(request: dict, channel: int, added: dict[str, str]) -> None:
    """In the forked child: the request's command as its own __main__, then exit with its status (never returns)."""
    code = 1
    try:
        os.close(channel)
        os.environ.clear()
        os.environ.update(added)
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        out = os.open(request["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        err = (
            out if request["err"] == request["out"] else os.open(request["err"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        )
        os.dup2(out, 1)
        os.dup2(err, 2)
        script = os.path.join(request["cwd"], request["argv"][0])
        sys.argv = list(request["argv"])
        sys.path[0] = os.path.dirname(os.path.abspath(script))  # As `python SCRIPT` puts the script's directory.
        runpy.run_path(script, run_name="__main__")
        code = 0
    except SystemExit as exit_:  # As the interpreter maps sys.exit's argument to a status.
        if exit_.code is None or isinstance(exit_.code, int):
            code = exit_.code or 0
        else:
            print(exit_.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001  (an uncaught exception: traceback and status 1, as python prints it)
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _reap(running: dict[int, object], say) -> None:
    """Reports every child that has ended (its request id and status), without waiting."""
    while running:
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            return
        code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else -os.WTERMSIG(status)
        say({"id": running.pop(pid), "returncode": code})


def serve() -> None:
    """Forks a child per request read on stdin until it closes; replies on stdout (the module docstring)."""
    before = dict(os.environ)
    _prepare()
    added = {k: v for k, v in os.environ.items() if before.get(k) != v}
    channel = os.dup(1)  # The replies' descriptor: each child puts its own files on 1 and 2.
    reply = os.fdopen(channel, "w", buffering=1)

    def say(message) -> None:
        reply.write(json.dumps(message) + "\n")

    say({"id": "ready", "env": dict(os.environ)})  # As the imports left it (TensorFlow sets a few variables).
    running: dict[int, object] = {}
    pending, open_ = b"", True
    while open_ or running:
        # Idle, it sleeps until a request; with children running it wakes every 20 ms to report those that ended.
        readable, _, _ = select.select([0] if open_ else [], [], [], 0.02 if running or not open_ else None)
        if readable:
            chunk = os.read(0, 1 << 16)
            open_ = bool(chunk)
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                request = json.loads(line)
                sys.stdout.flush()
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:
                    _child(request, channel, added)
                running[pid] = request["id"]
                say({"id": request["id"], "pid": pid})
        _reap(running, say)


if __name__ == "__main__":
    serve()
