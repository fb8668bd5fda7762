r"""Tunes the DP-SGD rows' expected batch size, expected epochs and lr on a VALIDATION split.

The privacy study's DP-SGD rows train on ~500 private images each; which batch size, number of
(expected) epochs and learning rate suit that at epsilon 1, 4 and 8 is chosen here, on data the
study never uses: a private set (``--private_size``) and a validation set (``--val_size``)
drawn, by key, from the training examples OUTSIDE the study's target and attacker pools (cut
exactly as ``dcjax.privacy.pools.make_split`` cuts them for --seed, --target_pool and
--attacker_pool). The test split is never loaded. One model per setting (grid x --epsilons),
trained with the study's DP-SGD (``dcjax.privacy.study.dp_guarantee``: Poisson batches, noise
calibrated by the PLD accountant, clip --dp_clip), scored by validation accuracy. Since the
tuning data are disjoint from every study model's data, the choice costs the study's private
data no privacy.

Where the study's pools cover the whole training split (the poster tier: all 60,000 MNIST training
images are its target pool), no data disjoint from them exist; ``--inside_pool`` then draws the
tuning data from the whole training split. The test split still stays unseen (so the DP rows'
test accuracy is unbiased), but the choice depends on pool images and its privacy cost is NOT
counted in the rows' epsilon: results.json and RESULTS.md say so.

  nice -n 5 python experiments/dp_tune.py --flagfile=experiments/flags/dp_tune_cpu.cfg

Workdir: config.json; settings.jsonl (one record per finished setting, so a killed sweep
resumes); results.json (every setting, its validation accuracy, epsilon PLD / RDP; written
last: it marks the sweep finished) and RESULTS.md (the same as a table), all written atomically.

Keys: root = fold_in(key(--seed), TUNE_TAG); private/validation draw = fold_in(root, 0); the
model key = fold_in(root, 1), the SAME for every setting (common random numbers: settings
differ by their hyper-parameters, not by their init or sampling luck).
"""

import dataclasses
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

import common  # noqa: E402
import configs  # noqa: E402
from dcjax import dpsgd  # noqa: E402
from dcjax import strategy as strategy_lib  # noqa: E402
from dcjax.privacy import pools, study  # noqa: E402
from dcjax.privacy.config import AttackRunConfig  # noqa: E402

ORIGINAL = configs.field_default(study.StudyConfig, "train_original")  # The DP rows train like the 'original' row.
configs.define_data_flags()
configs.define_model_flags()
configs.define_run_flags()
# 1000, not AttackRunConfig's 2000: the pools of the CPU study tier (privacy_study_cpu.cfg) whose DP rows it tunes.
flags.DEFINE_integer("target_pool", 1000, "The study's target pool (excluded from the tuning data).")
flags.DEFINE_integer("attacker_pool", 1000, "The study's attacker pool (excluded from the tuning data).")
flags.DEFINE_bool(
    "inside_pool",
    False,
    "Draw the tuning data from the whole training split, the study's pools included (for a study whose pools cover "
    "it; the choice's privacy cost is then not counted in the DP rows' epsilon).",
)
flags.DEFINE_integer("private_size", 500, "Private training images per tuning model (the study's half).")
flags.DEFINE_integer(
    "val_size", 2000, "Validation images (disjoint from the private set; and from the pools, unless --inside_pool)."
)
flags.DEFINE_list("batch_sizes", ["64", "256"], "Expected batch sizes of the grid.")
flags.DEFINE_list("dp_epochs", ["40"], "Expected epochs of the grid.")
flags.DEFINE_list("lrs", ["0.05", "0.2"], "Learning rates of the grid.")
flags.DEFINE_list("epsilons", ["1", "4", "8"], "Target epsilons (each grid point is trained at each).")
flags.DEFINE_float(
    "dp_delta", configs.field_default(study.StudyConfig, "dp_delta"), "Delta of the (epsilon, delta) guarantee."
)
flags.DEFINE_float("dp_clip", configs.field_default(study.StudyConfig, "dp_clip"), "Per-example gradient L2 clip norm.")
flags.DEFINE_enum("augment", ORIGINAL.augment, configs.AUGMENTS, "Training augmentation (the study's DP rows: none).")
flags.DEFINE_enum(
    "strategy",
    configs.field_default(AttackRunConfig, "strategy"),
    strategy_lib.STRATEGIES,
    "Model-axis strategy.",
)
FLAGS = flags.FLAGS

