"""The flags the launchers share and the frozen configs built from them.

A setting is written once, as a dataclass field: a flag takes its default from the field (`field_default`) and
`config_from_flags` copies every flag into the field of its name (or its rename), so a new field with a flag of
its name needs no copy line. tests/test_flags.py checks, for every launcher, that each flag setting a field has
the field's default and that each field has a flag, a rename, or is set by the launcher.
"""

import dataclasses
import functools

from absl import flags

import common
from dcjax import augment as augment_lib
from dcjax import models
from dcjax import strategy as strategy_lib

FLAGS = flags.FLAGS
AUGMENTS = tuple(augment_lib.AUGMENTATIONS)  # What TrainConfig.augment accepts.
# ModelConfig's fields whose flags are named otherwise; --precision is condensation's (CondenseConfig.precision).
MODEL_FLAGS = {"name": "model", "init": "net_init", "precision": None}
# shokri.AttackConfig's: --attack_*; --lr is the models' (TrainConfig.lr), not the attack classifiers'.
SHOKRI_FLAGS = {"hidden": "attack_hidden", "features": "attack_features", "steps": "attack_steps", "lr": None}


def field_default(cls, name: str):
    """The default of dataclass ``cls``'s field ``name`` (its ``default_factory`` called): a flag's default
    stated once, where the setting is. AttributeError for a field ``cls`` lacks or one without a default."""
    for field in dataclasses.fields(cls):
        if field.name == name:
            if field.default is not dataclasses.MISSING:
                return field.default
            if field.default_factory is not dataclasses.MISSING:
                return field.default_factory()
            raise AttributeError(f"{cls.__name__}.{name} has no default")
    raise AttributeError(f"{cls.__name__} has no field {name!r}")


def flag_fields(cls, renames: dict | None = None) -> dict:
    """{field: its flag} for the fields of dataclass ``cls`` that a defined flag sets: ``renames[field]`` (None:
    none, e.g. a same-named flag that means something else), else the flag of the field's name. Never a field
    holding a config (its default a dataclass, such as AttackRunConfig.model beside --model): the launcher gives
    it."""
    renames = renames or {}
    found = {}
    for field in dataclasses.fields(cls):
        flag = renames.get(field.name, field.name)
        if field.init and flag is not None and flag in FLAGS and not dataclasses.is_dataclass(field.default):
            found[field.name] = flag
    return found


def config_from_flags(default, renames: dict | None = None, **given):
    """The config ``default`` (a dataclass: its defaults; or an instance, e.g. AttackRunConfig().train, whose
    values the launcher's flags default to) with ``given`` fields and every other field a flag sets
    (`flag_fields`) replaced; a list flag gives a tuple (configs are frozen). Its ConfigErrors name the flag
    (`common.naming_flags`). The copy from flags into a config, written once."""
    cls = default if isinstance(default, type) else type(default)
    values = {}
    for field, flag in flag_fields(cls, renames).items():
        if field not in given:
            value = FLAGS[flag].value
            values[field] = tuple(value) if isinstance(value, list) else value
    build = cls if default is cls else functools.partial(dataclasses.replace, default)
    with common.naming_flags(**{field: flag for field, flag in (renames or {}).items() if flag}):
        return build(**values, **given)


def define_data_flags():
    from dcjax.privacy.config import AttackRunConfig

    flags.DEFINE_string(
        "dataset",
        field_default(AttackRunConfig, "dataset"),
        "TFDS dataset name (mnist, fashion_mnist, svhn_cropped, cifar10).",
    )
    flags.DEFINE_string(
        "data_dir",
        None,
        "TFDS data directory; default: $TFDS_DATA_DIR or ~/tensorflow_datasets (TFDS downloads there when online).",
    )
    flags.DEFINE_bool(
        "download",
        None,
        "Let TFDS download a dataset missing from the data directory; "
        "default: only when neither --data_dir nor $TFDS_DATA_DIR is set (a named "
        "directory without the data fails at once).",
    )


def define_model_flags():
    default = functools.partial(field_default, models.ModelConfig)
    flags.DEFINE_enum("model", default("name"), models.MODEL_NAMES, "Network architecture.")
    flags.DEFINE_integer("width", default("width"), "ConvNet width (channels).", lower_bound=1)
    flags.DEFINE_integer("depth", default("depth"), "ConvNet depth (blocks).", lower_bound=1)
    flags.DEFINE_enum("norm", default("norm"), models.NORMS, "ConvNet normalisation.")
    flags.DEFINE_enum("activation", default("activation"), models.ACTIVATIONS, "ConvNet activation.")
    flags.DEFINE_enum("pooling", default("pooling"), models.POOLINGS, "ConvNet pooling.")
    flags.DEFINE_enum(
        "net_init",
        default("init"),
        models.INITS,
        "Weight init: 'reference' = PyTorch default uniform, 'flax' = Flax defaults.",
    )
    flags.DEFINE_enum(
        "conv_impl",
        default("conv_impl"),
        models.CONV_IMPLS,
        "Convolution lowering: im2col (matmul; fastest on CPU) or lax.conv.",
    )


