"""One source of truth for settings: a launcher flag that sets a config field has the field's default, and every
field of a config a launcher builds is set by a flag, renamed, given by the launcher, or listed here with why not.

Each launcher (experiments/*.py) is loaded in-process onto a FlagValues of its own (absl's DEFINE_* and FLAGS
pointed at it), so the global FLAGS that other tests define and parse are untouched. Its config builders then run
on each committed flagfile of it (experiments/flags/) with `configs.config_from_flags` recorded: each call names
the dataclass (or the default instance the flags replace), the renames and the fields the launcher gives. The
checks read that mapping, the launchers' own, not a copy of it.
"""

import contextlib
import dataclasses
import functools
import os
from typing import NamedTuple
from unittest import mock

import helpers
import pytest
from absl import flags

# Every module a launcher imports at the top, imported here first: one that defines absl flags of its own
# (absl.app, Orbax) must define them on the global FLAGS, not on a launcher's FlagValues below.
from absl import app  # noqa: F401
from dcjax import augment, condense, dpsgd, evaluation, models, strategy
from dcjax import train as train_lib
from dcjax.condense import run as condense_run  # noqa: F401
from dcjax.privacy import bank, shokri, study
from dcjax.privacy.config import AttackRunConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGFILES = os.path.join(ROOT, "experiments", "flags")
LAUNCHERS = ("condense", "train", "attack", "privacy_study", "dp_tune")

# What each launcher builds before it loads data: its config builders, called on its parsed flags.
BUILDS = {
    "condense": lambda m: m.run_config(),
    "train": lambda m: (m.eval_config(), m.configs.model_config()),
    "attack": lambda m: m.run_config(),
    "privacy_study": lambda m: m.study_config(),
    "dp_tune": lambda m: (
        m.configs.model_config(),
        m.split_config(),
        m.setting_config(m.grid(m.check_flags())[0], m.FLAGS.private_size),
    ),
}
# Besides its committed flagfiles (experiments/flags/<launcher>_*.cfg): command lines reaching its other builders.
MORE_CASES = {"attack": [["--target=condense"]], "train": [["--source=subset"]]}

# Fields no flag sets: they keep their default (or the launcher's default instance's). Keyed (dataclass, field) for
# every launcher, (launcher, dataclass, field) for one.
_EVAL = "condense.py's evaluation: the protocol's (EvalConfig().train); only its epochs and augmentation have flags"
NO_FLAG = {
    ("condense", train_lib.TrainConfig, "batch_size"): _EVAL,
    ("condense", train_lib.TrainConfig, "lr"): _EVAL,
    ("condense", evaluation.EvalConfig, "strategy"): "condense.py's evaluation runs the backend's (auto)",
    (train_lib.TrainConfig, "momentum"): "the protocol's optimiser (docs/protocol.md section 4)",
    (train_lib.TrainConfig, "weight_decay"): "the protocol's optimiser (docs/protocol.md section 4)",
    (train_lib.TrainConfig, "microbatch"): "per backend (engine): memory, not results",
    (train_lib.TrainConfig, "dp"): "DP-SGD: set per DP row (study) and per setting (dp_tune.setting_config)",
    (train_lib.TrainConfig, "stop_epochs"): "DP-SGD checkpoints: set per point (study.dp_points)",
    (condense.CondenseConfig, "momentum_img"): "the paper's synthetic-image optimiser",
    (condense.CondenseConfig, "microbatch"): "per backend: memory, not results",
    (shokri.AttackConfig, "weight_decay"): "the attack classifiers' L2, fixed",
    (AttackRunConfig, "rmia"): "RMIA's paper settings; its `online` is set per attack",
    (evaluation.EvalConfig, "test_batch"): "the test-set batch: memory, not results",
}
# (launcher, dataclass): a config built for a part of its fields only, and which part.
PARTIAL = {
    ("dp_tune", AttackRunConfig): "the study's split only (pools.make_split reads dataset, seed and the pools)",
}
# Configs a launcher does not build but whose settings its flags mirror: (dataclass or instance, renames).
MIRRORS = {
    "dp_tune": [
        (study.StudyConfig, {"dp_epochs": None}),  # The DP rows it tunes; its --dp_epochs is the grid's list.
        (AttackRunConfig, {}),  # The study's run, whose model-axis strategy its --strategy defaults to.
    ],
}
# Flags that set no config field: the launcher uses them itself.
OWN = {
    **dict.fromkeys(["data_dir", "download"], "where the data loads from (data.load_split)"),
    **dict.fromkeys(["workdir", "overwrite", "distributed"], "where and how the launcher runs, not what it computes"),
}
LAUNCHER_OWN = {
    "train": {
        "dataset": "the data loaded (train.py builds no config with a dataset)",
        "seed": "the models' root key (evaluation.evaluate_training_set's key)",
        "source": "which training set (train._training_set)",
        "subset_ipc": "the random subset's size (train._training_set)",
        "synthetic": "the synthetic set's file (train._synthetic_set)",
    },
    "attack": {"report_only": "re-attack a finished run's export", "reencode": "rewrite a finished run's export"},
    "privacy_study": {
        "tier": "recorded in the results",
        "conclusion": "appended to RESULTS.md",
        "report_only": "re-attack a finished study's exports",
        "report_workers": "how many rows are re-attacked at once (study.reattack_rows)",
    },
    "dp_tune": {
        "inside_pool": "where the tuning sets are drawn from (dp_tune.tuning_split)",
        "private_size": "the tuning sets (dp_tune.tuning_split)",
        "val_size": "the tuning sets (dp_tune.tuning_split)",
        "batch_sizes": "the grid (dp_tune.grid)",
        "dp_epochs": "the grid (dp_tune.grid)",
        "lrs": "the grid (dp_tune.grid)",
        "epsilons": "the grid (dp_tune.grid)",
    },
}