TUNE_TAG = 0x7475  # fold_in tag of the tuning keys: apart from every key the study derives from the seed.


def _numbers(name: str, kind, low: float) -> list:
    """Flag ``name``'s list as numbers of ``kind``, each > low (ConfigError naming the flag otherwise)."""
    values = getattr(FLAGS, name)
    try:
        numbers = [kind(v) for v in values]
    except ValueError:
        raise common.flag_error(name, f"must be a list of {kind.__name__}s, got {values}") from None
    if not numbers or not all(low < v < float("inf") for v in numbers) or len(set(numbers)) != len(numbers):
        raise common.flag_error(name, f"must be a non-empty list of distinct finite values > {low:g}, got {values}")
    return numbers


def check_flags() -> dict:
    """Every flag's range, before anything is loaded or written; returns the grid's lists."""
    for name in ("target_pool", "attacker_pool", "private_size", "val_size"):
        if getattr(FLAGS, name) < 1:
            raise common.flag_error(name, f"must be >= 1, got {getattr(FLAGS, name)}")
    if not 0 < FLAGS.dp_delta < 1:
        raise common.flag_error("dp_delta", f"must be in (0, 1), got {FLAGS.dp_delta}")
    if not FLAGS.dp_clip > 0:
        raise common.flag_error("dp_clip", f"must be > 0, got {FLAGS.dp_clip}")
    if not FLAGS.workdir:
        raise common.flag_error("workdir", "must be set")
    return {
        "batch_size": _numbers("batch_sizes", int, 0),
        "epochs": _numbers("dp_epochs", int, 0),
        "lr": _numbers("lrs", float, 0.0),
        "epsilon": _numbers("epsilons", float, 0.0),
    }


def grid(lists: dict) -> list[dict]:
    """Every (batch_size, epochs, lr, epsilon), cheapest training first (the ETA settles early)."""
    points = [
        {"batch_size": b, "epochs": e, "lr": lr, "epsilon": eps}
        for e in lists["epochs"]
        for b in lists["batch_size"]
        for lr in lists["lr"]
        for eps in lists["epsilon"]
    ]
    return sorted(points, key=lambda p: p["epochs"])


def split_config() -> AttackRunConfig:
    """The study's AttackRunConfig as far as its split goes (``pools.make_split`` reads the dataset, the seed and
    the pools); --strategy runs the tuning models, not the study's."""
    return configs.config_from_flags(AttackRunConfig, {"strategy": None})


def setting_config(point: dict, n: int):
    """(TrainConfig with its DPConfig, the guarantee ``study.dp_guarantee`` gives) of grid ``point`` on ``n``
    private examples."""
    train = configs.config_from_flags(ORIGINAL, epochs=point["epochs"], batch_size=point["batch_size"], lr=point["lr"])
    dp = study.dp_guarantee(point["epsilon"], FLAGS.dp_delta, n, n, train, FLAGS.dp_clip)
    given = {name: dp[name] for name in ("noise_multiplier", "capacity", "overflow_budget")}
    private = configs.config_from_flags(dpsgd.DPConfig, {"l2_clip": "dp_clip"}, num_examples=n, **given)
    return dataclasses.replace(train, dp=private), dp


def tuning_split(train, key) -> tuple:
    """(private, validation) dataset indices: disjoint, drawn by ``key`` outside the study's pools (from the whole
    training split with --inside_pool)."""
    import jax
    import numpy as np

    if FLAGS.inside_pool:
        if FLAGS.private_size + FLAGS.val_size > len(train.labels):
            raise common.flag_error("private_size", f"+ --val_size exceed the {len(train.labels)} training examples")
        rest = np.arange(len(train.labels))
    else:
        if FLAGS.target_pool + FLAGS.attacker_pool + FLAGS.private_size + FLAGS.val_size > len(train.labels):
            raise common.flag_error(
                "target_pool",
                f"+ --attacker_pool + --private_size + --val_size exceed the {len(train.labels)} training examples",
            )
        split = pools.make_split(split_config(), train.labels, train.num_classes)
        rest = np.setdiff1d(np.arange(len(train.labels)), np.concatenate([split["target"], split["attacker"]]))
    order = rest[np.asarray(jax.random.permutation(key, len(rest)))]
    return order[: FLAGS.private_size], order[FLAGS.private_size : FLAGS.private_size + FLAGS.val_size]


