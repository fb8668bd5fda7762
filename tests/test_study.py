"""The privacy study's rows share one setting and differ only in their recipe and training."""

import dataclasses
import json
import math
import os
import types

import numpy as np
import pytest

from dcjax import checkpoint, dpsgd, snapshots, workdir
from dcjax.privacy import accounting, study


@pytest.mark.slow
def test_rows_share_the_attack_setting_and_change_only_recipe_and_training():
    config = study.StudyConfig()
    rows = {name: study.row_config(config, name) for name in study.ROWS}
    assert rows["original"].train == config.train_original
    assert all(rows[n].train == config.train_small for n in ("subset", "dc_noise", "dc_real"))
    assert rows["subset"].recipe.per_class == config.per_class
    assert rows["dc_noise"].recipe.condense.init == "noise"
    assert rows["dc_real"].recipe.condense.init == "real"
    for row in rows.values():  # Same seed, pools, bank: the same split and keep masks.
        assert dataclasses.replace(row, recipe=config.attack.recipe, train=config.attack.train) == config.attack


@pytest.mark.parametrize("rows", [(), ("original", "original"), ("dsa",)])
def test_bad_row_lists_are_rejected(rows):
    with pytest.raises(ValueError, match="rows"):
        study.StudyConfig(rows=rows)


def test_a_row_finished_with_other_settings_is_not_reused(tmp_path):
    config = study.StudyConfig()
    row_dir = tmp_path / "subset"
    row_dir.mkdir()
    other = dataclasses.replace(study.row_config(config, "subset"), seed=1)
    checkpoint.write_json(str(row_dir / workdir.CONFIG), dataclasses.asdict(other))
    finished = {"finished": True, "schema": study.attack_run.RESULTS_SCHEMA}
    (row_dir / workdir.RESULTS).write_text(json.dumps(finished))
    with pytest.raises(workdir.WorkdirError, match=r"row subset .* \(they differ at seed\)"):
        study._run_row(study.plan_row(config, "subset"), None, (None, None), str(tmp_path))
    checkpoint.write_json(str(row_dir / workdir.CONFIG), dataclasses.asdict(study.row_config(config, "subset")))
    assert study._run_row(study.plan_row(config, "subset"), None, (None, None), str(tmp_path)) == finished


ABOUT = {"tier": "test", "command": "pytest", "machine": "this one"}  # The report's header (results_schema.ABOUT).


def _cpu_like() -> study.StudyConfig:
    """The CPU tier's DP-relevant settings: pool 1000 (halves of ~500), 40 epochs of batch 64."""
    train = dataclasses.replace(study.StudyConfig().train_original, epochs=40, batch_size=64)
    attack = dataclasses.replace(study.StudyConfig().attack, target_pool=1000, train=train)
    return study.StudyConfig(
        attack=attack, train_original=train, rows=("original", "dpsgd_eps1", "dpsgd_eps4", "dpsgd_eps8")
    )


def test_default_rows_stay_the_four_and_the_dp_rows_are_optional():
    assert study.StudyConfig().rows == study.DEFAULT_ROWS == ("original", "subset", "dc_noise", "dc_real")
    assert set(study.ROWS) == set(study.DEFAULT_ROWS) | {
        "dsa_real",
        "dm_real",
        "dm_noise",
        "dc_means",
        "dm_means",
        "dpsgd_eps1",
        "dpsgd_eps4",
        "dpsgd_eps8",
    }
    assert _cpu_like().rows[1:] == ("dpsgd_eps1", "dpsgd_eps4", "dpsgd_eps8")


def test_method_rows_condense_with_their_method_from_real_images_and_train_with_dsa():
    config = dataclasses.replace(study.StudyConfig(), dm_iterations=7)
    dc = study.row_config(config, "dc_real").recipe.condense
    dsa_row, dm_row = study.row_config(config, "dsa_real"), study.row_config(config, "dm_real")
    assert dataclasses.replace(dsa_row.recipe.condense, method="dc") == dc
    assert dsa_row.train == dataclasses.replace(config.train_small, augment="dsa_digits")
    dm = dm_row.recipe.condense
    assert (dm.method, dm.init, dm.iterations, dm.lr_img) == ("dm", "real", 7, 1.0)
    assert "DM synthetic set" in study.describe(config, "dm_real") and "7 iterations" in study.describe(
        config, "dm_real"
    )
    # The DC rows stay DC whatever method the shared condensation settings carry.
    other = dataclasses.replace(config, condense=dataclasses.replace(config.condense, method="dm"))
    assert study.row_config(other, "dc_noise").recipe.condense.method == "dc"


