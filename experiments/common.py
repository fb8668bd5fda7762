"""Flags shared by the launchers, and the one place where errors become exit codes.

Launchers stay thin (Flax-examples style): parse flags, build frozen configs, call one
library function, report. Library code defines no flags and prints nothing.
"""

import contextlib
import dataclasses
import functools
import os
import sys

from absl import flags
from absl import logging

from dcjax import augment as augment_lib
from dcjax import errors
from dcjax import models
from dcjax import strategy as strategy_lib

FLAGS = flags.FLAGS
AUGMENTS = tuple(augment_lib.AUGMENTATIONS)  # What TrainConfig.augment accepts.


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


def define_train_flags(defaults):
    """Training of the models a launcher trains (docs/protocol.md section 4 optimiser).

    defaults: the launcher's default ``TrainConfig`` (e.g. ``AttackRunConfig``'s ``train``), whose epochs,
    batch size and lr the flags take.
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


def train_config(small_set: bool):
    """TrainConfig from the training flags; ``small_set`` picks the default augmentation."""
    from dcjax import augment as augment_lib
    from dcjax import train as train_lib

    augment = FLAGS.augment or (augment_lib.small_set_augment(FLAGS.dataset) if small_set else "none")
    with naming_flags():  # TrainConfig checks epochs, batch_size, lr (finite, > 0).
        return train_lib.TrainConfig(epochs=FLAGS.epochs, batch_size=FLAGS.batch_size, lr=FLAGS.lr, augment=augment)


def define_condense_flags():
    """Condensation settings; defaults are the paper's for the chosen --method (docs/protocol.md sections 3, 5):
    ``CondenseConfig``'s, but None where they differ by method or dataset (`condense_config` fills them)."""
    from dcjax import condense
    from dcjax import models as models_lib

    default = functools.partial(field_default, condense.CondenseConfig)
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
        models_lib.PRECISIONS,
        "Matmul inputs of the matching network (condensation only; evaluation and training stay fp32): fp32, or bf16 "
        "with fp32 accumulation (opt-in; its speed and accuracy: benchmarks/condense_step.py, BUILD.md).",
    )


def condense_config():
    """CondenseConfig from the condensation flags; unset flags take --method's paper defaults."""
    from dcjax import condense, dsa

    defaults = dataclasses.asdict(condense.METHODS[FLAGS.method].defaults)
    chosen = {
        name: default if getattr(FLAGS, name) is None else getattr(FLAGS, name) for name, default in defaults.items()
    }
    strategy = FLAGS.dsa_strategy or dsa.strategy_for(FLAGS.dataset)
    with naming_flags():  # CondenseConfig checks every field it takes (dsa_strategy too), each named like its flag.
        return condense.CondenseConfig(
            ipc=FLAGS.ipc,
            iterations=chosen["iterations"],
            outer_loop=FLAGS.outer_loop,
            inner_loop=FLAGS.inner_loop,
            batch_real=FLAGS.batch_real,
            batch_train=FLAGS.batch_train,
            lr_img=chosen["lr_img"],
            lr_net=FLAGS.lr_net,
            distance=FLAGS.distance,
            init=chosen["init"],
            class_strategy=FLAGS.class_strategy,
            method=FLAGS.method,
            dsa_strategy=strategy,
            precision=FLAGS.precision,
        )


def define_attack_flags():
    """The membership-inference setting (docs/protocol.md section 7): pools, bank, shadows, attacks; defaults
    ``AttackRunConfig``'s (``shokri.AttackConfig``'s for --attack_*)."""
    from dcjax.privacy import shokri
    from dcjax.privacy.config import AttackRunConfig

    default = functools.partial(field_default, AttackRunConfig)
    attack = functools.partial(field_default, shokri.AttackConfig)
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
    """AttackRunConfig from the attack flags with the given recipe and training."""
    from dcjax.privacy import shokri
    from dcjax.privacy.config import AttackRunConfig

    with naming_flags(hidden="attack_hidden", features="attack_features", steps="attack_steps"):
        attack = shokri.AttackConfig(
            hidden=FLAGS.attack_hidden, features=FLAGS.attack_features, steps=FLAGS.attack_steps
        )
    with naming_flags():  # AttackRunConfig checks the pools, bank, queries, chunks, resamples.
        return AttackRunConfig(
            dataset=FLAGS.dataset,
            seed=FLAGS.seed,
            model=model_config(),
            train=train,
            recipe=recipe,
            num_models=FLAGS.num_models,
            target_pool=FLAGS.target_pool,
            num_shadow=FLAGS.num_shadow,
            attacker_pool=FLAGS.attacker_pool,
            shokri_sample=FLAGS.shokri_sample,
            num_queries=FLAGS.num_queries,
            num_canaries=FLAGS.num_canaries,
            num_population=FLAGS.num_population,
            attack=attack,
            models_per_chunk=FLAGS.models_per_chunk,
            strategy=FLAGS.strategy,
            num_resamples=FLAGS.num_resamples,
        )


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


def init_runtime():
    """Multi-host jobs join JAX's distributed runtime before any other JAX call."""
    if FLAGS.distributed:
        import jax

        jax.distributed.initialize()


