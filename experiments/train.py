r"""Train M fresh networks on the full training set, a random subset, or a synthetic set.

Examples:
  python experiments/train.py --source=full --workdir=runs/full \
      --flagfile=experiments/flags/train_full_cpu.cfg
  python experiments/train.py --source=subset --subset_ipc=10 --workdir=runs/subset10
  python experiments/train.py --source=synthetic --synthetic=runs/dc/synthetic.npz \
      --workdir=runs/eval_dc

Writes <workdir>/results.json: test accuracy of every model, mean +- std, exact settings.
Defaults follow the reference evaluation protocol (docs/protocol.md section 4).
"""

import dataclasses
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

import common  # noqa: E402
import configs  # noqa: E402
from dcjax import evaluation  # noqa: E402

EVAL_TRAIN = configs.field_default(evaluation.EvalConfig, "train")  # The evaluation protocol's training.
configs.define_data_flags()
configs.define_model_flags()
configs.define_run_flags()
flags.DEFINE_enum("source", "full", ["full", "subset", "synthetic"], "Training data.")
flags.DEFINE_integer("subset_ipc", 10, "Images per class for --source=subset.", lower_bound=1)
flags.DEFINE_string("synthetic", None, "Synthetic set (.npz from condense.py) for --source=synthetic.")
flags.DEFINE_integer(
    "num_models",
    configs.field_default(evaluation.EvalConfig, "num_models"),
    "Models trained (different init/shuffle keys).",
    lower_bound=1,
)
configs.define_train_flags(EVAL_TRAIN)
FLAGS = flags.FLAGS


def _synthetic_set():
    """(images, labels) of --synthetic, checked against --dataset's shape and classes before any data loads."""
    from dcjax import data

    if not FLAGS.synthetic:
        raise common.flag_error("synthetic", "must name a .npz file (from condense.py) for --source=synthetic")
    try:
        images, labels = data.load_synthetic_npz(FLAGS.synthetic)  # Shapes, dtypes, finite pixels.
    except data.DataError as e:
        raise data.DataError(f"--synthetic {e}") from None
    shape, num_classes = data.IMAGE_SHAPES.get(FLAGS.dataset), data.NUM_CLASSES.get(FLAGS.dataset)
    if num_classes is not None and (labels.min() < 0 or labels.max() >= num_classes):
        raise data.DataError(
            f"--synthetic {FLAGS.synthetic}: labels must be in [0, {num_classes}), got [{labels.min()}, {labels.max()}]"
        )
    if shape is not None and images.shape[1:] != shape:
        raise data.DataError(f"--synthetic images have shape {images.shape[1:]}, {FLAGS.dataset} has {shape}")
    return images, labels


def _training_set(train, synthetic):
    """(images, labels, description) for the chosen --source (``synthetic``: `_synthetic_set`'s, or None)."""
    import jax
    import numpy as np
    from dcjax import data

    if FLAGS.source == "full":
        return train.images, train.labels, {"source": "full", "size": len(train.labels)}
    if FLAGS.source == "subset":
        key = jax.random.fold_in(jax.random.key(FLAGS.seed), 1)
        try:
            idx = data.stratified_subset(key, train.labels, FLAGS.subset_ipc, train.num_classes)
        except data.DataError as e:
            raise common.flag_error("subset_ipc", f"={FLAGS.subset_ipc} is too large: {e}") from None
        return train.images[idx], train.labels[idx], {"source": "subset", "indices": np.asarray(idx).tolist()}
    images, labels = synthetic
    if labels.max() >= train.num_classes:
        raise data.DataError(f"--synthetic {FLAGS.synthetic}: labels must be in [0, {train.num_classes})")
    return images, labels, {"source": "synthetic", "path": FLAGS.synthetic}


def eval_config():
    """Frozen EvalConfig from flags; ConfigError (naming the flag) on bad values."""
    train = configs.train_config(EVAL_TRAIN, small_set=FLAGS.source != "full")
    return configs.config_from_flags(evaluation.EvalConfig, train=train)


def run():
    import jax
    from dcjax import checkpoint, data, models, workdir

    eval_cfg, model_cfg = eval_config(), configs.model_config()
    synthetic = _synthetic_set() if FLAGS.source == "synthetic" else None  # Before the ~12 s data load.
    common.hold_workdir(FLAGS.workdir, FLAGS.overwrite)
    train, test = data.load_train_test(FLAGS.dataset, FLAGS.data_dir, FLAGS.download)
    images, labels, source = _training_set(train, synthetic)
    if images.shape[1:] != train.image_shape:
        raise data.DataError(
            f"--synthetic images have shape {images.shape[1:]}, {FLAGS.dataset} has {train.image_shape}"
        )
    fns = models.make_model(model_cfg, train.image_shape, train.num_classes)
    settings = {
        "dataset": FLAGS.dataset,
        "seed": FLAGS.seed,
        "model": dataclasses.asdict(model_cfg),
        "eval": dataclasses.asdict(eval_cfg),
        "source": source,
    }
    workdir.prepare(FLAGS.workdir, settings, FLAGS.overwrite)
    tic = time.perf_counter()
    result = evaluation.evaluate_training_set(
        fns, eval_cfg, jax.random.key(FLAGS.seed), (images, labels), (test.images, test.labels)
    )
    result.update(settings=settings, wall_seconds=time.perf_counter() - tic, platform=jax.default_backend())
    checkpoint.write_json(workdir.path(FLAGS.workdir, workdir.RESULTS), result)
    print(
        f"{FLAGS.source}: test accuracy {100 * result['mean']:.2f} +- "
        f"{100 * result['std']:.2f} % over {FLAGS.num_models} models "
        f"({result['wall_seconds']:.0f} s) -> {FLAGS.workdir}/results.json"
    )


if __name__ == "__main__":
    flags.mark_flag_as_required("workdir")
    app.run(common.launcher_main(run), flags_parser=common.parse_flags)
