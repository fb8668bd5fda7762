"""The suite's own machinery: what the CI command relies on to run in its time."""

import os
import subprocess
import sys
import types

import numpy as np
import pytest

import launch_flags

MOCK = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mock_launch.py")


@pytest.mark.xdist_group("suite_grouping")
def test_an_xdist_group_stays_on_one_worker(request):
    """`--dist loadgroup` keeps a group on one worker by appending the group's name to each test's id; if that is lost
    (pytest 9.2 with xdist 3.8), the groups spread over both workers and every shared end-to-end run is made twice,
    silently (CI took ~20 % longer). Outside `-n N --dist loadgroup` there is nothing to check."""
    if not getattr(request.config.option, "loadgroup", False):
        pytest.skip("runs only under -n N --dist loadgroup (CI's command)")
    assert request.node.nodeid.endswith("@suite_grouping"), request.node.nodeid


@pytest.mark.parametrize("ticks", ["0", "1"])
def test_mock_launches_trace_progress_ticks_only_when_asked(tmp_path, ticks):
    """conftest.py runs launchers on mock data without progress ticks, so JAX's persistent cache (which skips programs
    holding host callbacks) can serve a command run again; golden.py's tiers and the Ctrl-C tests ask for them."""
    script = tmp_path / "probe.py"
    script.write_text("from dcjax import progress\nprint('ticks', progress.enabled())\n")
    env = {**os.environ, "DCJAX_MOCK_TICKS": ticks}
    proc = subprocess.run([sys.executable, MOCK, "10", str(script)], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["ticks", str(ticks == "1")]


@pytest.mark.users_emitters
# b and c only for test_the_users_emitters_children_report_each_tests_own_outcome: the fast tier starts one child.
@pytest.mark.parametrize(
    "probe", ["a", pytest.param("b", marks=pytest.mark.slow), pytest.param("c", marks=pytest.mark.slow)]
)
def test_a_users_emitters_test_runs_under_xlas_default_emitters(probe):
    """conftest.py runs a test marked `users_emitters` in a child pytest whose XLA_FLAGS lack the loop emitters.
    DCJAX_TEST_PROBE_PIDS names a file each probe adds its name and process to; DCJAX_TEST_PROBE_OUTCOMES ("a=fail,
    b=skip") tells probes to fail or skip (test_the_users_emitters_children_report_each_tests_own_outcome)."""
    assert "xla_cpu_use_fusion_emitters=false" not in os.environ["XLA_FLAGS"]
    if "DCJAX_TEST_PROBE_PIDS" in os.environ:
        with open(os.environ["DCJAX_TEST_PROBE_PIDS"], "a") as f:
            f.write(f"{probe} {os.getpid()}\n")
    outcome = dict(o.split("=") for o in os.environ.get("DCJAX_TEST_PROBE_OUTCOMES", "").split(",") if o).get(probe)
    assert outcome != "fail", "asked to fail"
    if outcome == "skip":
        pytest.skip("asked to skip")


def test_the_other_tests_compile_with_xlas_loop_emitters():
    """The rest of the session compiles with the loop emitters (a third off the suite's compile time), unless the
    session was given its own choice of emitters in XLA_FLAGS."""
    if os.environ.get("DCJAX_TEST_USERS_EMITTERS") == "1":
        pytest.skip("a users_emitters child runs only the users_emitters tests")
    flags = os.environ["XLA_FLAGS"].split()
    assert "--xla_cpu_use_fusion_emitters=false" in flags or "--xla_cpu_use_fusion_emitters=true" in flags, flags


@pytest.mark.slow  # Nested pytest processes (~10 s batched, ~25 s each in its own child).
@pytest.mark.parametrize("dist", [[], ["-n", "1", "--dist", "load"]], ids=["one child", "a child each"])
def test_the_users_emitters_children_report_each_tests_own_outcome(tmp_path, dist):
    """Run in one process (here without xdist; CI's loadgroup, where they share a group), the users_emitters tests
    share one child; under another distribution each has its own. Either way each test reports its own outcome: one
    fails with its assertion in the report, one skips with its reason, one passes."""
    if "--xla_cpu_use_fusion_emitters=false" not in os.environ["XLA_FLAGS"].split():
        pytest.skip("this session compiles with XLA's default emitters: no child to check")
    probes = "tests/test_suite.py::test_a_users_emitters_test_runs_under_xlas_default_emitters"
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rfs", "-o", "addopts=", *dist, probes]
    pids = tmp_path / "pids"
    env = {**os.environ, "DCJAX_TEST_PROBE_OUTCOMES": "a=fail,b=skip", "DCJAX_TEST_PROBE_PIDS": str(pids)}
    proc = subprocess.run(cmd, cwd=launch_flags.ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert "1 failed, 1 passed, 1 skipped" in proc.stdout, proc.stdout[-3000:]
    assert f"FAILED {probes}[a]" in proc.stdout and "asked to fail" in proc.stdout, proc.stdout[-3000:]
    assert "in its users_emitters child: asked to skip" in proc.stdout, proc.stdout[-3000:]
    children = dict(line.split() for line in pids.read_text().splitlines())
    assert sorted(children) == ["a", "b", "c"]
    assert len(set(children.values())) == (3 if dist else 1), children


_PROBE = """
import os, sys
print(__name__, sys.argv[1:], sys.path[0], os.getcwd(), os.environ.get("DCJAX_MOCK_TICKS"), repr(sys.stdin.read()))
print(os.getppid())
sys.stderr.write("to stderr\\n")
sys.exit(int(sys.argv[1]))
"""


@pytest.mark.parametrize("fresh", [False, True], ids=["served", "fresh"])
def test_a_served_launch_runs_as_a_fresh_interpreter_does(tmp_path, monkeypatch, fresh):
    """launch_flags forks launchers from this process's launcher server (tests/launch_server.py) unless
    DCJAX_TEST_FRESH_LAUNCHES=1: either way the script runs as ``__main__`` with its arguments, its directory first
    on sys.path, the repository as working directory, an empty stdin, the run-time environment asked for, its exit
    status and its two streams apart."""
    if fresh:
        monkeypatch.setenv("DCJAX_TEST_FRESH_LAUNCHES", "1")
    else:  # Started by an earlier test, under that test's PYTEST_CURRENT_TEST, or now.
        assert launch_flags._server_for(launch_flags.launcher_env()) is not None
    script = tmp_path / "probe.py"
    script.write_text(_PROBE)
    proc = launch_flags.launch([str(script), "3"])
    assert proc.returncode == 3 and proc.stderr == "to stderr\n", proc.stderr[-3000:]
    first, parent = proc.stdout.splitlines()
    assert first == f"__main__ ['3'] {tmp_path} {launch_flags.ROOT} 0 ''"
    assert (int(parent) == os.getpid()) == fresh  # Served: the server's child.
    log = tmp_path / "log"
    started = launch_flags.start([str(script), "0"], None, log, env=launch_flags.launcher_env(DCJAX_MOCK_TICKS="1"))
    assert started.wait(60) == 0 and started.poll() == 0
    assert log.read_text().splitlines()[::2] == [f"__main__ ['0'] {tmp_path} {launch_flags.ROOT} 1 ''", "to stderr"]


def test_a_launch_in_another_environment_is_never_served(tmp_path, monkeypatch):
    """A variable read when modules are imported (here any but DCJAX_MOCK_TICKS) could differ from the server's
    environment, which imported them: such a launch runs in a fresh interpreter."""
    script = tmp_path / "probe.py"
    script.write_text(_PROBE)
    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_fast_math=false")
    proc = launch_flags.launch([str(script), "0"])
    assert proc.returncode == 0 and int(proc.stdout.splitlines()[1]) == os.getpid(), proc.stderr[-3000:]


def test_the_launcher_server_imports_in_the_sessions_environment_whichever_test_starts_it(monkeypatch):
    """The first launch of a test process starts its server: if that test changed its environment, the server still
    imports in the session's, so that later launches in the session's environment are served (and the changed one is
    not, test_a_launch_in_another_environment_is_never_served)."""
    started = []
    monkeypatch.setattr(launch_flags, "_server", None)
    monkeypatch.setattr(
        launch_flags, "_Server", lambda env: started.append(env) or types.SimpleNamespace(serves=bool, close=None)
    )
    monkeypatch.setattr(launch_flags.atexit, "register", lambda fn: None)
    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_fast_math=false")
    launch_flags._server_for(launch_flags.launcher_env())
    assert [env["XLA_FLAGS"] for env in started] == [launch_flags._SESSION_ENV["XLA_FLAGS"]]
    assert "--xla_cpu_enable_fast_math=false" not in started[0]["XLA_FLAGS"]


@pytest.mark.slow  # The same small condensation twice (~25 s).
def test_a_served_launcher_run_is_bitwise_a_fresh_ones(tmp_path, monkeypatch):
    """Nothing a launcher computes depends on the server's imports: the same condensation, served and fresh."""
    flags = ["--ipc=1", "--iterations=2", "--width=4", "--depth=1", "--batch_real=2", "--outer_loop=1"]
    flags += ["--inner_loop=1", "--num_eval=1", "--eval_epochs=1"]
    assert launch_flags._server_for(launch_flags.launcher_env()) is not None  # Served, whichever test came before.
    served = launch_flags.launch(["experiments/condense.py", f"--workdir={tmp_path / 'served'}", *flags], 60)
    monkeypatch.setenv("DCJAX_TEST_FRESH_LAUNCHES", "1")
    fresh = launch_flags.launch(["experiments/condense.py", f"--workdir={tmp_path / 'fresh'}", *flags], 60)
    assert served.returncode == fresh.returncode == 0, served.stderr[-3000:] + fresh.stderr[-3000:]
    with np.load(tmp_path / "served" / "synthetic.npz") as a, np.load(tmp_path / "fresh" / "synthetic.npz") as b:
        assert sorted(a.files) == sorted(b.files)
        for name in a.files:
            np.testing.assert_array_equal(a[name], b[name])