def train_setting(fns, point: dict, data, key) -> dict:
    """Trains one DP-SGD model at ``point`` on ``data`` = (private, validation) sets; its record."""
    import jax.numpy as jnp
    from dcjax import engine

    (images, labels), (val_images, val_labels) = data
    n = len(labels)
    config, dp = setting_config(point, n)
    tic = time.perf_counter()
    variables, losses = engine.train_models(
        fns, config, key[None], (jnp.asarray(images), jnp.asarray(labels), jnp.ones((1, n), bool)), FLAGS.strategy
    )
    accuracy = engine.evaluate_many(fns, variables, (jnp.asarray(val_images), jnp.asarray(val_labels)), FLAGS.strategy)
    return {
        **point,
        "val_accuracy": float(accuracy[0]),
        "final_train_loss": float(losses[0, -1]),
        "wall_seconds": time.perf_counter() - tic,
        "dp": dp,
    }


def _drawn_from(inside_pool: bool) -> str:
    """Where the tuning data came from, as a sentence fragment for RESULTS.md and results.json."""
    if inside_pool:
        return (
            "both drawn from the whole training split, the privacy study's pools included (--inside_pool): the "
            "choice depends on pool images and its privacy cost is not counted in the DP rows' epsilon"
        )
    return "both drawn outside the privacy study's pools, so the choice costs the study's private data no privacy"


def markdown(records: list[dict], inside_pool: bool) -> str:
    """The sweep as a markdown document: the best shared setting, then one table, best validation accuracy first
    within each epsilon."""
    shared = _best_shared(records)
    intro = (
        "# DP-SGD tuning on a validation split\n\nOne model per setting, trained on the private set and "
        f"scored on the validation set ({_drawn_from(inside_pool)}; the test split is "
        "never loaded). ε PLD is the formal guarantee at δ total (δ plus the batch-overflow term); ε RDP "
        "is the looser RDP bound for the same noise. Generated by experiments/dp_tune.py.\n\n"
        f"Best setting shared by every target ε (the study's DP rows share --dp_batch_size, --dp_epochs and "
        f"--dp_lr): expected batch {shared['batch_size']}, {shared['epochs']} expected epochs, lr {shared['lr']:g} "
        f"(mean validation accuracy {100 * shared['mean_val_accuracy']:.2f} % over the target ε).\n\n"
    )
    head = (
        "| target ε | expected batch | expected epochs | lr | validation accuracy (%) | ε PLD | ε RDP | "
        "noise σ | q | steps | B_max | δ total | seconds |\n|" + "---|" * 13 + "\n"
    )
    rows = sorted(records, key=lambda r: (r["epsilon"], -r["val_accuracy"]))
    lines = [
        f"| {r['epsilon']:g} | {r['batch_size']} | {r['epochs']} | {r['lr']:g} | "
        f"{100 * r['val_accuracy']:.2f} | {r['dp']['epsilon_pld']:.3f} | {r['dp']['epsilon_rdp']:.3f} | "
        f"{r['dp']['noise_multiplier']:.3f} | {r['dp']['sample_rate']:.4g} | {r['dp']['steps']} | "
        f"{r['dp']['capacity']} | {r['dp']['delta_total']:.6g} | {r['wall_seconds']:.0f} |"
        for r in rows
    ]
    return intro + head + "\n".join(lines) + "\n"


def _best(records: list[dict]) -> dict:
    """{epsilon: the record with the highest validation accuracy} (ties: the first trained)."""
    best = {}
    for r in records:
        if r["epsilon"] not in best or r["val_accuracy"] > best[r["epsilon"]]["val_accuracy"]:
            best[r["epsilon"]] = r
    return {f"{eps:g}": best[eps] for eps in sorted(best)}


