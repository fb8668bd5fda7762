"""The suite's own machinery: what the CI command relies on to run in its time."""

import os
import subprocess
import sys

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
def test_a_users_emitters_test_runs_under_xlas_default_emitters():
    """conftest.py runs a test marked `users_emitters` in a child pytest whose XLA_FLAGS lack the loop emitters."""
    assert "xla_cpu_use_fusion_emitters=false" not in os.environ["XLA_FLAGS"]
    assert os.environ.get("DCJAX_TEST_PROBE_FAILS") != "1", "asked to fail"


def test_the_other_tests_compile_with_xlas_loop_emitters():
    """The rest of the session compiles with the loop emitters (a third off the suite's compile time), unless the
    session was given its own choice of emitters in XLA_FLAGS."""
    if os.environ.get("DCJAX_TEST_USERS_EMITTERS") == "1":
        pytest.skip("a users_emitters child runs only its one test")
    flags = os.environ["XLA_FLAGS"].split()
    assert "--xla_cpu_use_fusion_emitters=false" in flags or "--xla_cpu_use_fusion_emitters=true" in flags, flags


@pytest.mark.slow  # Two nested pytest processes (~10 s).
def test_a_failing_users_emitters_test_fails_with_its_childs_output():
    """The child's failure is the test's: non-zero exit, its assertion in the report."""
    if "--xla_cpu_use_fusion_emitters=false" not in os.environ["XLA_FLAGS"].split():
        pytest.skip("this session compiles with XLA's default emitters: no child to check")
    probe = "tests/test_suite.py::test_a_users_emitters_test_runs_under_xlas_default_emitters"
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-o", "addopts=", probe]
    env = {**os.environ, "DCJAX_TEST_PROBE_FAILS": "1"}
    proc = subprocess.run(cmd, cwd=launch_flags.ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert "under XLA's default emitters" in proc.stdout and "asked to fail" in proc.stdout, proc.stdout[-3000:]
