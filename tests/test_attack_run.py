"""dcjax.privacy.attack_run: a whole (tiny) attack run and its recipes: outputs, resume, determinism."""

import dataclasses
import os
import shutil

import jax
import numpy as np
import pytest

from dcjax import checkpoint, condense, data, dpsgd, engine, host, models, snapshots
from dcjax import train as train_lib
from dcjax.privacy import attack_data, attack_run, attacks, bank, lira, shokri
from dcjax.privacy.config import AttackRunConfig

NUM_CLASSES = 10


def _dataset(n, key):
    images = jax.random.normal(jax.random.key(key), (n, 12, 12, 1))
    labels = np.arange(n, dtype=np.int32) % NUM_CLASSES
    # A class-dependent bright pixel so the tiny nets learn something.
    images = images.at[np.arange(n), labels, labels, 0].add(4.0)
    return data.ArrayDataset(np.asarray(images), labels, NUM_CLASSES, "mnist")


@pytest.fixture(scope="module")
def fns():
    return models.make_model(models.ModelConfig(width=4, depth=1), (12, 12, 1), NUM_CLASSES)


def _config(**overrides):
    base = AttackRunConfig(
        model=models.ModelConfig(width=4, depth=1),
        train=train_lib.TrainConfig(epochs=3, batch_size=16),
        num_models=6,
        target_pool=60,
        num_shadow=2,
        attacker_pool=60,
        num_queries=2,
        num_population=20,
        attack=shokri.AttackConfig(hidden=4, steps=30),
        num_resamples=10,
    )
    return dataclasses.replace(base, **overrides)


def _run(fns, workdir, config, overwrite=False):
    train, test = _dataset(200, 5), _dataset(50, 6)
    return attack_run.run_attack(config, fns, (train, test), str(workdir), overwrite)


