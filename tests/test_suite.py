"""The suite's own machinery: what the CI command relies on to run in its time."""

import os
import subprocess
import sys

import pytest

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