def test_init_rows_condense_from_noise_or_group_means_and_dm_rows_train_with_dsa():
    config = dataclasses.replace(study.StudyConfig(), dm_iterations=7)
    dm_real = study.row_config(config, "dm_real")
    for name, init in (("dm_noise", "noise"), ("dm_means", "means")):
        row = study.row_config(config, name)
        assert row.recipe.condense == dataclasses.replace(dm_real.recipe.condense, init=init)
        assert row.train == dm_real.train and row.train.augment == "dsa_digits"
        assert "7 iterations" in study.describe(config, name) and "DM synthetic set" in study.describe(config, name)
    dc_means = study.row_config(config, "dc_means")
    assert dc_means.recipe.condense == dataclasses.replace(
        study.row_config(config, "dc_real").recipe.condense, init="means"
    )
    assert dc_means.train == config.train_small
    assert "privacy-first init" in study.describe(config, "dc_means") and "means" not in study.describe(
        config, "dm_noise"
    )
    assert dc_means.recipe.per_class_need() == ("batch_real", config.condense.batch_real)
    small_batch = dataclasses.replace(config, condense=dataclasses.replace(config.condense, batch_real=4))
    assert study.row_config(small_batch, "dm_means").recipe.per_class_need() == ("ipc", 10)


def test_dp_rows_take_their_own_learning_rate():
    config = dataclasses.replace(_cpu_like(), dp_lr=0.05)
    assert study.row_config(config, "dpsgd_eps4").train.lr == 0.05
    assert study.row_config(config, "original").train.lr == config.train_original.lr
    with pytest.raises(ValueError, match="dp_lr"):
        dataclasses.replace(config, dp_lr=0.0)


def test_dpsgd_row_trains_like_original_with_noise_calibrated_to_its_epsilon():
    config = _cpu_like()
    row = study.row_config(config, "dpsgd_eps4")
    assert row.recipe == study.row_config(config, "original").recipe
    dp = row.train.dp
    assert dataclasses.replace(row.train, dp=None) == config.train_original
    assert dp.l2_clip == config.dp_clip == 1.0
    # Poisson sampling as the accountant sees it, written out: q = 64 / 500, round(40 / q) = round(312.5) steps.
    eps = accounting.epsilon_pld(dp.noise_multiplier, 64 / 500, 313, 1e-5)
    assert 4.0 - 2e-3 <= eps <= 4.0
    setting = study.dp_setting(config, "dpsgd_eps4")
    assert (setting["sample_rate"], setting["steps"], setting["expected_batch_size"]) == (0.128, 313, 64)
    assert setting["epsilon_pld"] == eps < setting["epsilon_rdp"]
    assert setting["accountant"] == "pld, Poisson sampling (formal)"
    noises = [study.row_config(config, n).train.dp.noise_multiplier for n in config.rows[1:]]
    assert noises[0] > noises[1] > noises[2]  # Smaller epsilon, more noise.
    description = study.describe(config, "dpsgd_eps4")
    assert "target epsilon = 4" in description and "Poisson" in description and "PLD" in description
    assert "nominal" not in description.lower() and "approximation" not in description.lower()
    assert study.dp_setting(config, "original") is None