def config_from_flags(cls, renames: dict | None = None, **given):
    """``cls(**given)``, every other field set by its flag: the flag of the field's name, or ``renames[field]``
    (None: no flag sets it, e.g. a same-named flag that means something else; it keeps its default). Its
    ConfigErrors name the flag (`naming_flags`). The copy from flags into a config, written once: a new field
    with a flag of its name is set by it, and tests/test_flags.py checks the two defaults agree."""
    renames = renames or {}
    values = {}
    for field in dataclasses.fields(cls):
        flag = renames.get(field.name, field.name)
        if field.init and field.name not in given and flag is not None and flag in FLAGS:
            values[field.name] = FLAGS[flag].value
    with naming_flags(**{name: flag for name, flag in renames.items() if flag}):
        return cls(**values, **given)


# ModelConfig's fields whose flags are named otherwise; --precision is condensation's (CondenseConfig.precision).
MODEL_FLAGS = {"name": "model", "init": "net_init", "precision": None}


def model_config():
    return config_from_flags(models.ModelConfig, MODEL_FLAGS)


class _DropLibraryInfo:
    """absl-handler filter: INFO records from TFDS/Orbax internals drown the progress lines."""

    NOISY = ("orbax", "tensorflow_datasets")

    def filter(self, record):
        return record.levelno > 20 or not any(n in record.pathname for n in self.NOISY)


def quiet_libraries():
    """TFDS imports TensorFlow: keep it quiet before it loads; hide library INFO chatter."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.set_verbosity(logging.INFO)
    logging.get_absl_handler().addFilter(_DropLibraryInfo())


def fail(message: str):
    """One clear line on stderr and a non-zero exit: the contract for bad input."""
    sys.stderr.write(f"error: {message}\n")
    sys.exit(2)


def flag_error(flag: str, detail: str) -> errors.ConfigError:
    """A launcher's own check of its flag ``--flag``: the ConfigError reading '--flag <detail>'."""
    return errors.ConfigError(flag, detail, flag=flag)


def flag_for(setting: str | None, renames: dict | None = None) -> str | None:
    """The flag of a config field: ``renames[setting]`` (hidden -> attack_hidden), else the flag of the same name;
    None when there is no such flag (a setting no launcher flag sets, such as TrainConfig.momentum)."""
    flag = (renames or {}).get(setting, setting)
    return flag if flag is not None and flag in FLAGS else None


@contextlib.contextmanager
def naming_flags(**renames):
    """ConfigErrors raised inside (config checks, data-fit checks) name their setting's flag (`flag_for`) in place
    of the field: the error carries the field, so nothing parses its message."""
    try:
        yield
    except errors.ConfigError as e:
        flag = flag_for(e.setting, renames)
        if flag is None:
            raise
        raise e.named(flag) from None


def parse_flags(argv):
    """app.run's flags_parser: a bad flag value or a missing --flagfile is one `error:` line, exit 2."""
    try:
        return FLAGS(argv)
    except flags.Error as e:
        message = " ".join(str(e).split()).removeprefix("ERROR:: ")
        fail(f"--flagfile: {message}" if isinstance(e, flags.CantOpenFlagFileError) else message)


def run_guarded(fn, *user_errors):
    """Calls fn(); user-facing errors become `fail`, Ctrl-C becomes `interrupted`, anything else is a real crash.

    User-facing: ``dcjax.errors.UserError`` (config, data, workdir, export, a full disk) and ``user_errors``; an
    OSError whose errno blames the disk or its permissions becomes the same one line. Everything else, a plain
    ValueError included, is a bug and keeps its traceback.
    """
    from dcjax import interrupt

    try:
        return fn()
    except (errors.UserError, *user_errors) as e:
        logging.debug("user error", exc_info=True)
        fail(str(e))
    except OSError as e:
        if not errors.is_environment(e):
            raise
        logging.debug("environment error", exc_info=True)
        fail(str(errors.write_error(e.filename or "a file", e)))
    except interrupt.Interrupted:
        _exit_now()  # Not sys.exit: interpreter shutdown waits on (and can crash in) XLA's threads.


def interrupted_line() -> str:
    """The one line a Ctrl-C ends with: what is safely on disk and how to go on."""
    from dcjax import interrupt

    saved = interrupt.saved()
    if saved is None:
        return "interrupted before anything was saved; rerun the same command to start again"
    return f"interrupted; {saved} is saved: rerun the same command to resume from it"


def _exit_now():
    """How a Ctrl-C ends, from the main thread or the SIGINT watcher (while the main thread is inside XLA): one
    line, locks released, status 130, at once."""
    from dcjax import workdir

    sys.stderr.write(interrupted_line() + "\n")
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    workdir.release()
    os._exit(130)  # The main thread cannot unwind from inside a jitted call; everything on disk is whole.


def hold_workdir(path: str, overwrite: bool = False, config: dict | None = None, finished_ok: bool = False):
    """Before the data loads: ``path`` is usable (named, not a file, writable), not finished (unless
    ``overwrite`` or ``finished_ok``), recorded with the same ``config`` if given, and locked for this run (one
    writer per workdir; only process 0 of a multi-host job locks, the others write the same files)."""
    import jax
    from dcjax import workdir

    workdir.precheck(path, overwrite or finished_ok, config)
    if jax.process_index() == 0:
        workdir.hold(path)


def launcher_main(run):
    """absl main for a launcher: no stray arguments, runtime and logs set up, Ctrl-C honoured within seconds,
    errors in one line, workdir locks released."""

    def main(argv):
        from dcjax import interrupt, workdir

        if len(argv) > 1:
            fail(f"unexpected arguments: {' '.join(argv[1:])}")
        interrupt.install(_exit_now)
        init_runtime()
        quiet_libraries()
        try:
            run_guarded(run)
        finally:
            workdir.release()

    return main
