r"""The privacy study: does training on condensed data protect membership, and at what cost?

One command runs every row (original data, random subset, DC noise init, DC real init; and,
on request, DSA and DM with real init, DP-SGD at epsilon 1, 4, 8, and DP-SGD at fixed noise
multipliers, each run attacked at several checkpoints) as a membership-inference run on the same
split, then writes results.json, RESULTS.md and figures; re-running the same command resumes, and
re-running with more --rows adds them to a finished study (its finished rows are reused).

  # CPU tier (under 2 hours on 2 cores; what it scales down is written in the flagfile)
  python experiments/privacy_study.py --flagfile=experiments/flags/privacy_study_cpu.cfg
  # The CPU tier plus the DSA, DM and DP-SGD rows, in the same workdir
  python experiments/privacy_study.py --flagfile=experiments/flags/privacy_study_more_cpu.cfg
  # GPU tier (paper settings, 16 shadow pipelines; a batch job, see BUILD.md)
  python experiments/privacy_study.py --flagfile=experiments/flags/privacy_study_gpu.cfg

Attack flags are those of attack.py; DC flags those of condense.py (--init is set per row).
"""

import functools
import os
import platform
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

import common  # noqa: E402
import configs  # noqa: E402
from dcjax.privacy import study  # noqa: E402  (row names for --rows)

study_default = functools.partial(configs.field_default, study.StudyConfig)
ORIGINAL = study_default("train_original")  # The 'original' row's training, which the training flags set.
configs.define_data_flags()
configs.define_model_flags()
configs.define_run_flags()
configs.define_train_flags(ORIGINAL)
configs.define_condense_flags()
configs.define_attack_flags()
flags.DEFINE_list(
    "rows",
    list(study_default("rows")),
    "Targets to study, in order; valid: " + ", ".join(study.ROWS) + " (dpsgd_epsE: DP-SGD on all private data at "
    "epsilon E, delta --dp_delta; not run by default), and dpsgd_sigmaS for each S of --dp_noise.",
)
flags.DEFINE_float("dp_delta", study_default("dp_delta"), "Delta of the DP-SGD rows' (epsilon, delta) guarantee.")
flags.DEFINE_float("dp_clip", study_default("dp_clip"), "Per-example gradient L2 clip norm of the DP-SGD rows.")
flags.DEFINE_float("dp_lr", study_default("dp_lr"), "Learning rate of the DP-SGD rows (default: --lr).")
flags.DEFINE_integer(
    "dp_batch_size",
    study_default("dp_batch_size"),
    "EXPECTED batch size of the DP-SGD rows' Poisson-sampled batches (default: --batch_size).",
)
flags.DEFINE_integer(
    "dp_epochs",
    study_default("dp_epochs"),
    "Expected epochs of the DP-SGD rows: round(epochs / q) Poisson-sampled steps (default: --epochs).",
)
flags.DEFINE_list(
    "dp_noise",
    list(study_default("dp_noise")),
    "Noise multipliers of fixed-noise DP-SGD rows: --dp_noise=1.5 makes row dpsgd_sigma1.5 valid in --rows (its "
    "run is attacked at every --dp_checkpoints epoch, each point with the accountant's epsilon for its steps).",
)
flags.DEFINE_list(
    "dp_checkpoints",
    list(study_default("dp_checkpoints")),
    "Expected epochs (strictly increasing) at which each fixed-noise DP-SGD row's one run is attacked, point "
    "<row>_ep<E> each; the last is the run's length, in place of --dp_epochs (default: one point, at --dp_epochs).",
)
flags.DEFINE_integer(
    "dm_iterations",
    study_default("dm_iterations"),
    "Iterations of the DM rows (dm_real, dm_noise, dm_means; DM's paper value by default; --iterations sets the DC "
    "and DSA rows').",
)
flags.DEFINE_list(
    "ladder",
    [str(t) for t in study_default("ladder")],
    "Condensation iterations (comma list, non-negative, strictly increasing; 0: the initial set) at which every "
    "condensed row is also attacked: each becomes one frontier point <row>_it<t> per iteration up to its own count, "
    "and that count; the points resume from each other's snapshots (<workdir>/<row>_snapshots). Empty: one point "
    "per row.",
)
flags.DEFINE_list(
    "row_ladders",
    list(study_default("row_ladders")),
    "Per-row ladders in place of --ladder, each '<row>:<t>:<t>...' (comma list): --row_ladders=dc_real:0 attacks "
    "dc_real at iteration 0 and its own count only; 'dm_noise:' at its own count only.",
)
flags.DEFINE_integer("per_class", study_default("per_class"), "Images per class of the 'subset' row.")
flags.DEFINE_integer(
    "small_epochs",
    study_default("train_small").epochs,
    "Epochs for models trained on 10-per-class sets (subset and synthetic rows; the reference evaluation protocol).",
)
flags.DEFINE_integer("small_batch_size", study_default("train_small").batch_size, "Batch size for those models.")
flags.DEFINE_enum(
    "small_augment",
    None,  # Per --dataset (study_config), not train_small's 'dc' (MNIST's).
    configs.AUGMENTS,
    "Augmentation for those models; "
    "default 'dc' on MNIST (the reference), else 'none'. (--augment is the "
    "'original' row's.)",
)
flags.DEFINE_string("tier", "custom", "Name of the tier, recorded in the results.")
flags.DEFINE_string(
    "conclusion",
    None,
    "Markdown file with a hand-written conclusion to append to RESULTS.md (the numbers above it are generated).",
)
flags.DEFINE_bool(
    "report_only",
    False,
    "Re-attack every row of the finished study in --workdir "
    "from its exports (attack_data.npz) and regenerate results.json, RESULTS.md and "
    "the figures (e.g. with --conclusion); loads no data, trains nothing.",
)
flags.DEFINE_integer(
    "report_workers",
    None,
    "With --report_only: rows re-attacked at once, each in its own process (default: one per CPU core); "
    "the results do not depend on it.",
    lower_bound=1,
)
FLAGS = flags.FLAGS