def test_dp_rows_capacity_covers_the_largest_private_set_and_the_overflow_enters_delta():
    config = _cpu_like()
    setting = study.dp_setting(config, "dpsgd_eps8")
    dp = study.row_config(config, "dpsgd_eps8").train.dp
    assert (dp.num_examples, dp.capacity, dp.overflow_budget) == (500, setting["capacity"], setting["overflow_budget"])
    largest = setting["max_private_examples"]
    assert largest >= max(500 + 2 * 32, config.attack.attacker_pool // 2)  # 4 sd of a Binomial(1000, 1/2) half.
    assert setting["overflow_probability"] == dpsgd.overflow_probability(largest + 1, 0.128, 313, dp.capacity)
    assert setting["overflow_probability"] <= setting["overflow_budget"] < 1e-3 * 1e-5 / math.exp(8)
    assert dpsgd.overflow_probability(largest + 1, 0.128, 313, dp.capacity - 1) > setting["overflow_budget"]
    assert setting["delta"] < setting["delta_total"] <= 1.001e-5
    assert setting["delta_total"] == accounting.overflow_delta(
        1e-5, setting["epsilon_pld"], setting["overflow_probability"]
    )


def test_dp_rows_take_their_own_batch_size_and_epochs():
    config = dataclasses.replace(_cpu_like(), dp_batch_size=250, dp_epochs=60, dp_lr=0.5)
    train = study.row_config(config, "dpsgd_eps4").train
    assert (train.batch_size, train.epochs, train.lr) == (250, 60, 0.5)
    assert study.row_config(config, "original").train == config.train_original
    setting = study.dp_setting(config, "dpsgd_eps4")
    assert (setting["sample_rate"], setting["steps"], setting["expected_batch_size"]) == (0.5, 120, 250)
    for field in ("dp_batch_size", "dp_epochs"):
        with pytest.raises(ValueError, match=field):
            dataclasses.replace(config, **{field: 0})


@pytest.mark.parametrize(
    "kwargs,field", [({"dp_delta": 0.0}, "dp_delta"), ({"dp_delta": 1.0}, "dp_delta"), ({"dp_clip": 0.0}, "dp_clip")]
)
def test_bad_dp_study_settings_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        study.StudyConfig(**kwargs)


def _fake_run_attack(calls):
    """attack_run.run_attack without training: the workdir rules and a minimal results dict."""

    def run(row, fns, data, row_dir, snapshots=None):
        calls.append(os.path.basename(row_dir))
        workdir.prepare(row_dir, dataclasses.asdict(row), False)
        results = {
            "schema": study.attack_run.RESULTS_SCHEMA,
            "attacks": {},
            "utility": {},
            "shokri_accuracy": {},
            "wall_seconds": 1.0,
            "roc": {},
            "headline": {"model": None, "release": None},
            "canary_detection": {},
            "empirical_epsilon": {},
        }
        checkpoint.write_json(os.path.join(row_dir, workdir.RESULTS), results)
        return results

    return run


def test_rows_can_be_added_to_a_finished_study(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(study.attack_run, "run_attack", _fake_run_attack(calls))
    monkeypatch.setattr(study, "write_report", lambda *args, **kwargs: None)
    # Stand-in data and model have no shapes to estimate memory from (tests/test_memory.py covers that check).
    monkeypatch.setattr(study.memory, "check_attack_run", lambda *args, **kwargs: None)
    data = (types.SimpleNamespace(labels=np.arange(3000, dtype=np.int32) % 10, num_classes=10), None)
    fns = types.SimpleNamespace(has_batch_stats=False)
    first = dataclasses.replace(_cpu_like(), rows=("original",))
    study.run_study(first, fns, data, str(tmp_path), ABOUT)
    with pytest.raises(workdir.WorkdirError, match="overwrite"):  # Same study: finished.
        study.run_study(first, fns, data, str(tmp_path), ABOUT)
    results = study.run_study(_cpu_like(), fns, data, str(tmp_path), ABOUT)
    assert calls == ["original", "dpsgd_eps1", "dpsgd_eps4", "dpsgd_eps8"]  # original read back.
    assert [r["name"] for r in results["rows"]] == list(_cpu_like().rows)
    assert "dp" not in results["rows"][0] and results["rows"][2]["dp"]["epsilon"] == 4.0
    assert (tmp_path / workdir.PREVIOUS_RESULTS).exists() and (tmp_path / workdir.RESULTS).exists()
    bn = types.SimpleNamespace(has_batch_stats=True)
    with pytest.raises(ValueError, match="BatchNorm"):  # Refused before anything runs.
        study.run_study(dataclasses.replace(_cpu_like(), dp_clip=2.0), bn, data, str(tmp_path / "bn"), ABOUT)
    assert not (tmp_path / "bn").exists()


def test_a_row_plan_calls_the_accountant_once(monkeypatch):
    """Every stage reads the row's RowPlan: its DP setting (an accountant call) is computed once per row."""
    calls = []
    real = study.dp_guarantee
    monkeypatch.setattr(study, "dp_guarantee", lambda *args: calls.append(args) or real(*args))
    plan = study.plan_row(_cpu_like(), "dpsgd_eps4")
    assert len(calls) == 1
    assert plan.run.train.dp.noise_multiplier == plan.dp["noise_multiplier"]
    assert plan.description == study.DESCRIPTIONS["dpsgd_eps4"].format(
        per_class=plan.run.recipe.per_class, ipc=10, dm_iterations=0, **plan.dp
    )
    assert study.plan_row(_cpu_like(), "original").dp is None and len(calls) == 1


def _fixed_noise(**overrides) -> study.StudyConfig:
    """The CPU tier's DP settings (halves of ~500, expected batch 64) with a fixed-noise row at sigma 1.5."""
    settings = {"rows": ("original", "dpsgd_sigma1.5"), "dp_noise": (1.5,), "dp_checkpoints": (10, 20, 40)}
    return dataclasses.replace(_cpu_like(), dp_lr=0.1, **{**settings, **overrides})


def test_a_fixed_noise_row_is_valid_only_for_a_noise_of_dp_noise():
    with pytest.raises(ValueError, match="rows"):
        study.StudyConfig(rows=("dpsgd_sigma1.5",))
    with pytest.raises(ValueError, match="rows"):
        study.StudyConfig(rows=("dpsgd_sigma1.50",), dp_noise=(1.5,))
    config = study.StudyConfig(rows=("dpsgd_sigma1.5", "dpsgd_sigma2"), dp_noise=(1.5, 2.0))
    assert study.noise_rows(config) == {"dpsgd_sigma1.5": 1.5, "dpsgd_sigma2": 2.0}


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"dp_noise": (0.0,)}, "dp_noise"),
        ({"dp_noise": (-1.0,)}, "dp_noise"),
        ({"dp_noise": (math.nan,)}, "dp_noise"),
        ({"dp_noise": (math.inf,)}, "dp_noise"),
        ({"dp_noise": (1.5, 1.5)}, "dp_noise"),
        ({"dp_checkpoints": (0, 2)}, "dp_checkpoints"),
        ({"dp_checkpoints": (4, 2)}, "dp_checkpoints"),
        ({"dp_checkpoints": (2, 2)}, "dp_checkpoints"),
    ],
)
def test_bad_fixed_noise_settings_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        study.StudyConfig(**kwargs)


