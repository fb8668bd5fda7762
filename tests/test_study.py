"""The privacy study's rows share one setting and differ only in their recipe and training."""

import dataclasses
import json
import math
import os
import types

import numpy as np
import pytest

from dcjax import checkpoint, dpsgd, workdir
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
    with pytest.raises(workdir.WorkdirError, match="row subset"):
        study._run_row(study.plan_row(config, "subset"), None, (None, None), str(tmp_path))
    checkpoint.write_json(str(row_dir / workdir.CONFIG), dataclasses.asdict(study.row_config(config, "subset")))
    assert study._run_row(study.plan_row(config, "subset"), None, (None, None), str(tmp_path)) == finished


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

    def run(row, fns, train, test, row_dir):
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
    study.run_study(first, fns, data, str(tmp_path), {})
    with pytest.raises(workdir.WorkdirError, match="overwrite"):  # Same study: finished.
        study.run_study(first, fns, data, str(tmp_path), {})
    results = study.run_study(_cpu_like(), fns, data, str(tmp_path), {})
    assert calls == ["original", "dpsgd_eps1", "dpsgd_eps4", "dpsgd_eps8"]  # original read back.
    assert [r["name"] for r in results["rows"]] == list(_cpu_like().rows)
    assert "dp" not in results["rows"][0] and results["rows"][2]["dp"]["epsilon"] == 4.0
    assert (tmp_path / workdir.PREVIOUS_RESULTS).exists() and (tmp_path / workdir.RESULTS).exists()
    bn = types.SimpleNamespace(has_batch_stats=True)
    with pytest.raises(ValueError, match="BatchNorm"):  # Refused before anything runs.
        study.run_study(dataclasses.replace(_cpu_like(), dp_clip=2.0), bn, data, str(tmp_path / "bn"), {})
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
    return dataclasses.replace(
        _cpu_like(),
        rows=("original", "dpsgd_sigma1.5"),
        dp_noise=(1.5,),
        dp_checkpoints=(10, 20, 40),
        dp_lr=0.1,
        **overrides,
    )


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
    assert [p.point for p in plans] == [{"row": "dpsgd_sigma1.5", "epochs": e} for e in (10, 20, 40)]
    assert {p.snapshots for p in plans} == {"dpsgd_sigma1.5_snapshots"}
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
            plan.point["epochs"],
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
        assert (
            f"after {plan.point['epochs']} of its run's 40 expected epochs ({steps} of 313 steps)" in plan.description
        )
    assert plans[0].dp["epsilon"] < plans[1].dp["epsilon"] < plans[2].dp["epsilon"] == run_eps
    assert study.plan_points(config, "original") == [study.plan_row(config, "original")]
    # No checkpoints: one point, at the end of a dp_epochs run.
    (only,) = study.plan_points(dataclasses.replace(config, dp_checkpoints=()), "dpsgd_sigma1.5")
    assert (only.name, only.run.train.epochs, only.run.train.stop_epochs) == ("dpsgd_sigma1.5_ep7", 7, 7)


def test_a_study_runs_a_fixed_noise_rows_points_in_order_on_one_snapshot_directory(tmp_path, monkeypatch):
    calls, snapshot_dirs = [], []
    fake = _fake_run_attack(calls)
    monkeypatch.setattr(study.attack_run, "run_attack", fake)

    def point(row, fns, data, row_dir, snapshots):
        snapshot_dirs.append(snapshots)
        return fake(row, fns, *data, row_dir)

    monkeypatch.setattr(study.attack_run, "run_checkpoint_point", point)
    monkeypatch.setattr(study, "write_report", lambda *args, **kwargs: None)
    monkeypatch.setattr(study.memory, "check_attack_run", lambda *args, **kwargs: None)
    data = (types.SimpleNamespace(labels=np.arange(3000, dtype=np.int32) % 10, num_classes=10), None)
    config = _fixed_noise()
    results = study.run_study(config, types.SimpleNamespace(has_batch_stats=False), data, str(tmp_path), {})
    assert calls == ["original", "dpsgd_sigma1.5_ep10", "dpsgd_sigma1.5_ep20", "dpsgd_sigma1.5_ep40"]
    assert snapshot_dirs == [str(tmp_path / "dpsgd_sigma1.5_snapshots")] * 3
    rows = results["rows"]
    assert "row" not in rows[0] and "epochs" not in rows[0] and "dp" not in rows[0]
    assert [(r["name"], r["row"], r["epochs"]) for r in rows[1:]] == [
        (f"dpsgd_sigma1.5_ep{e}", "dpsgd_sigma1.5", e) for e in (10, 20, 40)
    ]
    assert [r["dp"]["steps"] for r in rows[1:]] == [78, 156, 313]
    # A report rewritten from the exports keeps the points' fields.
    monkeypatch.setattr(
        study.attack_run, "report_only", lambda row_dir: checkpoint.read_json(f"{row_dir}/results.json")
    )
    rewritten = study.rewrite_report(str(tmp_path), "", "report")
    assert [{k: r.get(k) for k in ("name", "row", "epochs")} for r in rewritten["rows"]] == [
        {k: r.get(k) for k in ("name", "row", "epochs")} for r in rows
    ]
