"""One source of truth for settings: a launcher flag that sets a config field has the field's default.

Each launcher (experiments/*.py) is loaded in-process onto a FlagValues of its own (absl's DEFINE_* pointed at
it), so the global FLAGS that other tests define and parse are untouched. A flag is matched to a field of the
dataclasses its launcher builds by name (``CONFIGS`` lists renames); a flag whose default differs on purpose is
in ``EXCEPTIONS`` with the reason.
"""

import dataclasses
import functools
import importlib.util
import os
import sys
from unittest import mock

import pytest
from absl import flags

# Every module a launcher imports at the top, imported here first: one that defines absl flags of its own
# (absl.app, Orbax) must define them on the global FLAGS, not on a launcher's FlagValues below.
from absl import app  # noqa: F401
from dcjax import augment, condense, dpsgd, evaluation, models, strategy
from dcjax import train as train_lib
from dcjax.condense import run as condense_run
from dcjax.privacy import bank, shokri, study
from dcjax.privacy.config import AttackRunConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCHERS = ("condense", "train", "attack", "privacy_study", "dp_tune")
_DEFINES = ("DEFINE_bool", "DEFINE_enum", "DEFINE_float", "DEFINE_integer", "DEFINE_list", "DEFINE_string")

# (a dataclass, or the default instance a launcher's settings replace, {field: its flag where the names differ;
# None: the same-named flag sets something else}). Fields holding a dataclass (model, train, ...) are no flags.
_MODEL = (models.ModelConfig, {"name": "model", "init": "net_init"})
_CONDENSE = (condense.CondenseConfig, {})
_RUN = (AttackRunConfig, {})
_SHOKRI = (
    shokri.AttackConfig,
    {"hidden": "attack_hidden", "features": "attack_features", "steps": "attack_steps", "lr": None},  # --lr: models'.
)
_SMALL = {"epochs": "small_epochs", "batch_size": "small_batch_size", "augment": "small_augment"}
CONFIGS = {
    "condense": [
        _MODEL,
        _CONDENSE,
        (condense_run.RunConfig, {}),
        (evaluation.EvalConfig, {"num_models": "num_eval"}),
        (evaluation.EvalConfig().train, {"epochs": "eval_epochs", "augment": "eval_augment"}),
    ],
    "train": [_MODEL, (evaluation.EvalConfig, {}), (evaluation.EvalConfig().train, {})],
    "attack": [
        _MODEL,
        _CONDENSE,
        _RUN,
        _SHOKRI,
        (AttackRunConfig().train, {}),
        (bank.Recipe, {"kind": "target"}),
    ],
    "privacy_study": [
        _MODEL,
        _CONDENSE,
        _RUN,
        _SHOKRI,
        (study.StudyConfig, {}),
        (study.StudyConfig().train_original, {}),
        (study.StudyConfig().train_small, _SMALL),  # Its lr is --lr (study_config replaces the rest).
    ],
    "dp_tune": [
        _MODEL,
        _RUN,
        (train_lib.TrainConfig, {}),
        (dpsgd.DPConfig, {"l2_clip": "dp_clip"}),
        # Not built, but its DP rows are what dp_tune tunes; dp_tune's --dp_epochs is the grid's list.
        (study.StudyConfig, {"dp_epochs": None}),
        (study.StudyConfig().train_original, {}),
    ],
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
        (launcher, "augment"): "None: 'dc' for small MNIST training sets, else 'none' (common.train_config)"
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


@functools.cache
def launcher_flags(name: str) -> flags.FlagValues:
    """The flags experiments/<name>.py defines, on a FlagValues of their own (unparsed: defaults only)."""
    fresh = flags.FlagValues()
    defines = {define: functools.partial(getattr(flags, define), flag_values=fresh) for define in _DEFINES}
    spec = importlib.util.spec_from_file_location(f"_flags_{name}", os.path.join(ROOT, "experiments", f"{name}.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    with mock.patch.multiple(flags, **defines), mock.patch.object(sys, "path", list(sys.path)):
        with mock.patch.dict(sys.modules, {spec.name: module}):  # absl names a flag's module from sys.modules.
            spec.loader.exec_module(module)
    return fresh


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


def _mapped(launcher: str):
    """(dataclass name, field, flag, field default) for every field a flag of ``launcher`` sets."""
    defined = launcher_flags(launcher)
    for config, renames in CONFIGS[launcher]:
        assert {f for f in renames.values() if f} <= set(defined), (launcher, renames)  # No renames to typos.
        cls = config if isinstance(config, type) else type(config)
        for field, default in _defaults(config).items():
            flag = renames.get(field, field)
            if flag in defined and not dataclasses.is_dataclass(default):
                yield cls.__name__, field, flag, default


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_every_flag_that_sets_a_field_has_its_default(launcher):
    defined, wrong, excepted = launcher_flags(launcher), [], set()
    for cls, field, flag, default in _mapped(launcher):
        value = defined[flag].default
        value = tuple(value) if isinstance(value, list) else value  # A list flag; the field holds a tuple.
        if (launcher, flag) in EXCEPTIONS:
            excepted.add(flag)
            assert value != default, f"{launcher} --{flag} now equals {cls}.{field}: drop its EXCEPTIONS entry"
        elif value != default:
            wrong.append(f"{launcher} --{flag}={value!r}, {cls}.{field}={default!r}")
    assert not wrong, "defaults stated twice and now apart (take them with common.field_default): " + "; ".join(wrong)
    listed = {flag for name, flag in EXCEPTIONS if name == launcher}
    assert listed == excepted, f"EXCEPTIONS entries that map to no field of {launcher}: {sorted(listed - excepted)}"


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_every_enum_flag_has_its_settings_choices(launcher):
    defined = launcher_flags(launcher)
    enums = {name: list(defined[name].parser.enum_values) for name in defined if defined[name].flag_type() == "enum"}
    assert set(enums) <= set(ENUM_CHOICES), sorted(set(enums) - set(ENUM_CHOICES))
    assert enums == {name: list(ENUM_CHOICES[name]) for name in enums}


def test_each_launcher_loads_its_flags_alone():
    """A launcher's FlagValues holds its flags and common.py's only, and none of them leaks onto the global FLAGS."""
    for launcher in LAUNCHERS:
        assert set(launcher_flags(launcher).flags_by_module_dict()) == {f"_flags_{launcher}", "common"}
    assert not [module for module in flags.FLAGS.flags_by_module_dict() if module.startswith("_flags_")]


def test_field_default_reads_defaults_and_factories_and_refuses_unknown_fields(monkeypatch):
    monkeypatch.syspath_prepend(os.path.join(ROOT, "experiments"))
    import common

    @dataclasses.dataclass
    class Config:
        size: int = 3
        names: list = dataclasses.field(default_factory=lambda: ["a"])

    assert common.field_default(Config, "size") == 3 and common.field_default(Config, "names") == ["a"]
    assert common.field_default(models.ModelConfig, "width") == models.ModelConfig().width
    with pytest.raises(AttributeError, match="no field 'sizes'"):
        common.field_default(Config, "sizes")
    with pytest.raises(AttributeError, match="no default"):
        common.field_default(dpsgd.DPConfig, "capacity")
