"""Tiny launcher settings shared by the end-to-end and crash-and-resume tests (one place to change them), and the
runner that launches them.

Each list is a launcher's flags for a run that takes seconds on mock data (tests/mock_launch.py); tests add
their own --workdir and whatever they vary. ``attack`` and ``study`` are the whole commands of the end-to-end runs
that conftest.py's ``mock_attack`` and ``mock_study`` make once per session, for the end-to-end tests to check and
the crash-and-resume tests to reproduce after a kill.

``launch``, ``launch_each`` and ``start`` run each launch in its own process, forked by this process's launcher server
(tests/launch_server.py, started on the first launch), which imported jax, dcjax and TensorFlow once.
"""

import atexit
import contextlib
import itertools
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MOCK_EXAMPLES = 400  # Mock MNIST examples of the attack and study runs.

# experiments/attack.py: a subset target, a 6-model bank and 2 Shokri shadows of a width-4 ConvNet.
TINY_ATTACK = [
    "experiments/attack.py",
    "--target=subset",
    "--per_class=1",
    "--num_models=6",
    "--target_pool=100",
    "--num_shadow=2",
    "--attacker_pool=100",
    "--width=4",
    "--depth=1",
    "--epochs=2",
    "--attack_steps=20",
    "--num_resamples=5",
    "--num_population=50",
]

# experiments/privacy_study.py at --tier=test; callers pick --rows.
TINY_STUDY = [
    "experiments/privacy_study.py",
    "--tier=test",
    "--per_class=1",
    "--num_models=6",
    "--target_pool=120",
    "--num_shadow=2",
    "--attacker_pool=100",
    "--num_canaries=4",
    "--width=4",
    "--depth=1",
    "--epochs=2",
    "--small_epochs=2",
    "--attack_steps=20",
    "--num_resamples=5",
    "--num_population=50",
]


def attack(workdir) -> list[str]:
    """The end-to-end attack run: TINY_ATTACK in one-model chunks (eight, so a kill can land between them)."""
    return TINY_ATTACK + [f"--workdir={workdir}", "--models_per_chunk=1"]


def study(workdir) -> list[str]:
    """The end-to-end study: the default rows (--rows's default is StudyConfig's: test_flags.py) and a fixed-noise
    DP-SGD row attacked at each of its two checkpoints, with one-iteration DC condensation. Its 8 models train in
    chunks of 2, none split over the 4 test devices: one program per row and step instead of a sharded one beside
    a local one (~20 s less of a cold run's ~110 s on 2 AMD EPYC cores, 2026-12-07). Sharded chunks are checked
    in-process (test_attack_run.py's checkpoint points and DM ladder, test_train.py)."""
    condense = ["--ipc=1", "--iterations=1", "--batch_real=1", "--outer_loop=2", "--inner_loop=1"]
    dp = ["--dp_noise=1", "--dp_checkpoints=1,2", "--dp_batch_size=16", "--dp_lr=0.1"]
    rows = ["--rows=original,subset,dc_noise,dc_real,dpsgd_sigma1"]
    return TINY_STUDY + [f"--workdir={workdir}", "--models_per_chunk=2"] + condense + dp + rows


# Read at run time only (tests/mock_launch.py; pytest's name of the running test, which changes with every test), so
# a served launch may set them apart from its server's environment.
_RUN_TIME_ENV = ("DCJAX_MOCK_TICKS", "PYTEST_CURRENT_TEST")
_SERVER = os.path.join(ROOT, "tests", "launch_server.py")


# The session's environment, as conftest.py set it up before importing this module: the launcher server imports
# under it, whichever test launches first (one that changed its own environment, with monkeypatch, included).
_SESSION_ENV = dict(os.environ)


def launcher_env(**extra: str) -> dict[str, str]:
    """The environment a launcher runs in: this process's, on the CPU, TensorFlow quiet, and ``extra``."""
    return _on_cpu(os.environ, **extra)