def test_a_fixed_noise_row_is_one_run_attacked_at_each_checkpoint_with_the_epsilon_of_its_steps():
    config = _fixed_noise(dp_epochs=7)  # dp_epochs: replaced by the last checkpoint.
    plans = study.plan_points(config, "dpsgd_sigma1.5")
    assert [p.name for p in plans] == ["dpsgd_sigma1.5_ep10", "dpsgd_sigma1.5_ep20", "dpsgd_sigma1.5_ep40"]
    assert [(p.row, p.epochs, p.iteration, p.points) for p in plans] == [
        ("dpsgd_sigma1.5", e, None, (10, 20, 40)) for e in (10, 20, 40)
    ]
    # One run: the same training (40 epochs, one DPConfig) stopped at each checkpoint.
    assert len({dataclasses.replace(p.run.train, stop_epochs=None) for p in plans}) == 1
    assert [p.run.train.stop_epochs for p in plans] == [10, 20, 40]
    train = plans[0].run.train
    assert (train.epochs, train.lr, train.batch_size, train.dp.noise_multiplier) == (40, 0.1, 64, 1.5)
    assert dataclasses.replace(plans[0].run, train=config.attack.train, recipe=config.attack.recipe) == config.attack
    # Written out: q = 64 / 500; round(e * 500 / 64) steps (78.125, 156.25, 312.5 -> 78, 156, 313).
    largest = plans[0].dp["max_private_examples"]
    run_eps = accounting.epsilon_pld(1.5, 0.128, 313, 1e-5)
    budget = 1e-3 * 1e-5 / (1 + math.exp(run_eps))
    capacity = dpsgd.poisson_capacity(largest + 1, 0.128, 313, budget)
    for plan, steps in zip(plans, (78, 156, 313)):
        dp = plan.dp
        assert (dp["steps"], dp["run_steps"], dp["sample_rate"], dp["epochs"]) == (
            steps,
            313,
            0.128,
            plan.epochs,
        )
        assert dp["epsilon"] == dp["epsilon_pld"] == accounting.epsilon_pld(1.5, 0.128, steps, 1e-5)
        assert dp["epsilon_rdp"] == accounting.epsilon_rdp(1.5, 0.128, steps, 1e-5)
        assert (
            (dp["capacity"], dp["overflow_budget"])
            == (capacity, budget)
            == (plan.run.train.dp.capacity, plan.run.train.dp.overflow_budget)
        )
        overflow = dpsgd.overflow_probability(largest + 1, 0.128, steps, capacity)
        assert dp["overflow_probability"] == overflow <= budget
        assert dp["delta_total"] == accounting.overflow_delta(1e-5, dp["epsilon_pld"], overflow)
        assert f"after {plan.epochs} of its run's 40 expected epochs ({steps} of 313 steps)" in plan.description
    assert plans[0].dp["epsilon"] < plans[1].dp["epsilon"] < plans[2].dp["epsilon"] == run_eps
    assert study.plan_points(config, "original") == [study.plan_row(config, "original")]
    # No checkpoints: one point, at the end of a dp_epochs run.
    (only,) = study.plan_points(dataclasses.replace(config, dp_checkpoints=()), "dpsgd_sigma1.5")
    assert (only.name, only.run.train.epochs, only.run.train.stop_epochs) == ("dpsgd_sigma1.5_ep7", 7, 7)


