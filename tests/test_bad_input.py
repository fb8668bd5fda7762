"""Bad input as a new user meets it: one `error:` line naming the flag (or file), exit != 0, nothing written.

Most rows run in-process: the config dataclasses (every range a launcher flag maps to), the launchers'
config builders in experiments/configs.py, the data loaders and the workdir checks. The slow tests run
the launchers as a user does, one per kind of mistake, and check the whole contract end to end.
"""

import dataclasses
import errno
import json
import math
import os
import pickle
import re
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from absl import flags
from absl.testing import flagsaver

from dcjax import checkpoint, condense, data, dpsgd, errors, evaluation, models, workdir
from dcjax.condense import run as condense_run
from dcjax import train as train_lib
from dcjax.privacy import attack_run, bank, pools, rmia, shokri, study
from dcjax.privacy.config import AttackRunConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "experiments"))
import common  # noqa: E402
import configs  # noqa: E402
import launch_flags  # noqa: E402

FLAGS = flags.FLAGS
if "lr_img" not in FLAGS:  # The flag groups the launchers share (what attack.py defines), once per process.
    for define in (
        configs.define_data_flags,
        configs.define_model_flags,
        configs.define_run_flags,
        configs.define_condense_flags,
        configs.define_attack_flags,
    ):
        define()
    configs.define_train_flags(configs.field_default(AttackRunConfig, "train"))  # As attack.py.
    flags.DEFINE_integer("per_class", 10, "attack.py's and privacy_study.py's flag.")
    FLAGS.mark_as_parsed()

NAN, INF = math.nan, math.inf
_DP = dict(num_examples=10, capacity=4, overflow_budget=1e-6)

# ---------------------------------------------------------------------------------- config dataclasses

CONFIG_ROWS = [
    (condense.CondenseConfig, {"ipc": 0}, "ipc"),
    (condense.CondenseConfig, {"iterations": -1}, "iterations"),
    (condense.CondenseConfig, {"outer_loop": 0}, "outer_loop"),
    (condense.CondenseConfig, {"inner_loop": 0}, "inner_loop"),
    (condense.CondenseConfig, {"batch_real": 0}, "batch_real"),
    (condense.CondenseConfig, {"batch_train": 0}, "batch_train"),
    (condense.CondenseConfig, {"lr_img": -1.0}, "lr_img"),
    (condense.CondenseConfig, {"lr_img": NAN}, "lr_img"),
    (condense.CondenseConfig, {"lr_img": INF}, "lr_img"),
    (condense.CondenseConfig, {"lr_net": 0.0}, "lr_net"),
    (condense.CondenseConfig, {"momentum_img": 1.0}, "momentum_img"),
    (condense.CondenseConfig, {"momentum_img": -0.1}, "momentum_img"),
    (condense.CondenseConfig, {"microbatch": -1}, "microbatch"),
    (condense.CondenseConfig, {"method": "kip"}, "method"),
    (condense.CondenseConfig, {"distance": "l1"}, "distance"),
    (condense.CondenseConfig, {"init": "zeros"}, "init"),
    (condense.CondenseConfig, {"class_strategy": "pmap"}, "class_strategy"),
    (condense.CondenseConfig, {"precision": "fp16"}, "precision"),
    (train_lib.TrainConfig, {"epochs": 0}, "epochs"),
    (train_lib.TrainConfig, {"batch_size": 0}, "batch_size"),
    (train_lib.TrainConfig, {"lr": -1.0}, "lr"),
    (train_lib.TrainConfig, {"lr": NAN}, "lr"),
    (train_lib.TrainConfig, {"momentum": 1.0}, "momentum"),
    (train_lib.TrainConfig, {"weight_decay": -1e-4}, "weight_decay"),
    (train_lib.TrainConfig, {"weight_decay": INF}, "weight_decay"),
    (train_lib.TrainConfig, {"microbatch": -1}, "microbatch"),
    (evaluation.EvalConfig, {"num_models": 0}, "num_models"),
    (evaluation.EvalConfig, {"test_batch": 0}, "test_batch"),
    (dpsgd.DPConfig, {"l2_clip": 0.0, **_DP}, "l2_clip"),
    (dpsgd.DPConfig, {"l2_clip": INF, **_DP}, "l2_clip"),
    (dpsgd.DPConfig, {"noise_multiplier": NAN, **_DP}, "noise_multiplier"),
    (dpsgd.DPConfig, {**_DP, "num_examples": 0}, "num_examples"),
    (dpsgd.DPConfig, {**_DP, "overflow_budget": 1.0}, "overflow_budget"),
    (shokri.AttackConfig, {"hidden": -1}, "hidden"),
    (shokri.AttackConfig, {"features": "logits"}, "features"),
    (shokri.AttackConfig, {"steps": 0}, "steps"),
    (shokri.AttackConfig, {"lr": NAN}, "lr"),
    (shokri.AttackConfig, {"weight_decay": -1.0}, "weight_decay"),
    (rmia.RMIAConfig, {"a": 1.5}, "a"),
    (rmia.RMIAConfig, {"gamma": 0.0}, "gamma"),
    (bank.Recipe, {"kind": "subset", "per_class": 0}, "per_class"),
    (AttackRunConfig, {"seed": -1}, "seed"),
    (AttackRunConfig, {"seed": 2**32}, "seed"),
    (AttackRunConfig, {"num_models": 5}, "num_models"),
    (AttackRunConfig, {"num_shadow": 0}, "num_shadow"),
    (AttackRunConfig, {"target_pool": 0}, "target_pool"),
    (AttackRunConfig, {"attacker_pool": 0}, "attacker_pool"),
    (AttackRunConfig, {"num_shadow": 0, "attacker_pool": 0, "shokri_sample": 1}, "shokri_sample"),
    (AttackRunConfig, {"num_queries": 0}, "num_queries"),
    (AttackRunConfig, {"num_canaries": -1}, "num_canaries"),
    (AttackRunConfig, {"num_population": -1}, "num_population"),
    (AttackRunConfig, {"models_per_chunk": -1}, "models_per_chunk"),
    (AttackRunConfig, {"num_resamples": 0}, "num_resamples"),
    (study.StudyConfig, {"rows": ("original", "bogus")}, "rows"),
    (study.StudyConfig, {"per_class": 0}, "per_class"),
    (study.StudyConfig, {"dp_delta": 1.0}, "dp_delta"),
    (study.StudyConfig, {"dp_clip": NAN}, "dp_clip"),
    (study.StudyConfig, {"dp_lr": -0.1}, "dp_lr"),
    (study.StudyConfig, {"dp_batch_size": 0}, "dp_batch_size"),
    (study.StudyConfig, {"dp_epochs": 0}, "dp_epochs"),
    (study.StudyConfig, {"dm_iterations": 0}, "dm_iterations"),
    (study.StudyConfig, {"ladder": (-1, 5)}, "ladder"),
    (study.StudyConfig, {"ladder": (5, 5)}, "ladder"),
    (study.StudyConfig, {"row_ladders": ("dc_real:5:5",)}, "row_ladders"),
    (study.StudyConfig, {"row_ladders": ("original:0",)}, "row_ladders"),
    (condense_run.RunConfig, {"seed": -1}, "seed"),
    (condense_run.RunConfig, {"eval_every": -1}, "eval_every"),
    (condense_run.RunConfig, {"checkpoint_every": 0}, "checkpoint_every"),
]