def _on_cpu(base, **extra: str) -> dict[str, str]:
    return dict(base, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2", **extra)


def command(args: list[str], mock_examples: int | None = None) -> list[str]:
    """``args`` (a launcher, relative to the repository, and its flags) as run on mock data when mock_examples is
    given: the script and its arguments, as they follow ``python``."""
    return (
        [os.path.join(ROOT, "tests", "mock_launch.py"), str(mock_examples)] if mock_examples is not None else []
    ) + args


def start(args: list[str], mock_examples: int | None, out, err=None, env: dict[str, str] | None = None):
    """Starts a launcher (as ``command``) with stdout to the file ``out`` and stderr to ``err`` (None: ``out`` too),
    forked by this process's launcher server where ``env`` (default ``launcher_env()``) allows, else as a fresh
    interpreter. Returns a handle with subprocess.Popen's pid, poll, wait, send_signal, kill and returncode."""
    argv, env = command(args, mock_examples), env or launcher_env()
    server = _server_for(env)
    if server is not None:
        for path in {out, err or out}:  # There on return, as a Popen's files are.
            open(path, "w").close()
        return server.start(argv, env, str(out), str(err or out))
    with open(out, "w") as o, open(err, "w") if err else contextlib.nullcontext(subprocess.STDOUT) as e:
        return subprocess.Popen(
            [sys.executable] + argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=o, stderr=e
        )


def launch(args: list[str], mock_examples: int | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Runs a launcher (args[0], relative to the repository) as a user does, on mock data when mock_examples is
    given; its output captured as text."""
    with tempfile.TemporaryDirectory() as scratch:
        out, err = os.path.join(scratch, "out"), os.path.join(scratch, "err")
        proc = start(args, mock_examples, out, err)
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
        with open(out) as o, open(err) as e:
            return subprocess.CompletedProcess(
                [sys.executable] + command(args, mock_examples), code, o.read(), e.read()
            )


def launch_each(cases: list[list[str]], mock_examples: int | None = None) -> list[subprocess.CompletedProcess]:
    """``launch`` of each command in ``cases``, in order: for the many runs that end early (rejections of bad input),
    each still its own process."""
    return [launch(case, mock_examples) for case in cases]


class _Server:
    """This process's tests/launch_server.py: it imported what launchers import once and forks a child per launch."""

    def __init__(self, env: dict[str, str]):
        self.env, self.ids, self.replies, self.buffer = env, itertools.count(), {}, b""
        self.proc = subprocess.Popen(
            [sys.executable, _SERVER], cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        while "ready" not in self.replies:
            self.read(None)

    def serves(self, env: dict[str, str]) -> bool:
        """Whether a launch in ``env`` runs here as in a fresh interpreter: the server's environment when it imported,
        up to the variables read at run time and those its imports set themselves (TensorFlow's, the same values)."""
        imported = self.replies["ready"]["env"]
        keys = (set(env) | set(self.env)) - set(_RUN_TIME_ENV)
        return self.proc.poll() is None and all(env.get(k) in (self.env.get(k), imported.get(k)) for k in keys)

    def start(self, argv: list[str], env: dict[str, str], out: str, err: str) -> "_Served":
        rid = str(next(self.ids))
        request = {"id": rid, "argv": argv, "env": env, "cwd": ROOT, "out": out, "err": err}
        self.proc.stdin.write(json.dumps(request).encode() + b"\n")
        self.proc.stdin.flush()
        while "pid" not in self.replies.get(rid, {}):
            self.read(None)
        return _Served(self, rid, self.replies[rid]["pid"], [sys.executable] + argv)

    def read(self, timeout: float | None) -> bool:
        """Takes in the replies that came within ``timeout`` seconds (None: waits for one); whether any came."""
        fd = self.proc.stdout.fileno()
        if not select.select([fd], [], [], timeout)[0]:
            return False
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            raise RuntimeError(f"the launcher server ({_SERVER}) ended, status {self.proc.wait()}")
        *lines, self.buffer = (self.buffer + chunk).split(b"\n")
        for line in lines:
            reply = json.loads(line)
            self.replies.setdefault(str(reply.pop("id")), {}).update(reply)
        return True

    def close(self) -> None:
        self.proc.stdin.close()  # It ends once its children have.
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class _Served:
    """A served launch, with subprocess.Popen's pid, poll, wait, send_signal, kill and returncode."""

    def __init__(self, server: _Server, rid: str, pid: int, args: list[str]):
        self.server, self.rid, self.pid, self.args, self.returncode = server, rid, pid, args, None

    def poll(self) -> int | None:
        if self.returncode is None:
            while self.server.read(0):
                pass
            self.returncode = self.server.replies[self.rid].get("returncode")
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired(self.args, timeout)
            self.server.read(left)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


_server: _Server | None = None


def _server_for(env: dict[str, str]) -> _Server | None:
    """This process's launcher server (started on first use) if it can run a launch in ``env``, else None; None
    always under DCJAX_TEST_FRESH_LAUNCHES=1."""
    global _server
    if os.environ.get("DCJAX_TEST_FRESH_LAUNCHES") == "1":
        return None
    if _server is None:
        _server = _Server(_on_cpu(_SESSION_ENV))
        atexit.register(_server.close)
    return _server if _server.serves(env) else None