_BY_METHOD = "None: --method's paper default (condense.METHODS[method].defaults), where CondenseConfig has DC's"
_POOLS = "1000, not 2000: the CPU study tier's pools (privacy_study_cpu.cfg), whose DP rows dp_tune tunes"
# (launcher, flag) -> why its default is not its field's.
EXCEPTIONS = {
    **{
        (launcher, flag): _BY_METHOD
        for launcher in ("condense", "attack", "privacy_study")
        for flag in ("iterations", "init", "lr_img")
    },
    **{
        (launcher, "dsa_strategy"): "None: per --dataset (dsa.strategy_for), where CondenseConfig has the digits'"
        for launcher in ("condense", "attack", "privacy_study")
    },
    **{
        (launcher, "augment"): "None: 'dc' for small MNIST training sets, else 'none' (configs.train_config)"
        for launcher in ("train", "attack", "privacy_study")
    },
    ("condense", "eval_augment"): "None: per --method and --dataset (condense.default_eval_augment)",
    ("privacy_study", "small_augment"): "None: 'dc' on MNIST, else 'none' (privacy_study.study_config)",
    ("dp_tune", "target_pool"): _POOLS,
    ("dp_tune", "attacker_pool"): _POOLS,
}

# Enum flag -> the tuple its setting is validated against.
AUGMENTS = tuple(augment.AUGMENTATIONS)
ENUM_CHOICES = {
    "model": models.MODEL_NAMES,
    "norm": models.NORMS,
    "activation": models.ACTIVATIONS,
    "pooling": models.POOLINGS,
    "net_init": models.INITS,
    "conv_impl": models.CONV_IMPLS,
    "augment": AUGMENTS,
    "eval_augment": AUGMENTS,
    "small_augment": AUGMENTS,
    "strategy": strategy.STRATEGIES,
    "method": condense.METHODS,
    "attack_features": shokri.FEATURES,
    "target": bank.RECIPES,
    "source": ("full", "subset", "synthetic"),  # train.py's own choice of data: no library setting.
}


class Call(NamedTuple):
    """One `config_from_flags` call: its default (a dataclass or an instance), renames and given fields."""

    default: object
    renames: dict
    given: frozenset


launcher = helpers.launcher


def launcher_flags(name: str) -> flags.FlagValues:
    return launcher(name)[1]