@pytest.mark.parametrize(
    "cls,kwargs,field", CONFIG_ROWS, ids=[f"{c.__name__}-{f}-{list(k.values())[0]}" for c, k, f in CONFIG_ROWS]
)
def test_config_rejects_out_of_range_fields_naming_them(cls, kwargs, field):
    with pytest.raises(errors.ConfigError) as info:
        cls(**kwargs)
    message = str(info.value)
    # The field it carries is what lets a launcher name the flag; the message starts with it.
    assert info.value.setting == field and info.value.flag is None, (info.value.setting, message)
    assert re.match(rf"{field}\b", message) and "\n" not in message, message
    assert isinstance(info.value, ValueError)  # Callers that catch ValueError from config checks still do.


def test_defaults_and_edge_values_are_still_accepted():
    condense.CondenseConfig(iterations=0, momentum_img=0.0, microbatch=0)
    train_lib.TrainConfig(momentum=0.0, weight_decay=0.0, microbatch=0)
    AttackRunConfig(seed=2**32 - 1, num_canaries=0, num_population=0)
    condense_run.RunConfig(eval_every=0)
    study.StudyConfig(dp_lr=None)


# ----------------------------------------------------------------------------- launcher config builders


@pytest.mark.parametrize(
    "overrides,flag",
    [
        ({"lr_img": -1.0}, "--lr_img must be > 0"),
        ({"lr_net": NAN}, "--lr_net must be > 0"),
        ({"ipc": 0}, "--ipc must be >= 1"),
        ({"batch_real": 0}, "--batch_real"),
        ({"iterations": -1}, "--iterations"),
        ({"outer_loop": 0}, "--outer_loop"),
        ({"distance": "l1"}, "--distance must be one of"),
        ({"init": "zeros"}, "--init must be one of"),
        ({"class_strategy": "pmap"}, "--class_strategy must be one of"),
        ({"dsa_strategy": "color_warp", "method": "dsa"}, "--dsa_strategy"),
    ],
)
def test_condense_flags_are_named_in_the_message(overrides, flag):
    with flagsaver.flagsaver(**overrides), pytest.raises(ValueError) as info:
        configs.condense_config()
    assert str(info.value).startswith(flag), str(info.value)


@pytest.mark.parametrize(
    "overrides,flag",
    [
        ({"lr": -1.0}, "--lr must be > 0"),
        ({"lr": INF}, "--lr must be > 0"),
    ],
)
def test_train_flags_are_named_in_the_message(overrides, flag):
    with flagsaver.flagsaver(**overrides), pytest.raises(ValueError) as info:
        configs.train_config(configs.field_default(AttackRunConfig, "train"), small_set=False)
    assert str(info.value).startswith(flag), str(info.value)


@pytest.mark.parametrize(
    "overrides,flag",
    [
        ({"attack_hidden": -1}, "--attack_hidden must be >= 0"),  # The field is AttackConfig.hidden.
        ({"attack_steps": 0}, "--attack_steps must be >= 1"),  # ... and AttackConfig.steps.
        ({"num_models": 7}, "--num_models must be even"),
        ({"num_shadow": 0}, "--num_shadow"),
        ({"num_shadow": 0, "attacker_pool": 0, "shokri_sample": 10**6}, "--shokri_sample"),
        ({"num_canaries": 5000}, "--num_canaries"),
        ({"num_population": -1}, "--num_population"),
        ({"num_queries": 99}, "--num_queries"),
        ({"models_per_chunk": -1}, "--models_per_chunk"),
        ({"num_resamples": 0}, "--num_resamples"),
    ],
)
def test_attack_flags_are_named_in_the_message(overrides, flag):
    with flagsaver.flagsaver(**overrides), pytest.raises(ValueError) as info:
        configs.attack_config(bank.Recipe(), train_lib.TrainConfig(epochs=1))
    assert str(info.value).startswith(flag), str(info.value)


def _named(error: Exception, **renames) -> str:
    """The message ``error`` leaves `common.naming_flags` with."""
    with pytest.raises(type(error)) as info:
        with common.naming_flags(**renames):
            raise error
    return str(info.value)