@pytest.fixture(scope="module")
def finished(fns, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("attack")
    return workdir, _run(fns, workdir, _config())


@pytest.mark.xdist_group("attack_run_finished")  # Shares the module's `finished` run (-n: one worker).
@pytest.mark.slow
def test_attack_run_writes_every_artifact(finished):
    workdir, results = finished
    for name in ("config.json", "split.npz", "attack_data.npz", "trials.npz", "results.json", "roc.png", "RESULTS.md"):
        assert (workdir / name).exists(), name
    document = (workdir / "RESULTS.md").read_text()
    assert f"--report_only --workdir={workdir}" in document
    assert "| original | " in document and results["headline"]["model"]["attack"] in document
    assert sorted(os.listdir(workdir / "models")) == [f"model_{i:03d}.npz" for i in range(8)]
    with np.load(workdir / "split.npz") as split:
        keep = split["keep"]
        assert (keep.sum(0) == 3).all()  # LiRA-balanced: each example IN for M/2 models.
        assert not set(split["target"]) & set(split["attacker"])  # Shokri's attacker is disjoint.
    export = attack_data.load(str(workdir / "attack_data.npz"))
    names = attacks.attack_names(export)
    assert names == attacks.LIRA_ATTACKS + attacks.RMIA_ATTACKS + attacks.THRESHOLD_ATTACKS  # 'original'
    with np.load(workdir / "trials.npz") as trials:
        assert trials["is_member"].shape == (6 * 60,) and trials["is_member"].sum() == 180
        for name in names:
            assert np.isfinite(trials[f"score_{name}"]).all(), name
    model = attack_run.load_model(str(workdir), 0)
    assert model["logits"].shape == (2, 60, NUM_CLASSES)  # [Q, N, K]
    assert model["population_logits"].shape == (2, 20, NUM_CLASSES)  # [Q, P, K]
    # The export keeps each model's true-class scores (and Shokri's query-0 logits), not its logits.
    phi = lira.logit_scale(model["logits"], export.target_labels).astype(np.float32)
    np.testing.assert_array_equal(export.target_phi[0], phi)
    np.testing.assert_array_equal(export.shokri_target_logits[0], model["logits"][0])
    for name in names:
        summary = results["attacks"][name]["natural"]
        assert 0.0 <= summary["auc"] <= 1.0 and summary["num_members"] == 180
        assert summary["auc_ci_low"] <= summary["auc"] <= summary["auc_ci_high"]
    assert results["headline"]["model"]["attack"] in names and results["headline"]["release"] is None
    assert 0.0 <= results["shokri_accuracy"]["mean"] <= 1.0
    assert len(results["utility"]["test_accuracy"]) == 6


@pytest.mark.xdist_group("attack_run_finished")  # Shares the module's `finished` run (-n: one worker).
@pytest.mark.slow  # The module's finished attack run takes ~20 s to build.
def test_killed_attack_run_resumes_per_model_to_identical_scores(fns, finished, tmp_path):
    workdir, _ = finished
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(workdir, copy)
    # As if killed after the first chunk: later models and the final outputs are missing.
    for name in (
        "results.json",
        "trials.npz",
        "attack_data.npz",
        "roc.png",
        "models/model_007.npz",
        "models/model_003.npz",
    ):
        os.remove(copy / name)
    _run(fns, copy, _config())
    with np.load(workdir / "trials.npz") as a, np.load(copy / "trials.npz") as b:
        assert a.files == b.files
        for name in a.files:
            np.testing.assert_array_equal(a[name], b[name])


@pytest.mark.xdist_group("attack_run_finished")  # Shares the module's `finished` run (-n: one worker).
@pytest.mark.slow  # The module's finished attack run takes ~20 s to build.
def test_report_only_regenerates_the_results_from_the_export_alone(finished, tmp_path):
    workdir, results = finished
    copy = tmp_path / "export_only"
    copy.mkdir()
    import shutil

    shutil.copy(workdir / "attack_data.npz", copy / "attack_data.npz")  # No models, no split, no data.
    again = attack_run.report_only(str(copy))
    for key in ("attacks", "headline", "utility", "shokri_accuracy", "canary_detection", "empirical_epsilon"):
        assert again[key] == results[key], key
    with np.load(workdir / "trials.npz") as a, np.load(copy / "trials.npz") as b:
        for name in a.files:
            np.testing.assert_array_equal(a[name], b[name])


def test_a_file_that_is_not_an_export_is_refused_by_name(tmp_path):
    bad = tmp_path / "attack_data.npz"
    bad.write_text("not an archive")
    with pytest.raises(ValueError, match="attack_data.npz"):
        attack_data.load(str(bad))
    np.savez(tmp_path / "other.npz", keep=np.ones(3))
    with pytest.raises(ValueError, match="missing"):
        attack_data.load(str(tmp_path / "other.npz"))


@pytest.mark.xdist_group("attack_run_finished")  # Shares the module's `finished` run (-n: one worker).
@pytest.mark.slow
def test_models_do_not_depend_on_the_chunking(fns, finished, tmp_path):
    workdir, _ = finished
    _run(fns, tmp_path / "again", _config(models_per_chunk=1))
    for i in range(8):
        a = attack_run.load_model(str(workdir), i)
        b = attack_run.load_model(str(tmp_path / "again"), i)
        np.testing.assert_allclose(a["logits"], b["logits"], rtol=1e-5, atol=1e-5)


@pytest.mark.xdist_group("attack_run_finished")  # Shares the module's `finished` run (-n: one worker).
@pytest.mark.slow  # The module's finished attack run takes ~20 s to build.
def test_finished_attack_run_is_not_overwritten(fns, finished):
    from dcjax import workdir as workdir_lib

    workdir, _ = finished
    with pytest.raises(workdir_lib.WorkdirError, match="overwrite"):
        _run(fns, workdir, _config())


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"num_models": 3}, "num_models"),
        ({"num_models": 4}, "num_models"),
        ({"num_shadow": 0}, "num_shadow=0 needs attacker_pool=0 .*, got attacker_pool=60; or both >= 1"),
        ({"attacker_pool": 0}, "attacker_pool=0 needs num_shadow=0 .*, got num_shadow=2"),
        ({"num_shadow": -1}, "num_shadow must be >= 0"),
        (
            {"num_shadow": 0, "attacker_pool": 0, "shokri_sample": 61},
            "shokri_sample must be in \\[2, target_pool=60\\]",
        ),
        ({"num_shadow": 0, "attacker_pool": 0, "shokri_sample": 1}, "shokri_sample"),
        ({"num_queries": 0}, "num_queries"),
        ({"strategy": "pmap"}, "strategy"),
    ],
)
def test_bad_attack_config_is_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _config(**kwargs)


def test_shokri_sample_is_read_only_without_shadows():
    assert _config(shokri_sample=10**6).shokri_sample == 10**6  # With shadows it is unused, so not checked.
    config = _config(num_shadow=0, attacker_pool=0, shokri_sample=60)
    assert config.shokri_from_bank and not _config().shokri_from_bank