def model_config():
    return config_from_flags(models.ModelConfig, MODEL_FLAGS)


def define_train_flags(defaults):
    """Training of the models a launcher trains (docs/protocol.md section 4 optimiser).

    defaults: the launcher's default ``TrainConfig`` (e.g. ``AttackRunConfig``'s ``train``), whose epochs,
    batch size and lr the flags take; `train_config` builds on it.
    """
    from dcjax import evaluation

    flags.DEFINE_integer("epochs", defaults.epochs, "Training epochs (lr x0.1 after half).", lower_bound=1)
    flags.DEFINE_integer("batch_size", defaults.batch_size, "Batch size.", lower_bound=1)
    flags.DEFINE_float("lr", defaults.lr, "Learning rate (SGD, momentum 0.9, weight decay 5e-4).")
    flags.DEFINE_enum(
        "augment",
        None,  # Not defaults.augment: None picks per training set (`train_config`).
        AUGMENTS,
        "Training augmentation; default: 'dc' for small MNIST sets (subset/synthetic, as the reference), else 'none'.",
    )
    flags.DEFINE_enum(
        "strategy",
        field_default(evaluation.EvalConfig, "strategy"),
        strategy_lib.STRATEGIES,
        "How the model axis runs (auto: vmap on GPU/TPU, map on CPU).",
    )


def train_config(defaults, small_set: bool):
    """The TrainConfig ``defaults`` (as `define_train_flags` took it) with the training flags; ``small_set``
    picks the default augmentation."""
    augment = FLAGS.augment or (augment_lib.small_set_augment(FLAGS.dataset) if small_set else "none")
    return config_from_flags(defaults, augment=augment)  # TrainConfig checks epochs, batch_size, lr.


def define_condense_flags():
    """Condensation settings; defaults are the paper's for the chosen --method (docs/protocol.md sections 3, 5):
    ``CondenseConfig``'s, but None where they differ by method or dataset (`condense_config` fills them)."""
    from dcjax import condense

    default = functools.partial(field_default, condense.CondenseConfig)
    _define_synthetic_set_flags(default)
    _define_matching_loop_flags(default)


def _define_synthetic_set_flags(default):
    """What is condensed: the method, its DSA ops, the set's size, iterations and init (`define_condense_flags`)."""
    from dcjax import condense

    flags.DEFINE_enum(
        "method",
        default("method"),
        list(condense.METHODS),
        "Condensation: gradient matching (dc), with "
        "Differentiable Siamese Augmentation (dsa), or distribution matching (dm).",
    )
    flags.DEFINE_string(
        "dsa_strategy",
        None,  # Per --dataset (dsa.strategy_for), not CondenseConfig's digits strategy.
        "DSA ops joined by '_' (dsa and dm); default: "
        "color_crop_cutout_scale_rotate for digits (mnist, svhn_cropped), else with flip.",
    )
    flags.DEFINE_integer("ipc", default("ipc"), "Synthetic images per class.")
    # iterations, init, lr_img: None, not CondenseConfig's (DC's): --method's (condense.METHODS[method].defaults).
    flags.DEFINE_integer(
        "iterations", None, "Iterations (fresh network each); default: 1000 for dc and dsa, 20000 for dm."
    )
    flags.DEFINE_string(
        "init",
        None,
        "Synthetic init: 'noise', 'real' or 'means' (each image the mean of a disjoint random group of its class's "
        "images); default: noise for dc, real for dsa and dm.",
    )
    flags.DEFINE_string("distance", default("distance"), "Gradient distance: ours, mse or cos.")


def _define_matching_loop_flags(default):
    """How each iteration matches: batches, learning rates, loops, class strategy and precision."""
    flags.DEFINE_integer("batch_real", default("batch_real"), "Real images per class per matching step.")
    flags.DEFINE_integer("batch_train", default("batch_train"), "Inner-loop batch on the synthetic set.")
    flags.DEFINE_float(
        "lr_img", None, "Synthetic-image learning rate (SGD momentum 0.5); default: 0.1 for dc and dsa, 1.0 for dm."
    )
    flags.DEFINE_float("lr_net", default("lr_net"), "Inner-loop network learning rate (plain SGD).")
    flags.DEFINE_integer("outer_loop", default("outer_loop"), "Override the ipc table's outer loop.")
    flags.DEFINE_integer("inner_loop", default("inner_loop"), "Override the ipc table's inner loop.")
    flags.DEFINE_string(
        "class_strategy",
        default("class_strategy"),
        "Per-class matching: auto, vmap, map or loop (auto: map on CPU, vmap on GPU/TPU).",
    )
    flags.DEFINE_enum(
        "precision",
        default("precision"),
        models.PRECISIONS,
        "Matmul inputs of the matching network (condensation only; evaluation and training stay fp32): fp32, or bf16 "
        "with fp32 accumulation (opt-in; its speed and accuracy: benchmarks/condense_step.py, BUILD.md).",
    )