def test_config_errors_name_only_real_flags_from_their_field():
    config_error = errors.ConfigError
    assert str(config_error("lr_img", "must be > 0, got -1")) == "lr_img must be > 0, got -1"
    assert _named(config_error("lr_img", "must be > 0, got -1")) == "--lr_img must be > 0, got -1"
    assert _named(config_error("ipc", "=9 exceeds the smallest class (5)")) == "--ipc=9 exceeds the smallest class (5)"
    assert _named(config_error("hidden", "must be >= 0"), hidden="attack_hidden") == "--attack_hidden must be >= 0"
    assert _named(config_error("no_such_setting", "must be >= 0")) == "no_such_setting must be >= 0"
    assert _named(config_error(None, "class 3 has 2 examples")) == "class 3 has 2 examples"
    # Named once: an outer context does not rename what an inner one named (or a launcher's own check).
    assert _named(common.flag_error("lr", "must be > 0"), lr="eval_lr") == "--lr must be > 0"
    # The field, not the words: a message that starts like a flag but blames no field stays as it is.
    assert _named(config_error(None, "lr is not used with dp")) == "lr is not used with dp"
    # Only ConfigErrors: a plain ValueError (a bug) passes through untouched, traceback and all.
    assert _named(ValueError("lr must be > 0")) == "lr must be > 0"
    named = pickle.loads(pickle.dumps(errors.ConfigError("ipc", "=9 exceeds", flag="ipc")))  # Crosses processes.
    assert (named.setting, named.flag, str(named)) == ("ipc", "ipc", "--ipc=9 exceeds")


def test_config_from_flags_takes_each_field_from_its_flag():
    with flagsaver.flagsaver(width=7, net_init="flax", precision="bf16"):
        config = configs.model_config()
    assert config == models.ModelConfig(width=7, init="flax")  # --precision is condensation's, not the model's.
    with flagsaver.flagsaver(attack_hidden=-1), pytest.raises(errors.ConfigError) as info:
        configs.config_from_flags(shokri.AttackConfig, {"hidden": "attack_hidden", "lr": None}, steps=3)
    assert str(info.value).startswith("--attack_hidden must be >= 0"), str(info.value)
    with flagsaver.flagsaver(lr=-1.0):  # lr=None: the same-named --lr (the models') is not the attack's.
        built = configs.config_from_flags(shokri.AttackConfig, {"lr": None, "hidden": "attack_hidden"}, steps=3)
    assert built.steps == 3 and built.lr == shokri.AttackConfig().lr and built.hidden == FLAGS.attack_hidden


def test_config_from_flags_replaces_an_instance_and_never_sets_a_nested_config_from_a_flag():
    base = train_lib.TrainConfig(epochs=7, momentum=0.5, augment="dc")  # The launcher's default training.
    with flagsaver.flagsaver(epochs=3, lr=-1.0), pytest.raises(errors.ConfigError) as info:
        configs.config_from_flags(base)
    assert str(info.value).startswith("--lr must be > 0"), str(info.value)
    with flagsaver.flagsaver(epochs=3):
        built = configs.config_from_flags(base, augment="none")
    # --epochs and --lr replace the instance's; momentum (no flag) stays the instance's, not TrainConfig's 0.9.
    assert (built.epochs, built.lr, built.momentum, built.augment) == (3, FLAGS.lr, 0.5, "none")
    # --model sets ModelConfig.name: AttackRunConfig.model, a config of its own, is the launcher's to give.
    assert "model" in FLAGS and configs.config_from_flags(AttackRunConfig).model == AttackRunConfig().model