def _best_shared(records: list[dict]) -> dict:
    """The (batch_size, epochs, lr) with the highest mean validation accuracy over the target epsilons it was
    trained at (ties: the first trained), with that mean: the study's DP rows share one setting."""
    accuracies: dict = {}
    for r in records:
        accuracies.setdefault((r["batch_size"], r["epochs"], r["lr"]), []).append(r["val_accuracy"])
    means = {setting: sum(a) / len(a) for setting, a in accuracies.items()}
    (batch_size, epochs, lr), mean = max(means.items(), key=lambda item: item[1])
    return {"batch_size": batch_size, "epochs": epochs, "lr": lr, "mean_val_accuracy": mean}


def sweep(fns, points: list[dict], data, key, workdir: str) -> list[dict]:
    """Trains every point not yet in settings.jsonl, logging progress and an ETA."""
    from dcjax import checkpoint

    progress = os.path.join(workdir, "settings.jsonl")
    records = checkpoint.read_jsonl(progress)
    done = [{k: r[k] for k in points[0]} for r in records]
    todo = [p for p in points if p not in done]
    tic = time.perf_counter()
    for i, point in enumerate(todo):
        records.append(train_setting(fns, point, data, key))
        checkpoint.write_jsonl(progress, records)
        # Cost grows with expected epochs (examples processed); the ETA weighs the rest by them.
        spent, left = sum(p["epochs"] for p in todo[: i + 1]), sum(p["epochs"] for p in todo[i + 1 :])
        eta = (time.perf_counter() - tic) * left / spent
        logging.info(
            "setting %d/%d %s: validation accuracy %.2f%% (eps PLD %.3f); ETA %.0f s",
            len(records),
            len(points),
            point,
            100 * records[-1]["val_accuracy"],
            records[-1]["dp"]["epsilon_pld"],
            eta,
        )
    return records


_POOLS = ("target_pool", "attacker_pool")
# The flags that decide the sweep's outcome, recorded in config.json (a resumed sweep must match them).
_RECORDED_FLAGS = (
    "dataset",
    "seed",
    "target_pool",
    "attacker_pool",
    "inside_pool",  # Recorded always; the two pools only without it.
    "private_size",
    "val_size",
    "dp_delta",
    "dp_clip",
    "augment",
)


def run():
    import jax
    from dcjax import checkpoint, data, host, models
    from dcjax import workdir as workdir_lib

    points = grid(check_flags())
    settings = {
        # --inside_pool ignores the pools (the tuning data may come from them): they are not recorded.
        "flags": {f: getattr(FLAGS, f) for f in _RECORDED_FLAGS if not (FLAGS.inside_pool and f in _POOLS)},
        "model": dataclasses.asdict(configs.model_config()),
        "grid": points,
    }
    common.hold_workdir(FLAGS.workdir, FLAGS.overwrite, settings)  # Before the data load.
    train = data.load_split(FLAGS.dataset, "train", FLAGS.data_dir, FLAGS.download)  # Never the test split.
    root = jax.random.fold_in(jax.random.key(FLAGS.seed), TUNE_TAG)
    private, val = tuning_split(train, jax.random.fold_in(root, 0))
    fns = models.make_model(configs.model_config(), train.image_shape, train.num_classes)
    workdir_lib.prepare(FLAGS.workdir, settings, FLAGS.overwrite)
    split = ((train.images[private], train.labels[private]), (train.images[val], train.labels[val]))
    records = sweep(fns, points, split, jax.random.fold_in(root, 1), FLAGS.workdir)
    table = markdown(records, FLAGS.inside_pool)
    checkpoint.atomic_write_bytes(os.path.join(FLAGS.workdir, "RESULTS.md"), table.encode())
    results = {
        **settings,
        "command": " ".join(["python"] + sys.argv),
        "settings": records,
        "tuning_data": _drawn_from(FLAGS.inside_pool),
        "provenance": host.provenance(),  # The commit and CPU the sweep ran on.
        "best": _best(records),
        "best_shared": _best_shared(records),
        "private_indices": private.tolist(),
        "val_indices": val.tolist(),
    }
    checkpoint.write_json(os.path.join(FLAGS.workdir, workdir_lib.RESULTS), results)  # Last: finished.
    print(table)
    print(f"outputs in {FLAGS.workdir} (results.json, RESULTS.md)")


if __name__ == "__main__":
    app.run(common.launcher_main(run), flags_parser=common.parse_flags)
