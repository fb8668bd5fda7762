"""The suite's own machinery: what the CI command relies on to run in its time."""

import pytest


@pytest.mark.xdist_group("suite_grouping")
def test_an_xdist_group_stays_on_one_worker(request):
    """`--dist loadgroup` keeps a group on one worker by appending the group's name to each test's id; if that is lost
    (pytest 9.2 with xdist 3.8), the groups spread over both workers and every shared end-to-end run is made twice,
    silently (CI took ~20 % longer). Outside `-n N --dist loadgroup` there is nothing to check."""
    if not getattr(request.config.option, "loadgroup", False):
        pytest.skip("runs only under -n N --dist loadgroup (CI's command)")
    assert request.node.nodeid.endswith("@suite_grouping"), request.node.nodeid