def test_pools_larger_than_the_dataset_are_rejected(fns, tmp_path):
    with pytest.raises(ValueError, match="target_pool"):
        _run(fns, tmp_path / "w", _config(target_pool=150, attacker_pool=100))
    assert not (tmp_path / "w").exists()


@pytest.mark.slow
def test_condense_recipe_run_attacks_the_synthetic_sets_and_slices_canaries(fns, tmp_path):
    cfg = condense.CondenseConfig(ipc=1, iterations=1, batch_real=1, init="real", outer_loop=2, inner_loop=1)
    config = _config(
        recipe=bank.Recipe(kind="condense", condense=cfg), num_canaries=6, models_per_chunk=8, target_pool=100
    )
    results = _run(fns, tmp_path / "dc", config)
    lira_result = results["attacks"]["lira_online_fixed_var"]
    assert lira_result["canaries"]["num_members"] == 6 * 3  # 6 canaries, each IN for M/2 = 3 targets.
    assert lira_result["natural"]["num_members"] == (100 - 6) * 3  # The headline slice has no canary.
    # Each target's real-init images that are not canaries.
    assert lira_result["used"]["num_members"] <= 6 * NUM_CLASSES
    assert "auc" in results["attacks"]["nearest_synthetic"]["used"]
    for name in attacks.RELEASE_ATTACKS + attacks.RECIPE_ATTACKS:
        assert name in results["attacks"], name
    assert results["headline"]["release"]["attack"] in attacks.RELEASE_ATTACKS
    detected = results["canary_detection"]["loss"]
    assert detected["members"] == 18 and 0 <= detected["detected"] <= 18
    with np.load(tmp_path / "dc" / "split.npz") as split:
        true_labels = _dataset(200, 5).labels[split["target"]]
        changed = np.flatnonzero(split["target_labels"] != true_labels)
        np.testing.assert_array_equal(changed, split["canaries"])
        split_keep, target, target_labels = split["keep"], split["target"], split["target_labels"]
    model = attack_run.load_model(str(tmp_path / "dc"), 0)
    assert model["synthetic"].shape == (NUM_CLASSES, 12, 12, 1)
    assert np.isfinite(model["synthetic"]).all()
    # Real init: the set started from the used images (one per class) and moved away from them.
    used = np.flatnonzero(model["used"])
    assert used.size == NUM_CLASSES and not (model["used"] & ~split_keep[0]).any()
    start = _dataset(200, 5).images[target[used]]
    assert not np.allclose(model["synthetic"], start[np.argsort(target_labels[used])])


def test_a_recipe_the_private_halves_cannot_feed_fails_before_writing(fns, tmp_path):
    cfg = condense.CondenseConfig(ipc=1, iterations=1, batch_real=8, init="noise")
    config = _config(recipe=bank.Recipe(kind="condense", condense=cfg))
    # ~60 examples per pool, so each private half holds ~3 per class: 8 cannot be drawn.
    with pytest.raises(ValueError, match="batch_real=8 exceeds"):
        _run(fns, tmp_path / "w", config)
    with pytest.raises(ValueError, match="per_class=5 exceeds"):
        _run(fns, tmp_path / "w", _config(recipe=bank.Recipe(kind="subset", per_class=5)))
    assert not (tmp_path / "w").exists()


