r"""Privacy-study pipelines per hour: condense + train + score, at the study tier's settings.

A pipeline is what every target and shadow model of a condensed row of the privacy study goes through
(dcjax/privacy/bank.py): condense its private half of the target pool (``bank.recipe_data``), train a fresh
network on the synthetic set (``engine.train_models``), and score it (``engine.predict_models``: logits of every
query of the target pool and of the population). This benchmark runs --models such pipelines for each recipe
(dc_real, dm_real) with exactly the CPU tier's settings (experiments/flags/privacy_study_cpu.cfg: ConvNet-32,
ipc 10, DC 10 iterations x inner 10 with batch_real 32, DM 200 iterations, 150 epochs at batch 256) on real-shaped
random data, and prints the median seconds of each stage per pipeline and pipelines per hour. Each pipeline is a
chunk of one model, as the study runs on CPU (models_per_chunk 0: one model per device), after one warm-up pipeline
that pays for compilation (reported apart: a study row compiles once and runs M pipelines).

"Before and after" comes from running this same file against another checkout of the library in the same
session, e.g.

  python benchmarks/pipelines.py                                   # this checkout, fp32 and bf16
  git worktree add /tmp/before <commit> && PYTHONPATH=/tmp/before python benchmarks/pipelines.py --precisions=fp32

(the library is imported from PYTHONPATH first; an older version without ``CondenseConfig.precision`` can only
run fp32). The table names the library's path and commit.
"""

import inspect
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

import timing  # noqa: E402

flags.DEFINE_list("recipes", ["dc_real", "dm_real"], "Study rows whose pipeline is timed: dc_real, dm_real.")
flags.DEFINE_list("precisions", ["fp32", "bf16"], "Condensation matmul precisions (CondenseConfig.precision).")
flags.DEFINE_integer("models", 2, "Pipelines per recipe (one chunk: condensed one after another on CPU).")
FLAGS = flags.FLAGS
K, SHAPE, POOL, POPULATION, QUERIES = 10, (28, 28, 1), 1000, 1000, 2
TIER = {"width": 32, "ipc": 10, "batch_real": 32, "epochs": 150, "batch_size": 256}
ITERATIONS = {"dc_real": dict(method="dc", iterations=10, inner_loop=10), "dm_real": dict(method="dm", iterations=200)}


def _condense_config(recipe: str, precision: str):
    from dcjax import condense

    method = ITERATIONS[recipe]
    extra = {"precision": precision} if precision != "fp32" else {}  # Older checkouts have no such field.
    older = getattr(condense, "METHOD_DEFAULTS", None)  # Older checkouts: a table of defaults, not the records.
    defaults = older[method["method"]] if older is not None else condense.METHODS[method["method"]].defaults
    lr_img = defaults["lr_img"] if isinstance(defaults, dict) else defaults.lr_img  # A dict in older checkouts.
    return condense.CondenseConfig(
        ipc=TIER["ipc"], batch_real=TIER["batch_real"], init="real", lr_img=lr_img, **method, **extra
    )


def _pipeline(recipe_obj, fns, train_config, key, pool, queries) -> dict:
    """One model's condense, train and score stages (a chunk of one model, as the study runs on CPU): seconds.

    pool: (images [N, H, W, C], labels [N], keep [1, N] bool: the model's IN half), ``bank.recipe_data``'s pool.
    """
    import jax
    from dcjax import engine
    from dcjax.privacy import bank

    keys = key[None]
    # Older checkouts take the IN masks as an argument of their own after the pool, not inside it.
    older = "keep" in inspect.signature(bank.recipe_data).parameters
    args = (pool[:2], pool[2]) if older else (pool,)
    tic = time.perf_counter()
    data = bank.recipe_data(recipe_obj, fns, keys, *args)
    condensed = time.perf_counter()
    variables, _ = engine.train_models(fns, train_config, keys, (data.images, data.labels, data.masks))
    trained = time.perf_counter()
    jax.block_until_ready(engine.predict_models(fns, variables, queries))
    return {"condense s": condensed - tic, "train s": trained - condensed, "score s": time.perf_counter() - trained}


def measure(recipe: str, precision: str) -> dict:
    """Median stage seconds over --models pipelines of ``recipe``, after one warm-up pipeline (compilation)."""
    import jax
    import numpy as np
    from dcjax import models, train
    from dcjax.privacy import bank, masks

    fns = models.make_model(models.ModelConfig(width=TIER["width"]), SHAPE, K)
    augment = "dc" if recipe == "dc_real" else "dsa_digits"  # The study's evaluation augmentation per method.
    train_config = train.TrainConfig(epochs=TIER["epochs"], batch_size=TIER["batch_size"], augment=augment)
    labels = np.arange(POOL, dtype=np.int32) % K
    images = np.asarray(jax.random.normal(jax.random.key(0), (POOL,) + SHAPE))
    count = FLAGS.models + 1 + (FLAGS.models + 1) % 2  # LiRA masks need an even number of models.
    keep = masks.lira_keep_masks(jax.random.key(1), count, POOL)
    keys = jax.random.split(jax.random.key(2), count)
    queries = jax.random.normal(jax.random.key(3), (QUERIES * (POOL + POPULATION),) + SHAPE)
    recipe_obj = bank.Recipe(kind="condense", condense=_condense_config(recipe, precision))
    runs = [
        _pipeline(recipe_obj, fns, train_config, keys[m], (images, labels, keep[m][None]), queries)
        for m in range(FLAGS.models + 1)
    ]
    stages = {name: float(np.median([r[name] for r in runs[1:]])) for name in runs[0]}
    total = sum(stages.values())
    first = sum(runs[0].values())
    return {
        "recipe": recipe,
        "precision": precision,
        **stages,
        "s/pipeline": total,
        "pipelines/hour": 3600 / total,
        "first (compiles) s": first,
    }


def main(_):
    print(f"{timing.library()}; {timing.cpu()}")
    print(f"CPU-tier pipelines, median of {FLAGS.models} per recipe after a warm-up one")
    print(f"jitted fp32 matmul {timing.matmul_gflops():.1f} GFLOP/s")
    rows = []
    for recipe in FLAGS.recipes:
        for precision in FLAGS.precisions:
            rows.append(measure(recipe, precision))
            print(json.dumps(rows[-1]), flush=True)
    columns = ["recipe", "precision", "condense s", "train s", "score s", "s/pipeline", "pipelines/hour"]
    columns.append("first (compiles) s")
    print(timing.table(rows, columns))


if __name__ == "__main__":
    app.run(main)
