"""Runs many launcher commands that each end early (bad input), each in its own process, for the price of one import.

Usage: python tests/launch_cases.py CASES.json RESULTS.json

CASES.json: {"mock_examples": null or N, "cases": [["experiments/X.py", "--flag=...", ...], ...]}. This process
imports what the cases' launchers import (jax, dcjax, configs: ~3 CPU-seconds, most of a rejected run's cost) and then
forks one child per case, which runs its launcher as ``python experiments/X.py ...`` would (``__main__``, its own absl
flags, its exit status) with stdout and stderr captured apart. Under ``mock_examples`` the children run inside
``tfds.testing.mock_data``, as tests/mock_launch.py runs a launcher, and TensorFlow is imported before the forks.
RESULTS.json: per case, its returncode (negative: killed by that signal, as subprocess reports it), stdout, stderr
and wall seconds.

Nothing runs on XLA in this process before the forks (checked): a child forked from a process with live XLA threads
could hang.
"""

import ast
import contextlib
import importlib
import json
import os
import runpy
import sys
import tempfile
import time
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
    assert not xla_bridge._backends, "XLA started before the forks: the children could hang"


def _threads() -> int:
    """This process's threads, Python's and native ones (Linux); 0 where /proc is absent."""
    return len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else 0


def _child(argv: list[str], out: str, err: str) -> None:
    """In the forked child: the launcher as its own __main__, then exit with its status (never returns)."""
    code = 1
    try:
        for fd, path in ((1, out), (2, err)):
            os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
        sys.argv = list(argv)
        runpy.run_path(os.path.join(ROOT, argv[0]), run_name="__main__")
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


def _run(argv: list[str], scratch: str, index: int) -> dict:
    out, err = os.path.join(scratch, f"{index}.out"), os.path.join(scratch, f"{index}.err")
    tic = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        _child(argv, out, err)
    _, status = os.waitpid(pid, 0)
    seconds = time.perf_counter() - tic
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else -os.WTERMSIG(status)
    with open(out) as o, open(err) as e:
        return {"returncode": code, "stdout": o.read(), "stderr": e.read(), "seconds": seconds}


def main(cases_path: str, results_path: str) -> None:
    with open(cases_path) as f:
        spec = json.load(f)
    _preimport({argv[0] for argv in spec["cases"]})
    mock = contextlib.nullcontext()
    if spec["mock_examples"] is not None:
        # TensorFlow (~4 CPU-seconds) once here, for the children that load the mock data; as dcjax.data imports it
        # (its settings made before the import). Importing it starts no thread (checked); the children configure it.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
        threads = _threads()
        import tensorflow  # noqa: F401
        import tensorflow_datasets as tfds

        assert _threads() == threads, "importing TensorFlow started a thread: the children could hang"

        mock = tfds.testing.mock_data(num_examples=int(spec["mock_examples"]))
    sys.stdout.flush()
    sys.stderr.flush()
    with mock, tempfile.TemporaryDirectory() as scratch:
        results = [_run(argv, scratch, i) for i, argv in enumerate(spec["cases"])]
    with open(results_path, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    os.chdir(ROOT)
    main(*sys.argv[1:])
