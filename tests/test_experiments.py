"""The launchers as a user runs them: bad input fails in one line; tiny runs finish."""

import json
import os
import shutil

import pytest

import launch_flags


_run = launch_flags.launch


def _error_line(proc):
    """The one `error:` line a rejected run ends with (status 2); a traceback would be a bug, not the user's mistake."""
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), proc.stderr[-3000:]
    return last


# Rejections of bad flags, each a launcher run of its own that must end in one `error:` line naming the flag and
# write nothing. They end before any data or XLA work, so the module runs them together (`rejected`).
CONDENSE_REJECTS = [
    (["--ipc=0"], "ipc"),
    (["--distance=l1"], "distance"),
    (["--init=zeros"], "init"),
    (["--num_eval=0"], "num_eval"),
    (["--method=kip"], "method"),
    (["--method=dsa", "--dsa_strategy=color_warp"], "dsa_strategy"),
]
TRAIN_REJECTS = [(["--epochs=0"], "epochs"), (["--model=resnet99"], "model"), (["--dataset=imagenet9"], "imagenet9")]
ATTACK_REJECTS = [
    (["--num_models=5"], "num_models"),
    (["--num_queries=20"], "num_queries"),
    (["--target=condense", "--ipc=0"], "ipc"),
]
STUDY_REJECTS = [
    (["--dp_delta=1.5"], "--dp_delta"),
    (["--dp_clip=0"], "--dp_clip"),
    (["--rows=original,dpsgd_eps3"], "--rows"),
    (["--rows=dpsgd_sigma2"], "--rows"),  # Not a noise of --dp_noise.
    (["--dp_noise=1,0"], "--dp_noise"),
    (["--dp_noise=1,x"], "--dp_noise"),
    (["--dp_checkpoints=4,2"], "--dp_checkpoints"),
    (["--dp_checkpoints=1.5"], "--dp_checkpoints"),
]
REJECTS = {
    "condense.py": CONDENSE_REJECTS,
    "train.py": TRAIN_REJECTS,
    "attack.py": ATTACK_REJECTS,
    "privacy_study.py": STUDY_REJECTS,
}


@pytest.fixture(scope="module")
def rejected(tmp_path_factory):
    """Every REJECTS case run (launch_flags.launch_each): {(script, args): (its process, its --workdir)}."""
    root = tmp_path_factory.mktemp("rejected")
    keys = [(script, tuple(args)) for script, cases in REJECTS.items() for args, _ in cases]
    workdirs = [root / str(i) / "w" for i in range(len(keys))]
    procs = launch_flags.launch_each([[f"experiments/{s}", f"--workdir={w}", *a] for (s, a), w in zip(keys, workdirs)])
    return dict(zip(keys, zip(procs, workdirs)))


def _assert_rejected(rejected, script, args, flag):
    proc, workdir = rejected[(script, tuple(args))]
    assert proc.returncode != 0
    assert flag in _error_line(proc), proc.stderr[-2000:]
    assert not os.path.exists(workdir)  # Nothing half-written.


@pytest.mark.parametrize("args,flag", CONDENSE_REJECTS)
@pytest.mark.xdist_group("rejected_experiments")  # One worker runs `rejected`.
@pytest.mark.slow
def test_condense_rejects_bad_flags(rejected, args, flag):
    _assert_rejected(rejected, "condense.py", args, flag)


@pytest.mark.parametrize("args,flag", TRAIN_REJECTS[:2])
@pytest.mark.xdist_group("rejected_experiments")
@pytest.mark.slow
def test_train_rejects_bad_flags(rejected, args, flag):
    _assert_rejected(rejected, "train.py", args, flag)


@pytest.mark.xdist_group("rejected_experiments")
@pytest.mark.slow
def test_unknown_dataset_names_itself(rejected):
    _assert_rejected(rejected, "train.py", ["--dataset=imagenet9"], "imagenet9")


@pytest.mark.slow
def test_batch_real_larger_than_smallest_class_is_rejected(tmp_path):
    proc = _run(
        ["experiments/condense.py", f"--workdir={tmp_path}/w", "--batch_real=1000", "--width=8", "--depth=1"],
        mock_examples=100,
    )
    assert proc.returncode != 0 and "batch_real" in _error_line(proc), proc.stderr[-2000:]


