"""Tiny launcher settings shared by the end-to-end and crash-and-resume tests (one place to change them), and the
runner that launches them.

Each list is a launcher's flags for a run that takes seconds on mock data (tests/mock_launch.py); tests add
their own --workdir and whatever they vary. ``attack`` and ``study`` are the whole commands of the end-to-end runs
that conftest.py's ``mock_attack`` and ``mock_study`` make once per session, for the end-to-end tests to check and
the crash-and-resume tests to reproduce after a kill.
"""

import os
import subprocess
import sys

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
    DP-SGD row attacked at each of its two checkpoints, with one-iteration DC condensation."""
    condense = ["--ipc=1", "--iterations=1", "--batch_real=1", "--outer_loop=2", "--inner_loop=1"]
    dp = ["--dp_noise=1", "--dp_checkpoints=1,2", "--dp_batch_size=16", "--dp_lr=0.1"]
    rows = ["--rows=original,subset,dc_noise,dc_real,dpsgd_sigma1"]
    return TINY_STUDY + [f"--workdir={workdir}"] + condense + dp + rows


def launch(args: list[str], mock_examples: int | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Runs a launcher (args[0], relative to the repository) as a user does, on mock data when mock_examples is
    given; its output captured as text."""
    cmd = [sys.executable]
    if mock_examples is not None:
        cmd += [os.path.join(ROOT, "tests", "mock_launch.py"), str(mock_examples)]
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run(cmd + args, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


def launch_each(cases: list[list[str]], mock_examples: int | None = None) -> list[subprocess.CompletedProcess]:
    """Runs each command in ``cases`` (launcher first, as for ``launch``) in its own process, forked from one that
    imported the launchers once (tests/launch_cases.py): for commands that end early, such as rejections of bad
    input, whose cost is otherwise the ~3 CPU-seconds of imports each. One CompletedProcess per case, in order."""
    import json
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        spec, results = os.path.join(scratch, "cases.json"), os.path.join(scratch, "results.json")
        with open(spec, "w") as f:
            json.dump({"mock_examples": mock_examples, "cases": cases}, f)
        driver = launch([os.path.join(ROOT, "tests", "launch_cases.py"), spec, results])
        assert driver.returncode == 0, driver.stderr[-3000:]
        with open(results) as f:
            done = json.load(f)
    return [subprocess.CompletedProcess(c, r["returncode"], r["stdout"], r["stderr"]) for c, r in zip(cases, done)]
