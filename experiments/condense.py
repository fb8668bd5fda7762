r"""Condense a dataset (DC, DSA or DM) and evaluate the synthetic set.

Paper settings (defaults for each --method; GPU/TPU jobs, ~70 h of the reference DC code on 2 CPU cores):
  python experiments/condense.py --ipc=10                 # DC: gradient matching
  python experiments/condense.py --ipc=10 --method=dsa    # DC with Differentiable Siamese Augmentation
  python experiments/condense.py --ipc=10 --method=dm     # distribution matching, 20000 iterations
CPU tiers (finish on a 2-core CPU; each flagfile says what it changes):
  python experiments/condense.py --flagfile=experiments/flags/condense_cpu.cfg
  python experiments/condense.py --flagfile=experiments/flags/condense_dsa_cpu.cfg
  python experiments/condense.py --flagfile=experiments/flags/condense_dm_cpu.cfg

Outputs in --workdir (default runs/<method>_<dataset>_ipc<ipc>_seed<seed>): synthetic.npz,
synthetic.png, config.json, metrics.jsonl, evals.jsonl, loss.png, accuracy.png,
checkpoints/, results.json. Re-running the same command resumes an interrupted run.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

import common  # noqa: E402
import configs  # noqa: E402
from dcjax import evaluation  # noqa: E402
from dcjax.condense import run as condense_run  # noqa: E402

EVAL_TRAIN = configs.field_default(evaluation.EvalConfig, "train")  # How evaluation models train.
configs.define_data_flags()
configs.define_model_flags()
configs.define_run_flags()
configs.define_condense_flags()
flags.DEFINE_integer(
    "num_eval",
    configs.field_default(evaluation.EvalConfig, "num_models"),
    "Models trained to evaluate the synthetic set.",
)
flags.DEFINE_integer(
    "eval_every",
    configs.field_default(condense_run.RunConfig, "eval_every"),
    "Evaluate every this many iterations (0: at the end).",
)
flags.DEFINE_integer("eval_epochs", EVAL_TRAIN.epochs, "Epochs per evaluation model.")
flags.DEFINE_enum(
    "eval_augment",
    None,  # Per --method and --dataset (default_eval_augment), not EvalConfig's 'dc'.
    configs.AUGMENTS,
    "Evaluation augmentation; default as "
    "the reference: DSA for dsa and dm (dsa_digits on digits), 'dc' for DC on MNIST, "
    "else 'none'.",
)
flags.DEFINE_bool(
    "eval_baseline",
    configs.field_default(condense_run.RunConfig, "eval_baseline"),
    "Also evaluate a random real subset of the same size.",
)
flags.DEFINE_integer(
    "checkpoint_every",
    configs.field_default(condense_run.RunConfig, "checkpoint_every"),
    "Checkpoint every this many iterations.",
)
FLAGS = flags.FLAGS


def default_eval_augment(cond) -> str:
    """The reference's evaluation augmentation for the method (docs/protocol.md sections 4-5)."""
    from dcjax import augment, condense

    return condense.evaluation_augment(cond, augment.small_set_augment(FLAGS.dataset))


# The evaluation's settings have flags of their own names (--num_eval, --eval_*), apart from the condensation's.
EVAL_FLAGS = {"num_models": "num_eval"}
EVAL_TRAIN_FLAGS = {"epochs": "eval_epochs", "augment": "eval_augment"}


def run_config():
    """Frozen configs from flags; ConfigError (naming the flag) on bad values."""
    cond = configs.condense_config()
    augment = FLAGS.eval_augment or default_eval_augment(cond)
    train = configs.config_from_flags(EVAL_TRAIN, EVAL_TRAIN_FLAGS, augment=augment)
    eval_cfg = configs.config_from_flags(evaluation.EvalConfig, EVAL_FLAGS, train=train)
    return configs.config_from_flags(condense_run.RunConfig, model=configs.model_config(), condense=cond, eval=eval_cfg)


def run():
    import dataclasses
    from dcjax import condense, data, models

    config = run_config()
    workdir = FLAGS.workdir or os.path.join("runs", f"{FLAGS.method}_{FLAGS.dataset}_ipc{FLAGS.ipc}_seed{FLAGS.seed}")
    common.hold_workdir(workdir, FLAGS.overwrite, dataclasses.asdict(config))  # Before the ~12 s data load.
    train, test = data.load_train_test(FLAGS.dataset, FLAGS.data_dir, FLAGS.download)
    with common.naming_flags():  # --batch_real (and --ipc for real init) must fit the smallest class.
        condense.check_batch_real(config.condense, data.build_class_index(train.labels, train.num_classes))
    fns = models.make_model(config.model, train.image_shape, train.num_classes)
    results = condense_run.run_condensation(config, fns, train, test, workdir, FLAGS.overwrite)
    final, base = results["final"], results["random_real_baseline"]
    print(
        f"{FLAGS.method} condensed {FLAGS.dataset} to {FLAGS.ipc}/class: test accuracy "
        f"{100 * final['mean']:.2f} +- {100 * final['std']:.2f} %"
    )
    if results["initial_set"] is not None:
        init = results["initial_set"]
        print(f"initial real set (before condensation): {100 * init['mean']:.2f} +- {100 * init['std']:.2f} %")
    if base is not None:
        print(f"random real subset, same size: {100 * base['mean']:.2f} +- {100 * base['std']:.2f} %")
    print(f"outputs in {workdir}")


if __name__ == "__main__":
    app.run(common.launcher_main(run), flags_parser=common.parse_flags)