def test_a_study_runs_ladder_and_checkpoint_points_in_order_each_on_its_rows_snapshots(tmp_path, monkeypatch):
    """One expansion for both kinds of point: a condensed row's ladder points and a fixed-noise row's checkpoints,
    each handed its row's snapshots, each entry its row and its progress (iteration or epochs, not both)."""
    calls, handed = [], {}
    fake = _fake_run_attack(calls)

    def run(row, fns, data, row_dir, snapshots=None):
        handed[os.path.basename(row_dir)] = snapshots
        return fake(row, fns, data, row_dir)

    monkeypatch.setattr(study.attack_run, "run_attack", run)
    monkeypatch.setattr(study, "write_report", lambda *args, **kwargs: None)
    monkeypatch.setattr(study.memory, "check_attack_run", lambda *args, **kwargs: None)
    data = (types.SimpleNamespace(labels=np.arange(3000, dtype=np.int32) % 10, num_classes=10), None)
    condensation = dataclasses.replace(study.StudyConfig().condense, iterations=30, batch_real=32)
    names = ("original", "dc_real", "dpsgd_sigma1.5")
    config = _fixed_noise(rows=names, condense=condensation, ladder=(10, 20))
    results = study.run_study(config, types.SimpleNamespace(has_batch_stats=False), data, str(tmp_path), ABOUT)
    ladder = ["dc_real_it10", "dc_real_it20", "dc_real_it30"]
    checkpoints = ["dpsgd_sigma1.5_ep10", "dpsgd_sigma1.5_ep20", "dpsgd_sigma1.5_ep40"]
    assert calls == ["original", *ladder, *checkpoints]
    assert calls == [p.name for name in names for p in study.plan_points(config, name)]
    assert handed["original"] is None
    for names, row, points in ((ladder, "dc_real", (10, 20, 30)), (checkpoints, "dpsgd_sigma1.5", (10, 20, 40))):
        for name in names:
            assert handed[name] == snapshots.Snapshots(str(tmp_path / f"{row}_snapshots"), save_at=points)
    rows = results["rows"]
    assert not {"row", "iteration", "epochs", "dp"} & set(rows[0])
    assert [(r["name"], r["row"], r["iteration"]) for r in rows[1:4]] == [
        (f"dc_real_it{t}", "dc_real", t) for t in (10, 20, 30)
    ]
    assert [(r["name"], r["row"], r["epochs"]) for r in rows[4:]] == [
        (f"dpsgd_sigma1.5_ep{e}", "dpsgd_sigma1.5", e) for e in (10, 20, 40)
    ]
    assert not any("epochs" in r for r in rows[1:4]) and not any("iteration" in r for r in rows[4:])
    assert [r["dp"]["steps"] for r in rows[4:]] == [78, 156, 313]
    # A report rewritten from the exports keeps the points' fields.
    monkeypatch.setattr(
        study.attack_run, "report_only", lambda row_dir: checkpoint.read_json(f"{row_dir}/results.json")
    )
    monkeypatch.setattr(study, "check_exports", lambda row_dirs: None)  # The fake rows export nothing.
    rewritten = study.rewrite_report(str(tmp_path), "", "report")
    assert [{k: r.get(k) for k in ("name", "row", "iteration", "epochs")} for r in rewritten["rows"]] == [
        {k: r.get(k) for k in ("name", "row", "iteration", "epochs")} for r in rows
    ]


