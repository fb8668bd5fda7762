"""Test setup: CPU only, 4 fake CPU devices (for sharding tests), XLA without LLVM's optimisations and with its loop
emitters (tests marked `users_emitters` excepted), a compilation cache shared by the session, all before jax is
imported; the session's shared networks and end-to-end launcher runs (fixtures)."""

import os
import pathlib
import shutil
import subprocess
import tempfile
from typing import NamedTuple

import users_emitters  # Imports no jax: the environment below is still set before jax is imported.

os.environ["JAX_PLATFORMS"] = "cpu"
_flag = "--xla_force_host_platform_device_count=4"
if _flag not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()
# XLA:CPU compilation is most of the suite's time (tiny networks compile for seconds, run for milliseconds); LLVM's
# optimisation of the generated code is ~a third of it. The tests check what the programs compute, not how fast, so
# they compile without it (launchers run as subprocesses inherit it); tests/golden.py's tiers, which compare results
# bitwise with a user's run, clear XLA_FLAGS and compile as users do. A level set in XLA_FLAGS is kept.
if "xla_backend_optimization_level" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_backend_optimization_level=0"
# XLA:CPU's loop emitters compile the suite's programs ~a third faster again than its default fusion emitters (the
# whole suite under them: 13.8 min against 20.6 on an AMD EPYC, 2026-12-07; 17.6 with the tests below in children).
# Both compute the same functions; they round differently in places, and a program and its variant (a run resumed
# from a checkpoint, a loop with progress ticks) agree bit for bit under the default emitters but not always under the
# loop ones. So the tests of those bitwise properties, marked `users_emitters`, run in a child pytest under the
# default emitters, as users compile: one child for all of them under CI's loadgroup (tests/users_emitters.py).
_LOOP_EMITTERS = users_emitters.LOOP_EMITTERS
_USERS_EMITTERS_CHILD = os.environ.get("DCJAX_TEST_USERS_EMITTERS") == "1"
if not _USERS_EMITTERS_CHILD and "xla_cpu_use_fusion_emitters" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " " + _LOOP_EMITTERS
# TensorFlow (used by TFDS to read files) must not try to use a GPU or spam the log.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
# XLA compiles dominate the suite: a persistent compilation cache lets a program compiled once (the same tiny network
# in another module, or a launcher run as a subprocess, which inherits this environment) be read back instead of
# compiled again. Keyed on the program, the compile options and jax's version, so a hit is the same executable.
# A fresh directory per session (xdist's workers inherit the controller's), removed at its end; set
# JAX_COMPILATION_CACHE_DIR yourself to keep one across sessions.
_OWN_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWN_CACHE:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="dcjax-test-xla-cache-")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")  # Every program: most compile in < 1 s.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")
# JAX never writes a program holding a host callback to that cache, and every training loop and condensation iteration
# of a launcher holds one (dcjax.progress's ticks): so launcher runs on mock data (tests/mock_launch.py) trace without
# ticks, and a command run again (the crash-and-resume tests redo the end-to-end runs) reads its programs back. Ticks
# change no number at real loop lengths (progress.py names one toy exception, 3e-7), and every comparison the suite
# makes passes with them off; the tests of Ctrl-C and of the progress lines, and golden.py's tiers, keep them.
# The tests' own programs leave them out as well (pytest_configure).
os.environ.setdefault("DCJAX_MOCK_TICKS", "0")

import pytest  # noqa: E402  (after the environment above: nothing here may import jax first)

import launch_flags  # noqa: E402  (imports no jax)


def pytest_configure(config):
    """The tests' own jitted programs trace without progress ticks too (see DCJAX_MOCK_TICKS above), so a program that
    another test (or the other worker) compiled is read back from the cache; tests/test_progress.py turns them on."""
    from dcjax import progress

    progress.set_enabled(False)


@pytest.hookimpl(tryfirst=True)  # Before xdist's loadgroup appends "@group" to the ids: the child needs the plain one.
def pytest_collection_modifyitems(config, items):
    """Under the loop emitters, each test marked `users_emitters` becomes a users_emitters.Item of the same id,
    markers and keywords (so -m, -k and xdist groups select it as before), run in a child pytest."""
    if _LOOP_EMITTERS in os.environ["XLA_FLAGS"]:
        users_emitters.replace(config, items)


def pytest_runtest_logreport(report):
    """In a users_emitters child, each phase's outcome goes to the parent's items (users_emitters.record)."""
    if _USERS_EMITTERS_CHILD:
        users_emitters.record(report)


def pytest_unconfigure(config):
    if _OWN_CACHE:
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


@pytest.fixture(scope="session")
def fns():
    """The condensation tests' network (helpers.TINY) on helpers.K classes of helpers.SHAPE, built once."""
    from dcjax import models

    import helpers

    return models.make_model(helpers.TINY, helpers.SHAPE, helpers.K)


@pytest.fixture(scope="session")
def fns_d1():
    """helpers.TINY_D1 (one block) on helpers.K classes, built once."""
    from dcjax import models

    import helpers

    return models.make_model(helpers.TINY_D1, helpers.SHAPE, helpers.K)


@pytest.fixture(scope="session")
def tiny():
    """helpers.TINY_D1 on 4 classes (training, DP-SGD and progress tests), built once."""
    from dcjax import models

    import helpers

    return models.make_model(helpers.TINY_D1, helpers.SHAPE, 4)


class LauncherRun(NamedTuple):
    """A finished launcher run that several tests read: its workdir (copy it to change anything) and its process."""

    workdir: pathlib.Path
    proc: subprocess.CompletedProcess


def _launcher_run(tmp_path_factory, name: str, args) -> LauncherRun:
    workdir = tmp_path_factory.mktemp(name) / name
    return LauncherRun(workdir, launch_flags.launch(args(workdir), launch_flags.MOCK_EXAMPLES))


# The end-to-end runs, made once: test_experiments.py checks what they write, test_crash_resume.py kills the same
# command and resumes it to the same files bit for bit. Their tests share an xdist_group, so one worker makes each.
@pytest.fixture(scope="session")
def mock_attack(tmp_path_factory):
    """experiments/attack.py with launch_flags.attack on mock data, uninterrupted."""
    return _launcher_run(tmp_path_factory, "mia", launch_flags.attack)


@pytest.fixture(scope="session")
def mock_study(tmp_path_factory):
    """experiments/privacy_study.py with launch_flags.study on mock data, uninterrupted."""
    return _launcher_run(tmp_path_factory, "study", launch_flags.study)