@pytest.mark.users_emitters  # A run resumed mid-way against the straight run, bit for bit (tests/conftest.py).
@pytest.mark.slow
def test_checkpoint_points_train_one_dp_run_whose_last_point_is_the_straight_run(fns, tmp_path, monkeypatch):
    """Points at epochs 1 and 3 of a 3-epoch DP-SGD run: the second continues the first's snapshots, and its models
    are the straight run's, bitwise (chunks of 4 on the 4 test devices: sharded and unsharded chunks alike)."""
    dp = dpsgd.DPConfig(num_examples=30, capacity=61, overflow_budget=1e-3)  # B_max covers any half of 60 (+1).
    run = _config(train=train_lib.TrainConfig(epochs=3, batch_size=10, dp=dp), num_resamples=5)
    starts = []
    resume = engine.resume_models
    monkeypatch.setattr(
        engine, "resume_models", lambda fns, c, start, *a: starts.append(start.epochs) or resume(fns, c, start, *a)
    )
    train, test = _dataset(200, 5), _dataset(50, 6)
    snaps = str(tmp_path / "snapshots")
    shared = snapshots.Snapshots(snaps)
    for e in (1, 3):
        point = dataclasses.replace(run, train=dataclasses.replace(run.train, stop_epochs=e))
        attack_run.run_attack(point, fns, (train, test), str(tmp_path / f"ep{e}"), snapshots=shared)
    assert starts == [0, 0, 0, 1, 1, 1]  # Three chunks per point; the second point continues the first's.
    assert sorted(os.listdir(snaps)) == ["config.json", "ep1", "ep3"]
    attack_run.run_attack(run, fns, (train, test), str(tmp_path / "straight"))
    for i in range(8):
        point, straight = (attack_run.load_model(str(tmp_path / d), i) for d in ("ep3", "straight"))
        np.testing.assert_array_equal(point["logits"], straight["logits"])
        assert point["final_train_loss"] == pytest.approx(straight["final_train_loss"], rel=1e-5)
    # A killed point resumes from its own snapshots without training again.
    first = attack_run.load_model(str(tmp_path / "ep1"), 5)
    for name in ("results.json", "models/model_005.npz"):
        os.remove(tmp_path / "ep1" / name)
    monkeypatch.setattr(engine, "resume_models", None)  # Calling it would fail.
    point = dataclasses.replace(run, train=dataclasses.replace(run.train, stop_epochs=1))
    attack_run.run_attack(point, fns, (train, test), str(tmp_path / "ep1"), snapshots=shared)
    np.testing.assert_array_equal(attack_run.load_model(str(tmp_path / "ep1"), 5)["logits"], first["logits"])
    other = dataclasses.replace(point, seed=1)  # Another run's snapshots are never continued.
    with pytest.raises(snapshots.SnapshotError, match="another run"):
        attack_run.run_attack(other, fns, (train, test), str(tmp_path / "other"), snapshots=shared)


def _dm_point(iterations):
    """A DM attack run (means init) condensing for ``iterations``."""
    cfg = condense.CondenseConfig(ipc=1, iterations=iterations, batch_real=1, init="means", method="dm", lr_img=1.0)
    return _config(recipe=bank.Recipe(kind="condense", condense=cfg), models_per_chunk=8, target_pool=100)


@pytest.fixture(scope="module")
def dm_ladder(fns, tmp_path_factory):
    """Three tiny DM attack runs (~30 s): points at 1 then 2 iterations sharing snapshots (it1, it2), and a straight
    run at 2 (straight). Returns (their root, the it1 run's results)."""
    root = tmp_path_factory.mktemp("dm_ladder")
    shared = snapshots.Snapshots(str(root / "snapshots"), save_at=(1, 2))
    train, test = _dataset(200, 5), _dataset(50, 6)
    first = attack_run.run_attack(_dm_point(1), fns, (train, test), str(root / "it1"), snapshots=shared)
    attack_run.run_attack(_dm_point(2), fns, (train, test), str(root / "it2"), snapshots=shared)
    _run(fns, root / "straight", _dm_point(2))
    return root, first


@pytest.mark.xdist_group("attack_run_dm_ladder")  # Shares the module's `dm_ladder` runs (-n: one worker).
@pytest.mark.slow
def test_ladder_points_resume_from_snapshots_to_the_straight_runs_models(dm_ladder):
    """A run at 2 iterations after one at 1, sharing snapshots, condenses what a straight run at 2 does."""
    root, _ = dm_ladder
    assert sorted(os.listdir(root / "snapshots")) == [f"model_{i:03d}_it_{t:05d}.npz" for i in range(8) for t in (1, 2)]
    with np.load(root / "snapshots" / "model_005_it_00001.npz") as z:
        assert (
            str(z["identity"])
            == attack_run.snapshot_identity(_dm_point(1))
            == attack_run.snapshot_identity(_dm_point(2))
        )
    other = dataclasses.replace(_dm_point(1), seed=1)
    assert attack_run.snapshot_identity(_dm_point(1)) != attack_run.snapshot_identity(other)
    for i in range(8):
        resumed = attack_run.load_model(str(root / "it2"), i)
        straight = attack_run.load_model(str(root / "straight"), i)
        np.testing.assert_array_equal(resumed["synthetic"], straight["synthetic"])
        np.testing.assert_array_equal(resumed["logits"], straight["logits"])
    assert not np.array_equal(
        attack_run.load_model(str(root / "it1"), 0)["synthetic"],
        attack_run.load_model(str(root / "it2"), 0)["synthetic"],
    )