def test_a_ladder_expands_each_condensed_row_into_points_that_stop_early():
    config = dataclasses.replace(study.StudyConfig(), dm_iterations=200, ladder=(0, 5, 50, 500))
    assert config.condense.iterations == 1000
    for name, own, points in (("dc_real", 1000, (0, 5, 50, 500, 1000)), ("dm_real", 200, (0, 5, 50, 200))):
        plan = study.plan_row(config, name)
        expanded = study.ladder_points(plan, config.ladder)
        assert [p.name for p in expanded] == [f"{name}_it{t}" for t in points]
        for point, t in zip(expanded, points):
            assert (point.row, point.iteration, point.epochs, point.points) == (name, t, None, points)
            condensation = point.run.recipe.condense
            assert condensation == dataclasses.replace(plan.run.recipe.condense, iterations=t)
            assert dataclasses.replace(point.run, recipe=plan.run.recipe) == plan.run  # Only the iterations change.
            assert point.description.startswith(plan.description) and f"{t} of {own} iterations" in point.description
    for name in ("original", "subset"):  # Rows that do not condense stay one point, unchanged.
        assert study.ladder_points(study.plan_row(config, name), config.ladder) == [study.plan_row(config, name)]
    assert study.ladder_points(study.plan_row(config, "dc_real"), ()) == [study.plan_row(config, "dc_real")]


def test_a_rows_own_ladder_replaces_the_study_ladder_for_that_row_only():
    config = dataclasses.replace(
        study.StudyConfig(), dm_iterations=200, ladder=(0, 5, 50), row_ladders=("dc_real:0", "dm_noise:")
    )
    names = {row: [p.name for p in study.plan_points(config, row)] for row in ("dc_real", "dm_noise", "dm_real")}
    assert names == {
        "dc_real": ["dc_real_it0", "dc_real_it1000"],
        "dm_noise": ["dm_noise"],  # An empty ladder: the row itself, one point.
        "dm_real": ["dm_real_it0", "dm_real_it5", "dm_real_it50", "dm_real_it200"],
    }
    assert [p.points for p in study.plan_points(config, "dc_real")] == [(0, 1000)] * 2  # Its snapshots' save_at.


@pytest.mark.parametrize(
    "entries,message",
    [
        (("dc_real:5:5",), "strictly increasing"),
        (("dc_real:-1",), "strictly increasing"),
        (("dc_real:x",), "integer iterations"),
        (("original:0",), "condensed rows"),
        (("dc_real",), "condensed rows"),  # No colon.
        (("dc_real:0", "dc_real:5"), "distinct"),
    ],
)
def test_row_ladders_must_name_distinct_condensed_rows_with_valid_ladders(entries, message):
    with pytest.raises(ValueError, match=f"^row_ladders must .*{message}"):
        study.StudyConfig(row_ladders=entries)


@pytest.mark.parametrize("ladder", [(5, 5), (50, 5), (-1,), (0, 0)])
def test_a_ladder_must_be_non_negative_and_strictly_increasing(ladder):
    with pytest.raises(ValueError, match="^ladder must be non-negative, strictly increasing"):
        study.StudyConfig(ladder=ladder)


def test_a_study_recorded_before_ladders_matches_the_same_study_without_one(tmp_path):
    recorded = dataclasses.asdict(study.StudyConfig())
    del recorded["ladder"]
    checkpoint.write_json(str(tmp_path / workdir.CONFIG), recorded)
    assert workdir.config_matches(str(tmp_path), dataclasses.asdict(study.StudyConfig()))
    assert not workdir.config_matches(str(tmp_path), dataclasses.asdict(study.StudyConfig(ladder=(5,))))