def condense_config():
    """CondenseConfig from the condensation flags; unset (None) flags take --method's paper defaults."""
    from dcjax import condense, dsa

    by_method = dataclasses.asdict(condense.METHODS[FLAGS.method].defaults)
    unset = {name: value for name, value in by_method.items() if FLAGS[name].value is None}
    strategy = FLAGS.dsa_strategy or dsa.strategy_for(FLAGS.dataset)
    return config_from_flags(condense.CondenseConfig, dsa_strategy=strategy, **unset)


def define_attack_flags():
    """The membership-inference setting (docs/protocol.md section 7): pools, bank, shadows, attacks; defaults
    ``AttackRunConfig``'s (``shokri.AttackConfig``'s for --attack_*)."""
    from dcjax.privacy import shokri
    from dcjax.privacy.config import AttackRunConfig

    _define_pool_flags(functools.partial(field_default, AttackRunConfig))
    _define_attacker_flags(
        functools.partial(field_default, AttackRunConfig), functools.partial(field_default, shokri.AttackConfig)
    )


def _define_pool_flags(default):
    """The bank and its pools: models, target and attacker pools, shadows, queries, canaries, population."""
    flags.DEFINE_integer(
        "num_models", default("num_models"), "LiRA bank size M (even, >= 6): each is a target in turn."
    )
    flags.DEFINE_integer("target_pool", default("target_pool"), "Examples in the target pool (N).")
    flags.DEFINE_integer(
        "num_shadow",
        default("num_shadow"),
        "Shokri shadow models on the attacker pool; 0 (with --attacker_pool=0): Shokri's shadows are the bank's "
        "other pipelines (leave one out).",
    )
    flags.DEFINE_integer("attacker_pool", default("attacker_pool"), "Examples in the attacker pool (disjoint).")
    flags.DEFINE_integer(
        "shokri_sample",
        default("shokri_sample"),
        "With --num_shadow=0: target-pool examples Shokri's classifiers see (cross-fitted over two halves).",
    )
    flags.DEFINE_integer(
        "num_queries", default("num_queries"), "LiRA queries per example: the image and shifted copies."
    )
    flags.DEFINE_integer(
        "num_canaries",
        default("num_canaries"),
        "Target-pool examples relabelled to a wrong class (canaries, reported as their own slice).",
    )
    flags.DEFINE_integer(
        "num_population",
        default("num_population"),
        "Test images every model is also queried on (RMIA's population samples z, never trained on).",
    )


def _define_attacker_flags(default, attack):
    """Shokri's attack classifier (``attack``: ``shokri.AttackConfig``'s defaults), chunking and the bootstrap."""
    from dcjax.privacy import shokri

    flags.DEFINE_integer("attack_hidden", attack("hidden"), "Shokri attack MLP width (0: softmax regression).")
    flags.DEFINE_enum(
        "attack_features",
        attack("features"),
        shokri.FEATURES,
        "Shokri attack input: softmax vector (the poster) or clipped log-softmax.",
    )
    flags.DEFINE_integer("attack_steps", attack("steps"), "Shokri attack classifier training steps.")
    flags.DEFINE_integer(
        "models_per_chunk",
        default("models_per_chunk"),
        "Models trained together (0: one per device on CPU, all at once on GPU/TPU); finished chunks survive a kill.",
    )
    flags.DEFINE_integer("num_resamples", default("num_resamples"), "Bootstrap resamples for confidence intervals.")


def attack_config(recipe, train):
    """AttackRunConfig from the attack, model and run flags with the given recipe and training."""
    from dcjax.privacy import shokri
    from dcjax.privacy.config import AttackRunConfig

    attack = config_from_flags(shokri.AttackConfig, SHOKRI_FLAGS)
    return config_from_flags(AttackRunConfig, model=model_config(), train=train, recipe=recipe, attack=attack)


def define_run_flags():
    from dcjax.privacy.config import AttackRunConfig

    flags.DEFINE_integer(
        "seed",
        field_default(AttackRunConfig, "seed"),
        "Root PRNG seed; every random choice derives from it.",
        lower_bound=0,
        upper_bound=2**32 - 1,
    )  # jax.random.key wraps outside.
    flags.DEFINE_string("workdir", None, "Output directory.")
    flags.DEFINE_bool("overwrite", False, "Replace finished results in --workdir.")
    flags.DEFINE_bool(
        "distributed",
        False,
        "Call jax.distributed.initialize() first: one process per host of a multi-host GPU/TPU job (see BUILD.md).",
    )