def cases(name: str) -> list[list[str]]:
    """The command lines a launcher's configs are built from: each committed flagfile of it, and MORE_CASES."""
    files = sorted(f for f in os.listdir(FLAGFILES) if f.startswith(name + "_") and f.endswith(".cfg"))
    return [[f"--flagfile=experiments/flags/{f}"] for f in files] + MORE_CASES.get(name, [])


@functools.cache
def recorded(name: str) -> tuple[list[Call], list]:
    """(every distinct `config_from_flags` call, every config built) of the launcher's builders on its `cases`."""
    module, defined = launcher(name)
    calls, built = [], []
    build = module.configs.config_from_flags

    def record(default, renames=None, **given):
        call = Call(default, dict(renames or {}), frozenset(given))
        if call not in calls:
            calls.append(call)
        built.append(build(default, renames, **given))
        return built[-1]

    for args in cases(name):
        defined.unparse_flags()
        with contextlib.chdir(ROOT), mock.patch.object(module.configs, "config_from_flags", record):
            defined([name, *args])  # Nested flagfiles are named from the repository root.
            BUILDS[name](module)
    defined.unparse_flags()
    return calls, built


def _cls(config) -> type:
    return config if isinstance(config, type) else type(config)


def _defaults(config) -> dict:
    """{field: default} of a dataclass (fields without one left out) or of a default instance."""
    if not isinstance(config, type):
        return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    found = {}
    for f in dataclasses.fields(config):
        if f.default is not dataclasses.MISSING:
            found[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            found[f.name] = f.default_factory()
    return found


def _flag_of(field: dataclasses.Field, renames: dict, defined) -> str | None:
    """The launcher flag that sets ``field``, or None: a field holding a config has none, whatever its name."""
    flag = renames.get(field.name, field.name)
    nested = dataclasses.is_dataclass(field.default)
    return flag if field.init and flag is not None and flag in defined and not nested else None


def _mapped(name: str):
    """(dataclass name, field, flag, field default) for every field a flag of launcher ``name`` sets, in the configs
    it builds and those it mirrors."""
    defined = launcher_flags(name)
    configs = [(call.default, call.renames) for call in recorded(name)[0]] + MIRRORS.get(name, [])
    for config, renames in configs:
        assert {f for f in renames.values() if f} <= set(defined), (name, renames)  # No renames to typos.
        defaults = _defaults(config)
        for field in dataclasses.fields(_cls(config)):
            flag = _flag_of(field, renames, defined)
            if flag is not None and field.name in defaults:
                yield _cls(config).__name__, field.name, flag, defaults[field.name]


def _same(flag_default, field_default) -> bool:
    """A list flag (strings, or its default as written) holds a tuple field's values."""
    if isinstance(flag_default, list) and isinstance(field_default, tuple):
        return [str(v) for v in flag_default] == [str(v) for v in field_default]
    return flag_default == field_default


@pytest.mark.parametrize("name", LAUNCHERS)
def test_every_flag_that_sets_a_field_has_its_default(name):
    defined, wrong, excepted = launcher_flags(name), [], set()
    for cls, field, flag, default in _mapped(name):
        value = defined[flag].default
        if (name, flag) in EXCEPTIONS:
            excepted.add(flag)
            assert not _same(value, default), f"{name} --{flag} now equals {cls}.{field}: drop its EXCEPTIONS entry"
        elif not _same(value, default):
            wrong.append(f"{name} --{flag}={value!r}, {cls}.{field}={default!r}")
    assert not wrong, "defaults stated twice and now apart (take them with configs.field_default): " + "; ".join(wrong)
    listed = {flag for launcher_name, flag in EXCEPTIONS if launcher_name == name}
    assert listed == excepted, f"EXCEPTIONS entries that map to no field of {name}: {sorted(listed - excepted)}"


def _unset_fields(name: str) -> set:
    """(dataclass, field) of every field of ``name``'s configs that no flag sets, no rename names and the launcher
    does not give."""
    defined, unset = launcher_flags(name), set()
    for call in recorded(name)[0]:
        for field in dataclasses.fields(_cls(call.default)):
            explicit_none = call.renames.get(field.name, "") is None  # A same-named flag meaning something else.
            flag = _flag_of(field, call.renames, defined)
            if field.init and flag is None and field.name not in call.given and not explicit_none:
                unset.add((_cls(call.default), field.name))
    return unset


@pytest.mark.parametrize("name", LAUNCHERS)
def test_every_field_has_a_flag_or_is_set_by_the_launcher(name):
    missing = [
        f"{cls.__name__}.{field}"
        for cls, field in sorted(_unset_fields(name), key=str)
        if (cls, field) not in NO_FLAG and (name, cls, field) not in NO_FLAG and (name, cls) not in PARTIAL
    ]
    assert not missing, (
        f"{name} sets no value for {missing}: define a flag of the field's name (default configs.field_default), "
        "give it in the launcher's config_from_flags call, or list it in NO_FLAG with why"
    )


def test_no_flag_lists_only_fields_that_no_flag_sets():
    unset = {(name, *field) for name in LAUNCHERS for field in _unset_fields(name)}
    stale = [key for key in NO_FLAG if not any(key == found[-len(key) :] for found in unset)]
    assert not stale, f"NO_FLAG entries set by a flag or a launcher everywhere: {stale}"


@pytest.mark.parametrize("name", LAUNCHERS)
def test_every_flag_sets_a_field_or_is_the_launchers_own(name):
    defined = set(launcher_flags(name))
    mapped = {flag for _, _, flag, _ in _mapped(name)}
    own = set(OWN) | set(LAUNCHER_OWN.get(name, {}))
    assert not own & mapped, f"{name}: listed as the launcher's own but set a config field: {sorted(own & mapped)}"
    assert own <= defined, f"{name}: no such flags: {sorted(own - defined)}"
    assert defined <= mapped | own, (
        f"{name}: flags that set no field of the configs it builds: {sorted(defined - mapped - own)} (name the "
        "field's flag after it, or rename it in the config_from_flags call; or list the flag in LAUNCHER_OWN)"
    )


@pytest.mark.parametrize("name", LAUNCHERS)
def test_every_config_built_is_frozen_and_hashable(name):
    """A list flag reaches its field as a tuple: configs are hashable (jit static arguments, dict keys)."""
    calls, built = recorded(name)
    assert calls and built
    for config in built:
        hash(config)
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(config, dataclasses.fields(config)[0].name, None)


def test_every_committed_flagfile_is_a_launchers():
    files = {f for f in os.listdir(FLAGFILES) if f.endswith(".cfg")}
    claimed = [args[0].rsplit("/", 1)[1] for name in LAUNCHERS for args in cases(name) if args[0].startswith("--flagf")]
    assert sorted(claimed) == sorted(files)  # Each exactly once: every one is built by the tests above.


@pytest.mark.parametrize("name", LAUNCHERS)
def test_every_enum_flag_has_its_settings_choices(name):
    defined = launcher_flags(name)
    enums = {flag: list(defined[flag].parser.enum_values) for flag in defined if defined[flag].flag_type() == "enum"}
    assert set(enums) <= set(ENUM_CHOICES), sorted(set(enums) - set(ENUM_CHOICES))
    assert enums == {flag: list(ENUM_CHOICES[flag]) for flag in enums}


def test_each_launcher_loads_its_flags_alone():
    """A launcher's FlagValues holds its flags and configs.py's only, and none of them leaks onto the global FLAGS."""
    for name in LAUNCHERS:
        assert set(launcher_flags(name).flags_by_module_dict()) == {f"_flags_{name}", "configs"}
    assert not [module for module in flags.FLAGS.flags_by_module_dict() if module.startswith("_flags_")]


def test_field_default_reads_defaults_and_factories_and_refuses_unknown_fields(monkeypatch):
    monkeypatch.syspath_prepend(os.path.join(ROOT, "experiments"))
    import configs

    @dataclasses.dataclass
    class Config:
        size: int = 3
        names: list = dataclasses.field(default_factory=lambda: ["a"])

    assert configs.field_default(Config, "size") == 3 and configs.field_default(Config, "names") == ["a"]
    assert configs.field_default(models.ModelConfig, "width") == models.ModelConfig().width
    with pytest.raises(AttributeError, match="no field 'sizes'"):
        configs.field_default(Config, "sizes")
    with pytest.raises(AttributeError, match="no default"):
        configs.field_default(dpsgd.DPConfig, "capacity")