def test_ladder_points_run_in_order_with_their_rows_shared_snapshots(tmp_path, monkeypatch):
    calls, cached = [], {}
    fake = _fake_run_attack(calls)

    def run(row, fns, data, row_dir, snapshots=None):
        cached[os.path.basename(row_dir)] = snapshots
        return fake(row, fns, data, row_dir)

    monkeypatch.setattr(study.attack_run, "run_attack", run)
    monkeypatch.setattr(study, "write_report", lambda *args, **kwargs: None)
    monkeypatch.setattr(study.memory, "check_attack_run", lambda *args, **kwargs: None)
    data = (types.SimpleNamespace(labels=np.arange(3000, dtype=np.int32) % 10, num_classes=10), None)
    fns = types.SimpleNamespace(has_batch_stats=False)
    attack = dataclasses.replace(_cpu_like().attack, target_pool=1000)
    condensation = dataclasses.replace(study.StudyConfig().condense, iterations=30, batch_real=32)
    config = study.StudyConfig(attack=attack, rows=("original", "dc_real"), condense=condensation, ladder=(10, 20))
    results = study.run_study(config, fns, data, str(tmp_path), ABOUT)
    assert calls == ["original", "dc_real_it10", "dc_real_it20", "dc_real_it30"]
    assert [(r["name"], r.get("row"), r.get("iteration")) for r in results["rows"]] == [
        ("original", None, None),
        ("dc_real_it10", "dc_real", 10),
        ("dc_real_it20", "dc_real", 20),
        ("dc_real_it30", "dc_real", 30),
    ]
    assert cached["original"] is None
    for name in calls[1:]:
        assert cached[name] == snapshots.Snapshots(str(tmp_path / "dc_real_snapshots"), save_at=(10, 20, 30))
        recorded = workdir.read_config(str(tmp_path / name))["recipe"]["condense"]
        assert recorded["iterations"] == int(name.rsplit("_it", 1)[1])


def test_a_rows_summary_carries_its_image_movement_when_it_has_one():
    results = {
        "attacks": {},
        "utility": {},
        "shokri_accuracy": None,
        "wall_seconds": 1.0,
        "roc": {},
        "headline": {"model": None, "release": None},
        "canary_detection": {},
        "empirical_epsilon": {},
    }
    assert "movement" not in study._row_summary("original", "", None, results)  # Other rows' entries as before.
    movement = {"median_ratio": 2.5, "synthetic_to_nearest_real": {"median": 5.0}}
    assert study._row_summary("dc_real", "", None, {**results, "movement": movement})["movement"] == movement


@pytest.mark.slow  # Scores two synthetic exports, twice (~40 s), the second time in two spawned processes.
def test_a_study_learning_shokri_from_the_bank_reports_the_posters_protocol(tmp_path, monkeypatch):
    """Every row but original gets the original row's classifiers' accuracy (run and report_only alike); rows
    re-attacked side by side in worker processes come out bitwise as the run made them one after the other."""
    from test_shokri_bank import _export

    from dcjax.privacy import attack_data, attack_run

    original = _export("members_confident", num_resamples=5)
    exports = {"original": original, "subset": _export("members_unsure", seed=1, examples=original.shokri_examples)}
    exports["subset"] = dataclasses.replace(exports["subset"], config=original.config)

    def run(row, fns, data, row_dir, snapshots=None):  # The row's export instead of a trained bank.
        workdir.prepare(row_dir, dataclasses.asdict(row), False)
        attack_data.save(os.path.join(row_dir, attack_data.EXPORT), exports[os.path.basename(row_dir)])
        results = attack_run.report_only(row_dir)
        checkpoint.write_json(os.path.join(row_dir, workdir.RESULTS), results)
        return results

    monkeypatch.setattr(study.attack_run, "run_attack", run)
    monkeypatch.setattr(study, "write_report", lambda *args, **kwargs: None)
    monkeypatch.setattr(study.memory, "check_attack_run", lambda *args, **kwargs: None)
    data = (types.SimpleNamespace(labels=np.arange(3000, dtype=np.int32) % 10, num_classes=10), None)
    bank = dict(num_shadow=0, attacker_pool=0, shokri_sample=500)
    config = dataclasses.replace(
        _cpu_like(), rows=("original", "subset"), attack=dataclasses.replace(_cpu_like().attack, **bank)
    )
    results = study.run_study(config, types.SimpleNamespace(has_batch_stats=False), data, str(tmp_path), ABOUT)
    protocol = results["poster_protocol"]
    assert list(protocol) == ["subset"] and protocol["subset"]["trained_on"] == "original"
    assert protocol["subset"]["mean"] < 0.5 < results["rows"][0]["shokri_accuracy"]["mean"]
    again = study.rewrite_report(str(tmp_path), "", "report", workers=2)
    assert again["rows"] == results["rows"]  # Every float of every row (the rows' wall_seconds are carried over).
    assert again["poster_protocol"] == protocol
    assert checkpoint.read_json(str(tmp_path / workdir.RESULTS))["poster_protocol"] == protocol