@pytest.mark.xdist_group("attack_run_dm_ladder")
@pytest.mark.slow
def test_a_condensed_run_records_how_far_its_synthetic_images_sit_from_its_private_ones(dm_ladder, tmp_path):
    """The ladder's first point (1 iteration, means init), on a copy: report_only below rewrites its results."""
    shutil.copytree(dm_ladder[0] / "it1", tmp_path / "run")
    results = dm_ladder[1]
    train = _dataset(200, 5)
    with np.load(tmp_path / "run" / "split.npz") as split:
        pool, keep = train.images[split["target"]], split["keep"]
    synthetic, real = [], []
    for i in range(6):
        model = attack_run.load_model(str(tmp_path / "run"), i)
        assert not model["used"].any()  # The means init copies no private image.
        private = pool[keep[i]].reshape(int(keep[i].sum()), -1).astype(np.float64)
        flat = model["synthetic"].reshape(NUM_CLASSES, -1)
        brute = np.sqrt(((flat[:, None] - private[None]) ** 2).sum(-1)).min(1)
        np.testing.assert_allclose(model["movement_synthetic"], brute, rtol=1e-4, atol=1e-4)
        # The real sample: all private images here (fewer than 500), each at its nearest OTHER private image.
        others = np.sqrt(((private[:, None] - private[None]) ** 2).sum(-1))
        np.fill_diagonal(others, np.inf)
        np.testing.assert_allclose(np.sort(model["movement_real"]), np.sort(others.min(1)), rtol=1e-4, atol=1e-4)
        synthetic.append(brute)
        real.append(others.min(1))
    movement = results["movement"]
    np.testing.assert_allclose(movement["synthetic_to_nearest_real"]["per_target_mean"], [s.mean() for s in synthetic])
    np.testing.assert_allclose(movement["real_to_nearest_real"]["median"], np.median(np.concatenate(real)), rtol=1e-5)
    assert movement["median_ratio"] == pytest.approx(
        movement["synthetic_to_nearest_real"]["median"] / movement["real_to_nearest_real"]["median"]
    )
    assert results["provenance"] == host.provenance()  # The commit and CPU of the invocation that exported it.
    # Neither is in the export: both are carried over from the results report_only replaces, not remeasured.
    recorded = checkpoint.read_json(str(tmp_path / "run" / "results.json"))
    elsewhere = {**recorded["provenance"], "commit": "0" * 40, "cpu": "another CPU"}
    checkpoint.write_json(str(tmp_path / "run" / "results.json"), {**recorded, "provenance": elsewhere})
    rewritten = attack_run.report_only(str(tmp_path / "run"))
    assert (rewritten["movement"], rewritten["provenance"]) == (movement, elsewhere)


@pytest.mark.slow  # Trains a bank of 6 tiny models (~15 s).
def test_a_run_without_shadows_learns_shokri_from_the_bank(fns, tmp_path):
    config = _config(num_shadow=0, attacker_pool=0, shokri_sample=60)
    results = _run(fns, tmp_path / "bank", config)
    assert sorted(os.listdir(tmp_path / "bank" / "models")) == [f"model_{i:03d}.npz" for i in range(6)]
    export = attack_data.load(str(tmp_path / "bank" / "attack_data.npz"))
    assert export.shokri_from_bank and export.shokri_examples.shape == (60,)
    model = attack_run.load_model(str(tmp_path / "bank"), 2)
    np.testing.assert_array_equal(export.shokri_target_logits[2], model["logits"][0][export.shokri_examples])
    assert "shokri" not in results["attacks"] and "shokri" in attacks.THRESHOLD_ATTACKS
    with np.load(tmp_path / "bank" / "trials.npz") as trials:
        assert "score_shokri" not in trials.files and "score_loss" in trials.files
    summary = results["shokri_accuracy"]
    assert summary["mode"] == "bank, leave-one-out, 60 examples, cross-fitted" and len(summary["per_target"]) == 6
    assert results["utility"]["shadow_test_accuracy_mean"] is None
    assert "| original | " in (tmp_path / "bank" / "RESULTS.md").read_text()
    again = attack_run.report_only(str(tmp_path / "bank"))
    assert again["shokri_accuracy"] == summary
