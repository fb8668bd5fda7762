"""Tests marked `users_emitters`, run in child pytests under XLA's default emitters (see tests/conftest.py for why).

Under the loop emitters, conftest.py turns each such test into an `Item` of the same id, markers and keywords, whose
run is a child pytest's result for it. When one process runs all of them (no xdist, or xdist's loadgroup, where they
share the xdist group `users_emitters`), the first to run starts one child for all of them, and each reports its own
outcome from the child's records (`record`); the first one's duration is the whole child's. Under any other
distribution, each starts a child of its own. One child instead of eleven saves each later test the child's start
(pytest, jax, dcjax: ~5 s on 2 cores), and their shared networks are built and their programs traced once.
"""

import json
import os
import subprocess
import sys
import tempfile

import pytest

LOOP_EMITTERS = "--xla_cpu_use_fusion_emitters=false"
GROUP = "users_emitters"
# Set in a child: the file its tests' outcomes are appended to, one JSON line per phase (record).
_RECORDS = "DCJAX_TEST_USERS_EMITTERS_RECORDS"


class Item(pytest.Item):
    """A test marked `users_emitters` (its id: ``target``), run in a child pytest (its fixtures are set up there, not
    here); its failure is the child's output for it, its skip the child's skip."""

    def __init__(self, *, target: str, **kwargs):
        super().__init__(**kwargs)
        self.target = target

    def runtest(self):
        results = self.config.stash.setdefault(_RESULTS, {})
        if self.target not in results:
            batch = [i.target for i in self.session.items if isinstance(i, Item)] if _batched(self.config) else []
            results.update(_run_child(self.config, batch or [self.target]))
        _report(self.target, results[self.target])

    def repr_failure(self, excinfo, style=None):
        return str(excinfo.value) if isinstance(excinfo.value, ChildFailed) else super().repr_failure(excinfo, style)

    def reportinfo(self):
        return self.path, None, self.name


class ChildFailed(Exception):
    """A `users_emitters` test failed in its child pytest."""


_RESULTS = pytest.StashKey[dict]()


def _batched(config) -> bool:
    """Whether this process runs every users_emitters test: without xdist, or under its loadgroup distribution (where
    they share the xdist group `users_emitters`)."""
    return not hasattr(config, "workerinput") or bool(config.getvalue("loadgroup"))


def replace(config, items) -> None:
    """Each test in ``items`` marked `users_emitters` becomes an `Item`; they share one child (and the xdist group
    `users_emitters`) when this process runs them all (``_batched``)."""
    batched = _batched(config)
    for i, item in enumerate(items):
        if item.get_closest_marker("users_emitters") is None:
            continue
        proxy = Item.from_parent(item.parent, name=item.name, target=item.nodeid)
        proxy.own_markers = list(item.own_markers)
        proxy.keywords.update(item.keywords)
        if batched:
            if any(item.iter_markers("xdist_group")):
                raise pytest.UsageError(f"{item.nodeid}: a users_emitters test takes no xdist_group of its own")
            proxy.add_marker(pytest.mark.xdist_group(GROUP))
        items[i] = proxy


def record(report) -> None:
    """In a child: appends ``report``'s phase and outcome (a failure's text, a skip's reason) to its records file."""
    path = os.environ.get(_RECORDS)
    if path is None:
        return
    text = ""
    if report.failed:
        text = report.longreprtext + "".join(f"\n{name}\n{body[-3000:]}" for name, body in report.sections)
    elif report.skipped:
        text = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        text = text.removeprefix("Skipped: ")
    line = {"nodeid": report.nodeid, "when": report.when, "outcome": report.outcome, "text": text}
    with open(path, "a") as f:
        f.write(json.dumps(line) + "\n")


def _run_child(config, targets: list[str]) -> dict[str, dict]:
    """Runs ``targets`` in one child pytest under the default emitters: {target: {"records": [...], "output": ...}}."""
    flags = os.environ["XLA_FLAGS"].replace(LOOP_EMITTERS, "").strip()
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-o", "addopts=", *targets]
    # Its own temporary root, removed after: children never touch the numbered directories of other sessions.
    with tempfile.TemporaryDirectory(prefix="dcjax-users-emitters-") as base:
        records = os.path.join(base, "records.jsonl")
        env = dict(os.environ, XLA_FLAGS=flags, DCJAX_TEST_USERS_EMITTERS="1", **{_RECORDS: records})
        proc = subprocess.run(
            cmd + [f"--basetemp={base}/tmp"], cwd=config.rootpath, env=env, capture_output=True, text=True
        )
        lines = open(records).read().splitlines() if os.path.exists(records) else []
    output = f"under XLA's default emitters ({' '.join(cmd[1:])}), exit {proc.returncode}:\n"
    output += proc.stdout[-8000:] + proc.stderr[-2000:]
    results: dict[str, dict] = {t: {"records": [], "output": output} for t in targets}
    for entry in map(json.loads, lines):
        if entry["nodeid"] in results:
            results[entry["nodeid"]]["records"].append(entry)
    return results


def _report(target: str, result: dict) -> None:
    """Passes, fails or skips as the child's phases for ``target`` did; fails with the child's output where it never
    reported the test's call (a crash, a collection error)."""
    records = result["records"]
    failed = [r for r in records if r["outcome"] == "failed"]
    if failed:
        raise ChildFailed("under XLA's default emitters:\n" + "\n".join(f"[{r['when']}] {r['text']}" for r in failed))
    skipped = [r for r in records if r["outcome"] == "skipped"]
    if skipped:
        pytest.skip(f"in its users_emitters child: {skipped[0]['text']}")
    if not any(r["when"] == "call" and r["outcome"] == "passed" for r in records):
        raise ChildFailed(f"no result for {target} from its child pytest, {result['output']}")