@pytest.mark.slow
def test_condense_launcher_runs_end_to_end_on_mock_data(tmp_path):
    workdir = tmp_path / "dc"
    args = [
        "experiments/condense.py",
        f"--workdir={workdir}",
        "--ipc=1",
        "--iterations=2",
        "--width=8",
        "--depth=1",
        "--batch_real=2",
        "--num_eval=2",
        "--eval_epochs=2",
        "--eval_every=1",
        "--init=real",
    ]
    proc = _run(args, mock_examples=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "test accuracy" in proc.stdout
    results = json.loads((workdir / "results.json").read_text())
    assert [e["iteration"] for e in results["evals"]] == [0, 1, 2]
    assert results["random_real_baseline"]["mean"] >= 0
    for name in ("synthetic.npz", "synthetic.png", "metrics.jsonl", "config.json"):
        assert (workdir / name).exists()
    again = _run(args, mock_examples=60)  # A finished workdir is never silently replaced.
    assert again.returncode != 0 and "overwrite" in _error_line(again)


@pytest.mark.slow
def test_dm_launcher_takes_the_method_defaults_and_writes_the_same_outputs(tmp_path):
    workdir = tmp_path / "dm"
    proc = _run(
        [
            "experiments/condense.py",
            f"--workdir={workdir}",
            "--method=dm",
            "--ipc=1",
            "--iterations=2",
            "--width=4",
            "--depth=1",
            "--batch_real=2",
            "--num_eval=1",
            "--eval_epochs=1",
            "--eval_every=0",
            "--dsa_strategy=crop",
            "--noeval_baseline",
        ],
        mock_examples=60,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "dm condensed mnist" in proc.stdout
    results = json.loads((workdir / "results.json").read_text())
    cond = results["config"]["condense"]
    assert (cond["method"], cond["init"], cond["lr_img"], cond["dsa_strategy"]) == ("dm", "real", 1.0, "crop")
    assert results["config"]["eval"]["train"]["augment"] == "dsa_digits"  # The reference evaluates DM with DSA.
    for name in ("synthetic.npz", "synthetic.png", "loss.png", "metrics.jsonl", "config.json"):
        assert (workdir / name).exists(), name


@pytest.mark.slow
def test_train_launcher_on_a_synthetic_set(tmp_path):
    import numpy as np

    npz = tmp_path / "syn.npz"
    np.savez(npz, images=np.zeros((10, 28, 28, 1), np.float32), labels=np.arange(10, dtype=np.int32))
    proc = _run(
        [
            "experiments/train.py",
            f"--workdir={tmp_path}/t",
            "--source=synthetic",
            f"--synthetic={npz}",
            "--num_models=2",
            "--epochs=1",
            "--width=8",
            "--depth=1",
        ],
        mock_examples=50,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "t" / "results.json").read_text())
    assert len(results["accuracies"]) == 2
    bad = _run(
        [
            "experiments/train.py",
            f"--workdir={tmp_path}/u",
            "--source=synthetic",
            f"--synthetic={tmp_path}/missing.npz",
        ],
        mock_examples=50,
    )
    assert bad.returncode != 0 and "synthetic" in _error_line(bad)


@pytest.mark.parametrize("args,flag", ATTACK_REJECTS)
@pytest.mark.xdist_group("rejected_experiments")
@pytest.mark.slow
def test_attack_rejects_bad_flags(rejected, args, flag):
    _assert_rejected(rejected, "attack.py", args, flag)


@pytest.mark.xdist_group("mock_attack")  # Shares the session's `mock_attack` run with test_crash_resume.py.
@pytest.mark.slow
def test_attack_launcher_runs_end_to_end_on_mock_data(mock_attack, tmp_path):
    proc = mock_attack.proc
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Shokri attack accuracy" in proc.stdout and "lira_recipe_online" in proc.stdout
    assert "headline model attack (cross-fitted)" in proc.stdout
    results = json.loads((mock_attack.workdir / "results.json").read_text())
    assert results["config"]["recipe"]["kind"] == "subset"
    assert "used" in results["attacks"]["lira_online"]  # The subset's members as their own slice.
    assert (mock_attack.workdir / "roc.png").stat().st_size > 0
    workdir = tmp_path / "mia"  # A copy: the crash-and-resume test compares its run with the original.
    shutil.copytree(mock_attack.workdir, workdir)
    (workdir / "results.json").unlink()  # Regenerated from the export alone, identically.
    again = _run(["experiments/attack.py", f"--workdir={workdir}", "--report_only"])
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((workdir / "results.json").read_text())["attacks"] == results["attacks"]
    too_big = _run(
        [
            "experiments/attack.py",
            f"--workdir={tmp_path}/big",
            "--target_pool=300",
            "--attacker_pool=300",
            "--width=4",
            "--depth=1",
        ],
        mock_examples=400,
    )
    assert too_big.returncode != 0 and "target_pool" in _error_line(too_big)


@pytest.mark.parametrize("args,flag", STUDY_REJECTS)
@pytest.mark.xdist_group("rejected_experiments")
@pytest.mark.slow
def test_privacy_study_rejects_bad_dp_flags(rejected, args, flag):
    _assert_rejected(rejected, "privacy_study.py", args, flag)


@pytest.mark.xdist_group("mock_study")  # Shares the session's `mock_study` run with test_crash_resume.py.
@pytest.mark.slow
def test_privacy_study_runs_every_row_end_to_end_on_mock_data(mock_study, tmp_path):
    # launch_flags.study: the default rows and a fixed-noise DP-SGD row, one run attacked at each of its checkpoints.
    proc, workdir = mock_study.proc, mock_study.workdir
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((workdir / "results.json").read_text())
    names = ["original", "subset", "dc_noise", "dc_real", "dpsgd_sigma1_ep1", "dpsgd_sigma1_ep2"]
    assert [r["name"] for r in results["rows"]] == names
    assert results["tier"] == "test" and "privacy_study.py" in results["command"]
    # Small sets train with the reference augmentation, the original data without.
    assert results["config"]["train_small"]["augment"] == "dc"
    assert results["config"]["train_original"]["augment"] == "none"
    for name in (
        "RESULTS.md",
        "privacy_accuracy.png",
        "roc_targets.png",
        "synthetic_dc_noise.png",
        "synthetic_dc_real.png",
        "original/roc.png",
        "dc_real/attack_data.npz",
        "dc_real/trials.npz",
    ):
        assert (workdir / name).exists(), name
    dc_real = results["rows"][3]
    assert dc_real["headline"]["release"]["attack"].startswith("nearest_synthetic")
    assert "canaries" in dc_real["attacks"]["loss"] and "natural" in dc_real["attacks"]["loss"]
    assert "| dc_real |" in proc.stdout and "| original |" in proc.stdout
    dp_rows = [r for r in results["rows"] if r.get("row") == "dpsgd_sigma1"]
    assert [(r["name"], r["epochs"], r["dp"]["epochs"], r["dp"]["run_epochs"]) for r in dp_rows] == [
        ("dpsgd_sigma1_ep1", 1, 1, 2),
        ("dpsgd_sigma1_ep2", 2, 2, 2),
    ]
    first, last = (r["dp"] for r in dp_rows)
    assert first["epsilon_pld"] < last["epsilon_pld"] and first["noise_multiplier"] == last["noise_multiplier"] == 1
    assert sorted(os.listdir(workdir / "dpsgd_sigma1_snapshots")) == ["config.json", "ep1", "ep2"]
    assert (workdir / "dpsgd_sigma1_ep2" / "roc.png").exists() and "| dpsgd_sigma1_ep2 " in proc.stdout
    copy = tmp_path / "study"  # The crash-and-resume test compares its run with the original.
    shutil.copytree(workdir, copy)
    again = _run(launch_flags.study(copy), mock_examples=400)  # A finished study is never silently replaced.
    assert again.returncode != 0 and "overwrite" in _error_line(again)
    # One row at a time: the default (one worker process per core) spawns two interpreters that each import jax and
    # compile the attack stage again, ~12 CPU-seconds more here; test_study.py checks that rows re-attacked side by
    # side (workers=2) give these rows bit for bit.
    report = _run(["experiments/privacy_study.py", f"--workdir={copy}", "--report_only", "--report_workers=1"])
    assert report.returncode == 0, report.stderr[-3000:]
    regenerated = json.loads((copy / "results.json").read_text())
    assert [r["natural"] for r in regenerated["rows"]] == [r["natural"] for r in results["rows"]]
    assert "--report_only" in regenerated["report_command"]