def test_a_missing_flagfile_is_one_error_line(capsys):
    with flagsaver.flagsaver(), pytest.raises(SystemExit) as info:
        common.parse_flags(["prog", "--flagfile=nope.cfg"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: --flagfile") and "nope.cfg" in err, err


def test_a_bad_flag_value_is_one_error_line(capsys):
    with flagsaver.flagsaver(), pytest.raises(SystemExit) as info:
        common.parse_flags(["prog", "--seed=-1"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: flag --seed=-1"), err


# ------------------------------------------------------------------------------------- data-fit checks


def test_real_init_ipc_above_the_smallest_class_is_named():
    index = data.build_class_index(np.array([0, 0, 0, 1, 1]), 2)
    config = condense.CondenseConfig(ipc=3, init="real", batch_real=1)
    with pytest.raises(ValueError) as info:
        with common.naming_flags():
            condense.check_batch_real(config, index)
    assert str(info.value).startswith("--ipc=3"), str(info.value)
    condense.check_batch_real(dataclasses.replace(config, init="noise"), index)  # Noise init has no such limit.


def _labels_dataset(labels, num_classes):
    labels = np.asarray(labels, np.int32)
    return data.ArrayDataset(
        images=np.zeros((len(labels), 8, 8, 1), np.float32), labels=labels, num_classes=num_classes, name="mnist"
    )


def test_run_condensation_checks_the_data_before_writing_the_workdir(tmp_path):
    train = _labels_dataset([0, 0, 1, 1], 2)
    model = models.ModelConfig(width=4, depth=1)
    config = condense_run.RunConfig(model=model, condense=condense.CondenseConfig(ipc=5, init="real", batch_real=1))
    fns = models.make_model(model, train.image_shape, train.num_classes)
    with pytest.raises(ValueError, match="ipc=5"):
        condense_run.run_condensation(config, fns, train, train, str(tmp_path / "w"))
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize(
    "recipe,flag",
    [
        (bank.Recipe(kind="subset", per_class=50), "--per_class=50"),
        (bank.Recipe(kind="condense", condense=condense.CondenseConfig(ipc=50, init="real", batch_real=1)), "--ipc=50"),
        (bank.Recipe(kind="condense", condense=condense.CondenseConfig(ipc=1, batch_real=50)), "--batch_real=50"),
    ],
)
def test_a_recipe_larger_than_a_private_half_names_its_flag(recipe, flag):
    train = _labels_dataset(np.arange(200) % 2, 2)
    config = AttackRunConfig(recipe=recipe, num_models=6, target_pool=100, num_shadow=2, attacker_pool=100)
    with pytest.raises(ValueError) as info:
        with common.naming_flags():
            pools.check_recipe_fits(config, train)
    assert str(info.value).startswith(flag), str(info.value)


# ------------------------------------------------------------------------------------------ data loading


@pytest.mark.parametrize("where", ["arg", "env"])
def test_a_missing_data_dir_fails_at_once_naming_it(monkeypatch, tmp_path, where):
    missing = str(tmp_path / "nonexistent")
    monkeypatch.setenv("TFDS_DATA_DIR", missing if where == "env" else str(tmp_path))
    tic = time.perf_counter()
    with pytest.raises(data.DataError) as info:
        data.load_split("mnist", "train", missing if where == "arg" else None)
    assert time.perf_counter() - tic < 5
    message = str(info.value)
    assert missing in message and "--download" in message and "TFDS_DATA_DIR" in message, message
    assert "\n" not in message


@pytest.mark.parametrize(
    "data_dir,env,download,expected",
    [
        (None, None, None, True),  # Nothing named: TFDS downloads to ~/tensorflow_datasets, as before.
        ("DIR", None, None, False),  # A named directory must hold the data ...
        (None, "DIR", None, False),
        ("DIR", None, True, True),  # ... unless --download says otherwise.
        (None, None, False, False),
    ],
)
@pytest.mark.slow
def test_download_is_automatic_only_without_a_named_directory(monkeypatch, tmp_path, data_dir, env, download, expected):
    tfds = data._import_tfds()
    seen = {}

    def fake_load(*args, **kwargs):
        seen.update(kwargs)  # The data is looked for first; only when absent may TFDS download it.
        raise AssertionError("Dataset mnist: could not find data" if not kwargs["download"] else "stop here")

    monkeypatch.setattr(tfds, "load", fake_load)
    monkeypatch.setattr(data, "_check_online", lambda name, where: None)  # Online, simulated.
    monkeypatch.delenv("TFDS_DATA_DIR", raising=False)
    if env:
        monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    with pytest.raises(data.DataError):
        data.load_split("mnist", "train", str(tmp_path) if data_dir else None, download)
    assert seen["download"] is expected


@pytest.mark.slow  # Prepares a mock TFDS dataset (~4 s).
def test_a_prepared_mock_dataset_loads_without_download(tmp_path):
    tfds = data._import_tfds()
    with tfds.testing.mock_data(num_examples=8):
        ds = data.load_split("mnist", "train", str(tmp_path), download=False)
    assert len(ds) == 8


def _write(path, content: bytes):
    path.write_bytes(content)
    return str(path)


def test_synthetic_npz_loader_names_each_problem(tmp_path):
    cases = {
        "text.npz": (b"hello, I am not an archive\n", "not a .npz archive"),
        "empty.npz": (b"", "not a .npz archive"),
        "broken.npz": (b"PK\x03\x04garbage", "not a .npz archive"),
    }
    for name, (content, expected) in cases.items():
        path = _write(tmp_path / name, content)
        with pytest.raises(data.DataError, match=re.escape(f"{path}: {expected}")):
            data.load_synthetic_npz(path)
    np.save(tmp_path / "single.npy", np.zeros(3))
    with pytest.raises(data.DataError, match="not a .npz archive"):
        data.load_synthetic_npz(str(tmp_path / "single.npy"))
    np.savez(tmp_path / "objects.npz", images=np.array([object()] * 2), labels=np.arange(2))
    with pytest.raises(data.DataError, match="holds object arrays"):
        data.load_synthetic_npz(str(tmp_path / "objects.npz"))
    np.savez(tmp_path / "nolabels.npz", images=np.zeros((2, 4, 4, 1)), y=np.arange(2))
    with pytest.raises(data.DataError, match="lacks 'labels' .*holds: images, y"):
        data.load_synthetic_npz(str(tmp_path / "nolabels.npz"))
    np.savez(tmp_path / "shape.npz", images=np.zeros((2, 4, 4)), labels=np.arange(2))
    with pytest.raises(data.DataError, match=r"images \[n, H, W, C\]"):
        data.load_synthetic_npz(str(tmp_path / "shape.npz"))
    np.savez(tmp_path / "floatlabels.npz", images=np.zeros((2, 4, 4, 1)), labels=np.zeros(2))
    with pytest.raises(data.DataError, match="integer labels"):
        data.load_synthetic_npz(str(tmp_path / "floatlabels.npz"))
    with pytest.raises(data.DataError, match="no such file"):
        data.load_synthetic_npz(str(tmp_path / "missing.npz"))


def test_synthetic_npz_loader_returns_the_arrays_unchanged(tmp_path):
    images, labels = np.random.default_rng(0).normal(size=(4, 3, 3, 1)).astype(np.float32), np.arange(4)
    np.savez(tmp_path / "syn.npz", images=images, labels=labels, seed=0)
    got_images, got_labels = data.load_synthetic_npz(str(tmp_path / "syn.npz"))
    assert got_images.dtype == images.dtype and np.array_equal(got_images, images)
    assert got_labels.dtype == labels.dtype and np.array_equal(got_labels, labels)


# ----------------------------------------------------------------------------------------------- workdir


def test_a_hand_broken_config_json_is_one_line_naming_the_file(tmp_path):
    run = str(tmp_path / "run")
    workdir.prepare(run, {"ipc": 1}, overwrite=False)
    (tmp_path / "run" / "config.json").write_text('{"ipc": 1,,}')
    with pytest.raises(workdir.WorkdirError) as info:
        workdir.prepare(run, {"ipc": 1}, overwrite=False)
    message = str(info.value)
    assert os.path.join(run, "config.json") in message and "--overwrite" in message and "\n" not in message
    assert workdir.prepare(run, {"ipc": 1}, overwrite=True) is False  # --overwrite still recovers.


def test_a_hand_edited_config_names_the_file_and_the_setting(tmp_path):
    run = str(tmp_path / "run")
    workdir.prepare(run, {"condense": {"ipc": 1, "lr_img": 0.1}, "seed": 0}, overwrite=False)
    path = tmp_path / "run" / "config.json"
    path.write_text(json.dumps({"condense": {"ipc": 1, "lr_img": 0.5}, "seed": 0}))
    with pytest.raises(workdir.WorkdirError) as info:
        workdir.prepare(run, {"condense": {"ipc": 1, "lr_img": 0.1}, "seed": 0}, overwrite=False)
    message = str(info.value)
    assert str(path) in message and "condense.lr_img" in message and "\n" not in message, message


# ------------------------------------------------------------------------- every flag has a range check

# Where each flag of experiments/*.py is checked (enum/bool: absl itself).
FLAG_CHECKS = {
    **dict.fromkeys(
        [
            "activation",
            "attack_features",
            "augment",
            "conv_impl",
            "eval_augment",
            "method",
            "model",
            "net_init",
            "norm",
            "pooling",
            "precision",
            "small_augment",
            "source",
            "strategy",
            "target",
        ],
        "absl enum",
    ),
    **dict.fromkeys(
        ["distributed", "download", "eval_baseline", "inside_pool", "overwrite", "report_only", "reencode"], "absl bool"
    ),
    **dict.fromkeys(["width", "depth", "seed", "subset_ipc", "report_workers"], "absl bounds"),
    **dict.fromkeys(["epochs", "batch_size", "lr"], "TrainConfig (+ absl bounds)"),
    **dict.fromkeys(
        [
            "ipc",
            "iterations",
            "outer_loop",
            "inner_loop",
            "batch_real",
            "batch_train",
            "lr_img",
            "lr_net",
            "distance",
            "init",
            "class_strategy",
        ],
        "CondenseConfig (+ check_batch_real)",
    ),
    "dsa_strategy": "dsa.parse_strategy via configs.condense_config",
    **dict.fromkeys(
        [
            "num_models",
            "target_pool",
            "num_shadow",
            "attacker_pool",
            "shokri_sample",
            "num_queries",
            "num_canaries",
            "num_population",
            "models_per_chunk",
            "num_resamples",
        ],
        "AttackRunConfig (+ check_recipe_fits)",
    ),
    **dict.fromkeys(["attack_hidden", "attack_steps"], "shokri.AttackConfig, renamed by configs.SHOKRI_FLAGS"),
    **dict.fromkeys(["num_eval", "eval_every", "eval_epochs", "checkpoint_every"], "EvalConfig, RunConfig (condense)"),
    "per_class": "bank.Recipe / StudyConfig (+ check_recipe_fits)",
    **dict.fromkeys(
        ["rows", "dp_delta", "dp_clip", "dp_lr", "dp_batch_size", "dp_epochs", "dm_iterations"],
        "StudyConfig (dp_tune.py: check_flags)",
    ),
    **dict.fromkeys(["dp_noise", "dp_checkpoints"], "privacy_study._numbers, then StudyConfig"),
    **dict.fromkeys(["small_epochs", "small_batch_size"], "TrainConfig, renamed by privacy_study.SMALL_FLAGS"),
    **dict.fromkeys(
        ["target_pool", "attacker_pool", "private_size", "val_size", "batch_sizes", "lrs", "epsilons"],
        "dp_tune.check_flags",
    ),
    "dataset": "data._stats",
    "data_dir": "data.load_split",
    "workdir": "workdir.prepare",
    "synthetic": "data.load_synthetic_npz",
    "conclusion": "privacy_study._about",
    "ladder": "privacy_study._numbers, then StudyConfig",
    "row_ladders": "StudyConfig",
    "tier": "free text",
}


def test_every_launcher_flag_has_a_listed_check():
    defined = set()
    for name in os.listdir(os.path.join(ROOT, "experiments")):
        if name.endswith(".py"):
            with open(os.path.join(ROOT, "experiments", name)) as f:
                defined |= set(re.findall(r'DEFINE_[a-z]+\(\s*"([a-z_0-9]+)"', f.read()))
    assert defined == set(FLAG_CHECKS), (sorted(defined - set(FLAG_CHECKS)), sorted(set(FLAG_CHECKS) - defined))


# ------------------------------------------------------------------- the launchers as a user runs them


def _launch(args, mock_examples=None, env=None, timeout=300):
    cmd = [sys.executable]
    if mock_examples is not None:
        cmd += [os.path.join(ROOT, "tests", "mock_launch.py"), str(mock_examples)]
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2", **(env or {}))
    tic = time.perf_counter()
    proc = subprocess.run(cmd + args, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
    return proc, time.perf_counter() - tic


def _assert_one_line_error(proc, *expected):
    assert proc.returncode not in (0, 1), proc.stderr[-3000:]  # 2: the `fail` contract (1 would be a crash).
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and all(e in last for e in expected), proc.stderr[-3000:]
    return last


def _assert_refused(run, *expected):
    """A forked launcher run ``(process, its scratch directory)`` ended in one error line naming ``expected`` and
    wrote no workdir."""
    proc, scratch = run
    _assert_one_line_error(proc, *expected)
    assert not (scratch / "w").exists()


OUT_OF_RANGE = [
    ("condense.py", ["--ipc=1", "--iterations=1", "--lr_img=-1"], "--lr_img must be > 0"),
    ("train.py", ["--lr=nan"], "--lr must be > 0"),
    ("attack.py", ["--attack_hidden=-1"], "--attack_hidden"),
    ("privacy_study.py", ["--small_batch_size=0"], "--small_batch_size"),
    ("privacy_study.py", ["--ladder=50,20"], "--ladder must be non-negative, strictly increasing"),
    ("privacy_study.py", ["--ladder=5,x"], "--ladder must be a comma list of integers"),
    ("dp_tune.py", ["--lrs=0.1,-1"], "--lrs"),
]


@pytest.fixture(scope="module")
def early_exits(tmp_path_factory):
    """The launcher runs below that must end before loading any data, run together (launch_flags.launch_each), each
    with its own scratch directory: {name: (its process, its directory)}. The poisoned and finished cases' inputs
    are made here; their tests check that they are left as they were."""
    root = tmp_path_factory.mktemp("early")
    cases = {f"range{i}": [f"experiments/{script}", *args] for i, (script, args, _) in enumerate(OUT_OF_RANGE)}
    cases["flagfile"] = ["experiments/condense.py", "--flagfile=nope.cfg"]
    no_data = root / "poisoned" / "no_data_here"
    cases["poisoned"] = ["experiments/train.py", "--source=synthetic", f"--data_dir={no_data}"]
    cases["finished"] = ["experiments/condense.py", "--ipc=1", "--iterations=1", f"--data_dir={root / 'none'}"]
    dirs = {name: root / name for name in cases}
    for d in dirs.values():
        d.mkdir()
    # All NaN: used to train to ~10 % and exit 0. The data directory above does not exist: the check must come first.
    np.savez(dirs["poisoned"] / "nan.npz", images=np.full((10, 28, 28, 1), np.nan, np.float32), labels=np.arange(10))
    cases["poisoned"].append(f"--synthetic={dirs['poisoned'] / 'nan.npz'}")
    (dirs["finished"] / "w").mkdir()
    (dirs["finished"] / "w" / "results.json").write_text("{}")
    argvs = [argv[:1] + [f"--workdir={dirs[name] / 'w'}"] + argv[1:] for name, argv in cases.items()]
    procs = launch_flags.launch_each(argvs)
    return {name: (proc, dirs[name]) for name, proc in zip(cases, procs)}


@pytest.mark.slow
@pytest.mark.xdist_group("early_exits")  # One worker runs `early_exits`.
@pytest.mark.parametrize("case", range(len(OUT_OF_RANGE)), ids=[f"{c[0]}-{c[2]}" for c in OUT_OF_RANGE])
def test_launchers_reject_out_of_range_flags_before_writing(early_exits, case):
    _assert_refused(early_exits[f"range{case}"], OUT_OF_RANGE[case][2])


LARGER_THAN_DATA = [
    ("condense.py", ["--ipc=100000", "--init=real", "--batch_real=1"], "--ipc=100000"),
    ("train.py", ["--source=subset", "--subset_ipc=1000"], "--subset_ipc=1000"),
    (
        "privacy_study.py",
        ["--per_class=1000", "--num_models=6", "--target_pool=100", "--attacker_pool=100"],
        "--per_class=1000",
    ),
]


@pytest.fixture(scope="module")
def mock_exits(tmp_path_factory):
    """The launcher runs below that must fail on 300 mock MNIST examples, run together (launch_flags.launch_each),
    each with its own scratch directory: {name: (its process, its directory)}. The broken inputs are made here."""
    root = tmp_path_factory.mktemp("mock_exits")
    cases = {
        f"larger{i}": [f"experiments/{s}", "--width=4", "--depth=1", *a] for i, (s, a, _) in enumerate(LARGER_THAN_DATA)
    }
    cases["garbage"] = ["experiments/train.py", "--source=synthetic", f"--synthetic={root / 'garbage' / 'garbage.npz'}"]
    tiny = ["--num_models=1", "--epochs=1", "--width=4", "--depth=1"]
    cases["broken"] = ["experiments/train.py", "--source=subset", "--subset_ipc=1", *tiny]
    dirs = {name: root / name for name in cases}
    for d in dirs.values():
        d.mkdir()
    (dirs["garbage"] / "garbage.npz").write_text("not an archive\n")
    (dirs["broken"] / "w").mkdir()
    (dirs["broken"] / "w" / "config.json").write_text("{ edited by hand")
    argvs = [argv[:1] + [f"--workdir={dirs[name] / 'w'}"] + argv[1:] for name, argv in cases.items()]
    procs = launch_flags.launch_each(argvs, mock_examples=300)
    return {name: (proc, dirs[name]) for name, proc in zip(cases, procs)}


@pytest.mark.slow
@pytest.mark.xdist_group("mock_exits")  # One worker runs `mock_exits`.
@pytest.mark.parametrize("case", range(len(LARGER_THAN_DATA)), ids=[f"{c[0]}-{c[2]}" for c in LARGER_THAN_DATA])
def test_launchers_reject_sets_larger_than_the_data_before_writing(mock_exits, case):
    _assert_refused(mock_exits[f"larger{case}"], LARGER_THAN_DATA[case][2])


@pytest.mark.slow
def test_a_missing_data_dir_fails_within_seconds_naming_it(tmp_path):
    missing = str(tmp_path / "nonexistent")
    proc, seconds = _launch(["experiments/train.py", f"--workdir={tmp_path}/w", f"--data_dir={missing}"])
    _assert_one_line_error(proc, missing, "--download")
    assert seconds < 30 and not (tmp_path / "w").exists()


@pytest.mark.slow
@pytest.mark.xdist_group("mock_exits")
def test_a_synthetic_file_that_is_not_an_archive_is_named(mock_exits):
    proc, scratch = mock_exits["garbage"]
    _assert_one_line_error(proc, f"--synthetic {scratch / 'garbage.npz'}: not a .npz archive")
    assert not (scratch / "w").exists()


@pytest.mark.slow
@pytest.mark.xdist_group("early_exits")
def test_a_missing_flagfile_is_one_line(early_exits):
    _assert_refused(early_exits["flagfile"], "--flagfile", "nope.cfg")


@pytest.mark.slow
@pytest.mark.xdist_group("mock_exits")
def test_a_hand_broken_workdir_config_is_one_line_and_left_alone(mock_exits):
    proc, scratch = mock_exits["broken"]
    run = scratch / "w"
    _assert_one_line_error(proc, str(run / "config.json"))
    assert sorted(os.listdir(run)) == ["config.json"] and (run / "config.json").read_text() == "{ edited by hand"


@pytest.mark.parametrize(
    "what,match",
    [("model", "network was built from"), ("dataset", "dataset='mnist'")],
)
def test_runs_refuse_a_network_or_dataset_their_config_does_not_record(tmp_path, what, match):
    train = _labels_dataset([0, 0, 1, 1], 2)
    model = models.ModelConfig(width=4, depth=1)
    built = models.ModelConfig(width=8, depth=1) if what == "model" else model
    if what == "dataset":
        train = dataclasses.replace(train, name="fashion_mnist")
    fns = models.make_model(built, train.image_shape, train.num_classes)
    condense_config = condense_run.RunConfig(model=model, condense=condense.CondenseConfig(ipc=1, batch_real=1))
    attack_config = AttackRunConfig(model=model, num_models=6, target_pool=2, num_shadow=2, attacker_pool=2)
    with pytest.raises(ValueError, match=match):
        condense_run.run_condensation(condense_config, fns, train, train, str(tmp_path / "c"))
    with pytest.raises(ValueError, match=match):
        attack_run.run_attack(attack_config, fns, (train, train), str(tmp_path / "a"))
    assert not (tmp_path / "c").exists() and not (tmp_path / "a").exists()


# ------------------------------------------------------------------------- issue 27: reliability as met


def _nan_set(tmp_path, bad_index=3, value=math.nan):
    images = np.zeros((5, 28, 28, 1), np.float32)
    images[bad_index, 7, 5, 0] = value
    path = tmp_path / "poisoned.npz"
    np.savez(path, images=images, labels=np.arange(5))
    return str(path), images


@pytest.mark.parametrize("value", [NAN, INF, -INF])
def test_non_finite_pixels_are_refused_by_every_reader_naming_the_image(tmp_path, value):
    path, images = _nan_set(tmp_path, value=value)
    with pytest.raises(data.DataError, match=re.escape(f"{path}: image 3 (of 5) has a non-finite pixel")):
        data.load_synthetic_npz(path)
    with pytest.raises(data.DataError, match=r"mnist: image 3 \(of 5\)"):
        data.ArrayDataset(images, np.arange(5, dtype=np.int32), 10, "mnist")  # What attack and study runs get.
    fns = models.make_model(models.ModelConfig(width=4, depth=1), (28, 28, 1), 10)
    config = evaluation.EvalConfig(num_models=1, train=train_lib.TrainConfig(epochs=1))
    with pytest.raises(data.DataError, match=r"the training set: image 3 \(of 5\)"):
        evaluation.evaluate_training_set(fns, config, None, (images, np.arange(5)), (images[:1], np.arange(1)))


def test_errors_share_one_user_facing_base():
    for cls in (
        data.DataError,
        workdir.WorkdirError,
        attack_run.ExportError,
        errors.WriteError,
        errors.ConfigError,
        checkpoint.CheckpointError,
        condense_run.DivergedError,
    ):
        assert issubclass(cls, errors.UserError), cls


def test_run_guarded_ends_a_user_error_in_one_line_and_status_2(capsys):
    def bad_setting():
        study.StudyConfig(dp_delta=2.0)

    with pytest.raises(SystemExit) as info:
        common.run_guarded(bad_setting)
    err = capsys.readouterr().err
    assert info.value.code == 2 and err == "error: dp_delta must be in (0, 1), got 2.0\n", err


def test_run_guarded_lets_a_plain_valueerror_keep_its_traceback(capsys):
    """A ValueError that is no UserError is a bug: it propagates, with the frame that raised it, and no `error:`."""

    def buggy():
        np.zeros(3).reshape(2, 2)  # numpy's ValueError: a programming error, not the user's.

    with pytest.raises(ValueError, match="cannot reshape") as info:
        common.run_guarded(buggy)
    assert not isinstance(info.value, errors.UserError)
    assert any(entry.name == "buggy" for entry in info.traceback), info.traceback
    assert "error:" not in capsys.readouterr().err


def _stored_export(tmp_path):
    """A small archive named like an export, stored (not deflated) so a flipped byte is a CRC error."""
    path = tmp_path / "attack_data.npz"
    np.savez(path, keep=np.ones((6, 50), bool), logits=np.arange(3000, dtype=np.float32))
    return path


@pytest.mark.parametrize("damage", ["missing", "truncated", "bad crc"])
def test_report_only_on_a_damaged_export_is_one_line_naming_the_file(tmp_path, capsys, damage):
    path = _stored_export(tmp_path)
    raw = path.read_bytes()
    if damage == "missing":
        path.unlink()
    elif damage == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    else:
        middle = raw.index(b"\x93NUMPY", 200) + 200  # Inside the second array's data.
        path.write_bytes(raw[:middle] + bytes([raw[middle] ^ 0xFF]) + raw[middle + 1 :])
    with pytest.raises(SystemExit) as info:
        common.run_guarded(lambda: attack_run.report_only(str(tmp_path)))
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {path}: "), err
    assert ("no such file" if damage == "missing" else "damaged attack export") in err, err
    assert sorted(os.listdir(tmp_path)) == ([] if damage == "missing" else ["attack_data.npz"])


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_is_one_line_naming_the_path_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(os, "fsync", _no_space)
    target = str(tmp_path / "results.json")
    with pytest.raises(errors.WriteError) as info:
        checkpoint.write_json(target, {"a": 1})
    assert str(info.value).startswith(f"cannot write {target}: no space left on device (ENOSPC); free some space")
    assert os.listdir(tmp_path) == []  # No temporary file either.
    with pytest.raises(SystemExit) as exit_info:
        common.run_guarded(lambda: checkpoint.write_json(target, {"a": 1}))
    assert exit_info.value.code == 2 and capsys.readouterr().err.count("\n") == 1
    monkeypatch.undo()
    checkpoint.write_json(target, {"a": 1})  # Space freed: the same write works.


def test_a_full_disk_during_a_checkpoint_save_names_the_step(tmp_path, monkeypatch):
    ckpt = checkpoint.Checkpointer(str(tmp_path / "ckpt"))

    def save(*args, **kwargs):  # TensorStore reports a full disk in words, wrapped in its own error type.
        raise ValueError("Error writing ocdbt: [RESOURCE_EXHAUSTED] No space left on device")

    monkeypatch.setattr(ckpt._manager, "save", save)
    with pytest.raises(errors.WriteError, match=re.escape(f"cannot write {tmp_path / 'ckpt' / '3'}: no space left")):
        ckpt.save(3, {"x": np.zeros(2)})
    ckpt.close()


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES, errno.ENOSPC])
def test_launchers_turn_a_disk_oserror_from_anywhere_into_one_line(capsys, code):
    def write():
        raise OSError(code, os.strerror(code), "/runs/x/loss.png")

    with pytest.raises(SystemExit) as info:
        common.run_guarded(write)
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"error: cannot write /runs/x/loss.png: {os.strerror(code).lower()}"), err


def test_other_oserrors_keep_their_traceback():
    with pytest.raises(ConnectionResetError):
        common.run_guarded(lambda: (_ for _ in ()).throw(ConnectionResetError(errno.ECONNRESET, "reset")))


def _offline(*args, **kwargs):
    raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")


def test_an_offline_download_fails_fast_and_leaves_the_data_directory_alone(tmp_path, monkeypatch):
    (tmp_path / "other_dataset").mkdir()
    (tmp_path / "other_dataset" / "keep.txt").write_text("x")
    monkeypatch.setattr(socket, "getaddrinfo", _offline)  # The offline machine, simulated: no name resolves.
    tic = time.perf_counter()
    with pytest.raises(data.DataError) as info:
        data.load_split("mnist", "train", str(tmp_path), download=True)
    assert time.perf_counter() - tic < 30
    message = str(info.value)
    assert message.startswith(f"cannot download mnist into {tmp_path}:") and "--data_dir" in message, message
    assert "\n" not in message
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == [
        "other_dataset",
        "other_dataset/keep.txt",
    ]


def test_a_failed_download_removes_what_it_wrote(tmp_path, monkeypatch):
    tfds = data._import_tfds()
    (tmp_path / "keep.txt").write_text("x")
    monkeypatch.setattr(data, "_check_online", lambda name, where: None)  # Online, then the download breaks.
    real_load = tfds.load

    def load(*args, download, **kwargs):
        if not download:
            return real_load(*args, download=download, **kwargs)
        (tmp_path / "downloads" / "extracted").mkdir(parents=True)
        (tmp_path / "downloads" / "incomplete.abc123").write_text("half")
        (tmp_path / "mnist" / "incomplete.3.0.1").mkdir(parents=True)
        raise ConnectionError("connection reset mid-download")

    monkeypatch.setattr(tfds, "load", load)
    with pytest.raises(data.DataError, match="connection reset"):
        data.load_split("mnist", "train", str(tmp_path), download=True)
    assert sorted(os.listdir(tmp_path)) == ["keep.txt"]


def test_an_attacker_pool_with_a_class_lacking_in_or_out_rows_is_refused_before_training():
    train = _labels_dataset(np.arange(400) % 9, 10)  # Class 9 never occurs: no IN and no OUT rows.
    config = AttackRunConfig(num_models=6, target_pool=100, num_shadow=2, attacker_pool=40)
    with pytest.raises(ValueError) as info:
        with common.naming_flags():
            pools.check_recipe_fits(config, train)
    message = str(info.value)
    assert message.startswith("--attacker_pool=40 leaves class 9 with 0 IN and 0 OUT rows"), message
    enough = dataclasses.replace(config, attacker_pool=200)
    pools.check_recipe_fits(enough, _labels_dataset(np.arange(400) % 10, 10))  # Every class both ways: fine.


@pytest.mark.slow
@pytest.mark.xdist_group("early_exits")
def test_train_refuses_a_poisoned_synthetic_set_before_loading_any_data(early_exits):
    proc, scratch = early_exits["poisoned"]
    _assert_one_line_error(proc, f"--synthetic {scratch / 'nan.npz'}: image 0 (of 10) has a non-finite pixel (nan)")
    assert not (scratch / "w").exists()


@pytest.mark.slow
@pytest.mark.xdist_group("early_exits")
def test_a_finished_workdir_is_refused_before_loading_any_data(early_exits):
    proc, scratch = early_exits["finished"]
    _assert_one_line_error(proc, f"{scratch / 'w'} already holds finished results")
    assert sorted(os.listdir(scratch / "w")) == ["results.json"]