def test_rows_are_reattacked_in_order_and_a_worker_count_below_one_is_refused(monkeypatch):
    monkeypatch.setattr(study.attack_run, "report_only", lambda row_dir: {"dir": row_dir})
    assert study.reattack_rows(["a", "b", "c"]) == [{"dir": "a"}, {"dir": "b"}, {"dir": "c"}]
    assert study.reattack_rows(["a"], workers=4) == [{"dir": "a"}]  # One row: no worker process.
    with pytest.raises(ValueError, match="workers must be >= 1, got 0"):
        study.reattack_rows(["a", "b"], workers=0)


def test_a_report_of_rows_one_of_whose_exports_is_missing_fails_before_any_row_is_reattacked(tmp_path, monkeypatch):
    from test_shokri_bank import _export

    from dcjax.privacy import attack_data

    for name in ("original", "subset"):
        os.makedirs(tmp_path / name)
    attack_data.save(str(tmp_path / "original" / attack_data.EXPORT), _export("members_confident", num_resamples=5))
    rows = [{"name": "original", "description": "", "wall_seconds": 1.0}, {"name": "subset", "description": ""}]
    checkpoint.write_json(str(tmp_path / workdir.RESULTS), {"rows": rows})
    calls = []
    monkeypatch.setattr(study.attack_run, "report_only", lambda row_dir: calls.append(row_dir))
    with pytest.raises(study.attack_run.ExportError, match=r"subset/attack_data.npz: no such file"):
        study.rewrite_report(str(tmp_path), "", "report", workers=2)
    assert calls == []


def _record(row_dir, plan, noise):
    """Writes ``plan``'s run config into ``row_dir`` as a run that trained at ``noise``."""
    row_dir.mkdir(exist_ok=True)
    dp = dataclasses.replace(plan.run.train.dp, noise_multiplier=noise)
    run = dataclasses.replace(plan.run, train=dataclasses.replace(plan.run.train, dp=dp))
    checkpoint.write_json(str(row_dir / workdir.CONFIG), dataclasses.asdict(run))


def test_a_dp_row_keeps_its_recorded_noise_when_this_machines_accountant_differs_in_the_last_digits(tmp_path):
    """The accountant's noise differs between CPUs at ~1e-9 relative: a row recorded on another machine is the same
    setting (its config matches, the guarantee is recomputed at the recorded noise); at 1e-4 it is another."""
    plan = study.plan_row(_cpu_like(), "dpsgd_eps4")
    row_dir = tmp_path / plan.name
    assert study.with_recorded_noise(plan, str(row_dir)) is plan  # Nothing recorded yet.
    ours = plan.dp["noise_multiplier"]
    _record(row_dir, plan, ours * (1 + 1e-9))
    kept = study.with_recorded_noise(plan, str(row_dir))
    assert kept.run.train.dp.noise_multiplier == kept.dp["noise_multiplier"] == ours * (1 + 1e-9)
    assert workdir.config_matches(str(row_dir), dataclasses.asdict(kept.run))
    assert not workdir.config_matches(str(row_dir), dataclasses.asdict(plan.run))
    assert kept.dp["epsilon_pld"] == accounting.epsilon_pld(
        ours * (1 + 1e-9), plan.dp["sample_rate"], plan.dp["steps"], 1e-5
    )
    assert abs(kept.dp["epsilon_pld"] - plan.dp["epsilon_pld"]) < 1e-6
    _record(row_dir, plan, ours * (1 + 1e-4))
    assert study.with_recorded_noise(plan, str(row_dir)) is plan
    other = study.plan_row(_cpu_like(), "original")
    assert study.with_recorded_noise(other, str(row_dir)) is other  # Not a DP row.