# The fields of the models trained on 10-per-class sets (``train_small``) whose flags are --small_*; its lr is --lr.
SMALL_FLAGS = {"epochs": "small_epochs", "batch_size": "small_batch_size", "augment": "small_augment"}
NUMBER_LISTS = {"ladder": int, "dp_noise": float, "dp_checkpoints": int}  # List flags of StudyConfig's number tuples.


def study_config():
    """Frozen StudyConfig from flags; ConfigError (naming the flag) on bad values."""
    from dcjax import augment as augment_lib
    from dcjax import train as train_lib
    from dcjax.privacy import bank

    original = configs.train_config(ORIGINAL, small_set=False)
    small_augment = FLAGS.small_augment or augment_lib.small_set_augment(FLAGS.dataset)
    small = configs.config_from_flags(study_default("train_small"), SMALL_FLAGS, augment=small_augment)
    with common.naming_flags(**SMALL_FLAGS):
        train_lib.make_schedule(small, 1)  # Validates the batch size.
    attack, condense = configs.attack_config(bank.Recipe(), original), configs.condense_config()
    lists = {name: _numbers(name, kind) for name, kind in NUMBER_LISTS.items()}
    return configs.config_from_flags(  # StudyConfig checks rows, per_class, dp_*, dm_iterations, ladder.
        study.StudyConfig, attack=attack, train_original=original, train_small=small, condense=condense, **lists
    )


def _numbers(name: str, kind) -> tuple:
    """The list flag ``name`` as numbers of ``kind`` (float or int); ConfigError naming the flag otherwise (StudyConfig
    checks their values and order)."""
    try:
        return tuple(kind(value) for value in FLAGS[name].value)
    except ValueError:
        what = "numbers" if kind is float else "integers"
        raise common.flag_error(name, f"must be a comma list of {what}, got {','.join(FLAGS[name].value)!r}") from None


def check_fits(config, train, test):
    """The pools, every row's recipe (--per_class, --ipc, --batch_real) and the population fit the data."""
    from dcjax.privacy import pools

    with common.naming_flags():
        pools.check_recipe_fits(config.attack, train)  # The pools (its recipe needs nothing more).
        for name in config.rows:  # DP-SGD rows train on whole halves (run_study checks their B_max).
            if name not in study.DP_EPSILONS and name not in study.noise_rows(config):
                pools.check_recipe_fits(study.row_config(config, name), train)
        pools.population_indices(config.attack, len(test.labels))


def _about() -> dict:
    import jax

    device = jax.devices()[0]
    about = {}
    if FLAGS.conclusion:
        if not os.path.isfile(FLAGS.conclusion):
            raise common.flag_error("conclusion", f"must name an existing file, got {FLAGS.conclusion!r}")
        with open(FLAGS.conclusion) as f:
            about["conclusion"] = f.read()
    return {
        **about,
        "tier": FLAGS.tier,
        "command": " ".join(["python"] + sys.argv),
        "machine": f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), "
        f"{jax.device_count()} x {device.device_kind} ({jax.default_backend()}), "
        f"jax {jax.__version__}",
    }


def run():
    from dcjax import data, models
    from dcjax.privacy import tables

    config = study_config()
    workdir = FLAGS.workdir or os.path.join("runs", f"privacy_study_{FLAGS.tier}_seed{FLAGS.seed}")
    about = _about()
    # Before the ~12 s data load: usable and locked (a finished study may gain rows: its parts check themselves).
    common.hold_workdir(workdir, FLAGS.overwrite, finished_ok=True)
    if FLAGS.report_only:  # From the rows' exports alone: no data, no training.
        workers = FLAGS.report_workers or os.cpu_count() or 1
        results = study.rewrite_report(workdir, about.get("conclusion", ""), about["command"], workers)
    else:
        train, test = data.load_train_test(FLAGS.dataset, FLAGS.data_dir, FLAGS.download)
        check_fits(config, train, test)
        fns = models.make_model(config.attack.model, train.image_shape, train.num_classes)
        results = study.run_study(config, fns, (train, test), workdir, about, FLAGS.overwrite)
    print(tables.markdown_table(results))
    print(f"outputs in {workdir} (RESULTS.md, results.json, figures)")


if __name__ == "__main__":
    app.run(common.launcher_main(run), flags_parser=common.parse_flags)
