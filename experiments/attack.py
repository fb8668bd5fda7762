r"""Membership inference against models trained by a target recipe: Shokri, LOSS, LiRA.

A bank of --num_models models on a target pool (LiRA keep masks; each model in turn is the
target, the rest its shadows) plus --num_shadow Shokri shadows on a disjoint attacker pool,
all trained by the same recipe (--target): the original data, a random --per_class subset,
or a condensation of each model's private half (DC, DSA or DM per --method; flags as in condense.py).

Examples:
  # Sanity run (CPU, minutes): LiRA vs a ConvNet overfitting a small real subset.
  python experiments/attack.py --flagfile=experiments/flags/attack_sanity_cpu.cfg
  # Models trained on DC synthetic sets condensed from their private data.
  python experiments/attack.py --target=condense --ipc=10 --init=real --workdir=runs/attack_dc

Outputs in --workdir: split.npz (pools, keep masks), models/model_XXX.npz (per-model logits;
the run resumes per model), attack_data.npz (the export every score is computed from),
trials.npz (flat per-trial scores), results.json, roc.png. See dcjax/privacy/attack_run.py.
  # Re-attack a finished run (or a copied export) without training:
  python experiments/attack.py --report_only --workdir=docs/results/attack_sanity_cpu
  # Rewrite an older export (format 1, every logit) in the current compact format:
  python experiments/attack.py --reencode --workdir=docs/results/attack_sanity_cpu
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

import common  # noqa: E402
import configs  # noqa: E402
from dcjax.privacy import attack_data, attack_run, bank, pools  # noqa: E402
from dcjax.privacy.config import AttackRunConfig  # noqa: E402

TRAIN = configs.field_default(AttackRunConfig, "train")  # The training the flags default to.
configs.define_data_flags()
configs.define_model_flags()
configs.define_run_flags()
configs.define_train_flags(TRAIN)
configs.define_condense_flags()
flags.DEFINE_enum(
    "target",
    configs.field_default(bank.Recipe, "kind"),
    bank.RECIPES,
    "Target recipe: train on the private data itself, on a random --per_class "
    "subset of it, or on a synthetic set condensed from it (--method).",
)
flags.DEFINE_integer(
    "per_class", configs.field_default(bank.Recipe, "per_class"), "Images per class for --target=subset."
)
configs.define_attack_flags()
flags.DEFINE_bool(
    "report_only",
    False,
    "Re-attack the export (attack_data.npz) of the finished run "
    "in --workdir and rewrite its results.json, trials.npz and roc.png; loads no "
    "data, trains nothing.",
)
flags.DEFINE_bool(
    "reencode",
    False,
    "Rewrite the export (attack_data.npz) in --workdir in the current compact format "
    "(dcjax/privacy/attack_data.py), in place (compare the numbers before and after with "
    "benchmarks/export_regen.py). Trains nothing.",
)
FLAGS = flags.FLAGS


def run_config():
    """Frozen configs from flags; ConfigError (naming the flag) on bad values."""
    condense = configs.condense_config() if FLAGS.target == "condense" else None
    recipe = configs.config_from_flags(bank.Recipe, {"kind": "target"}, condense=condense)
    return configs.attack_config(recipe, configs.train_config(TRAIN, small_set=FLAGS.target != "original"))


def _pct(value) -> str:
    """A fraction as a percentage; None (an FPR below the resolvable floor) as "n/a"."""
    return "n/a" if value is None else f"{100 * value:.2f}%"


def _print_summary(results: dict, workdir: str):
    utility, shokri_acc = results["utility"], results["shokri_accuracy"]
    print(
        f"targets ({results['config']['recipe']['kind']} recipe): test accuracy "
        f"{100 * utility['test_accuracy_mean']:.2f} +- {100 * utility['test_accuracy_std']:.2f} %, "
        f"train/held-out accuracy on the pool {100 * utility['member_accuracy']:.1f} / "
        f"{100 * utility['nonmember_accuracy']:.1f} %"
    )
    if shokri_acc:  # None for an export without Shokri's inputs.
        print(
            f"Shokri attack accuracy (balanced, chance 50 %): {100 * shokri_acc['mean']:.2f} +- "
            f"{100 * shokri_acc['std']:.2f} %"
        )
    print("natural (non-canary) examples, 95% example-bootstrap intervals:")
    print(f"{'attack':26s} {'AUC':>7s} {'TPR@1%':>8s} {'TPR@0.1% [95% CI]':>24s}")
    for name, by_slice in results["attacks"].items():
        a = by_slice["natural"]
        if "skipped" not in a:
            print(
                f"{name:26s} {a['auc']:7.3f} {_pct(a['tpr_at_0.01']):>8s} {_pct(a['tpr_at_0.001']):>8s} "
                f"[{_pct(a['tpr_at_0.001_ci_low'])}, {_pct(a['tpr_at_0.001_ci_high'])}]"
            )
    best = results["headline"]["model"]
    if best:
        print(
            f"headline model attack (cross-fitted): {best['attack']}, TPR@0.1% {_pct(best['tpr_at_0.001'])} "
            f"[{_pct(best['tpr_at_0.001_ci_low'])}, {_pct(best['tpr_at_0.001_ci_high'])}] "
            "(chosen on other targets and examples; intervals over examples and models)"
        )
    test = results.get("null_test")
    if test:
        print(f"null test: {test['excluded']}/{test['draws']} intervals exclude chance (allowed <= {test['allowed']})")
    print(f"outputs in {workdir}")


def run():
    import dataclasses
    from dcjax import data, models

    config = run_config()
    workdir = FLAGS.workdir or os.path.join("runs", f"attack_{FLAGS.dataset}_{FLAGS.target}_seed{FLAGS.seed}")
    if FLAGS.reencode:  # Rewrites one file atomically; still one writer at a time, whatever its settings.
        common.hold_workdir(workdir, finished_ok=True)
        path = os.path.join(workdir, attack_data.EXPORT)
        before, after = attack_data.reencode(path)
        print(f"{path}: {before} -> {after} bytes (format {attack_data.VERSION})")
        return
    # Before the ~12 s data load: usable, not finished, same settings, locked.
    common.hold_workdir(workdir, FLAGS.overwrite, dataclasses.asdict(config), finished_ok=FLAGS.report_only)
    if FLAGS.report_only:
        _print_summary(attack_run.report_only(workdir), workdir)
        return
    train, test = data.load_train_test(FLAGS.dataset, FLAGS.data_dir, FLAGS.download)
    with common.naming_flags():  # The pools, the recipe and the population must fit the data.
        pools.check_recipe_fits(config, train)
        pools.population_indices(config, len(test.labels))
    fns = models.make_model(config.model, train.image_shape, train.num_classes)
    results = attack_run.run_attack(config, fns, (train, test), workdir, FLAGS.overwrite)
    _print_summary(results, workdir)


if __name__ == "__main__":
    app.run(common.launcher_main(run), flags_parser=common.parse_flags)
