"""A resumable membership-inference run: pools, keep masks, a shadow bank, attacks, metrics.

Setting (PROTOCOL section 7). The dataset's train split is cut into two disjoint pools:

* the *target pool* (N examples) with LiRA keep masks over M models: every example is IN for
  exactly M/2 of them. Each model in turn is the target, the other M-1 its shadows
  (leave-one-out), giving M*N membership trials for LiRA, LOSS, confidence and Shokri;
* the *attacker pool* (Na examples, disjoint from every target's data) for the k Shokri
  shadow models, each trained on a random half and labelled IN/OUT on all of it.

Every model (targets and shadows alike) goes through the same ``bank.Recipe``: the attacker
mimics the target's pipeline, condensation included.

Workdir:
  config.json            exact settings (see ``dcjax.workdir`` for overwrite/resume rules)
  split.npz              dataset indices of both pools and both keep masks
  models/model_XXX.npz   one per model, written as its chunk finishes (so a killed run
                         resumes per model): logits on its pool's queries [Q, n, K] float32,
                         test accuracy, examples used as pixels [n], synthetic set if any
  scores.npz             every attack's membership scores [M, N] and the keep mask
  results.json           utility, Shokri accuracy, metrics per attack and slice (last: it
                         marks the run finished)
  roc.png                log-log ROC of all attacks on all target trials

Canaries (``num_canaries``): target-pool examples relabelled to a wrong class; like every
pool example they are IN for half the models, and they get their own metrics slice. For the
``condense`` recipe the released synthetic sets are attacked too ("nearest_synthetic": minus
the distance from a real image to the nearest synthetic image).

Keys, all from ``jax.random.key(seed)``: pools = fold_in(root, 0), LiRA keep = 1, Shokri
halves = 2, model i = fold_in(fold_in(root, 3), i) split into (recipe, training) keys,
attack classifier = 4, bootstrap = 5, balanced Shokri evaluation = 6, canaries = 7. Model i's key does
not depend on chunking, so a resumed run (or one with another chunk size) trains the same
models.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from dcjax import checkpoint
from dcjax import data as data_lib
from dcjax import engine
from dcjax import plots
from dcjax import train as train_lib
from dcjax import workdir as workdir_lib
from dcjax.models import ModelConfig, ModelFns
from dcjax.privacy import bank, canaries, lira, masks, nearest, queries, report, shokri

SPLIT = "split.npz"
SCORES = "scores.npz"
MODELS_DIR = "models"


@dataclasses.dataclass(frozen=True)
class AttackRunConfig:
    """Everything that determines an attack run's outputs."""

    dataset: str = "mnist"
    seed: int = 0
    model: ModelConfig = ModelConfig()
    train: train_lib.TrainConfig = train_lib.TrainConfig(epochs=100, augment="none")
    recipe: bank.Recipe = bank.Recipe()
    num_models: int = 16  # M: LiRA bank on the target pool (even, >= 6).
    target_pool: int = 2000  # N.
    num_shadow: int = 8  # k: Shokri shadows on the attacker pool.
    attacker_pool: int = 2000  # Na.
    num_queries: int = 2  # LiRA queries: the image and shifted copies (queries.SHIFTS).
    num_canaries: int = 0  # Target-pool examples given a wrong label (IN for half the models).
    # P test images every model is also queried on: RMIA's population samples z, which no model trained on.
    num_population: int = 1000
    attack: shokri.AttackConfig = shokri.AttackConfig()
    models_per_chunk: int = 0  # 0: one model per device on CPU, all at once elsewhere.
    strategy: str = "auto"  # Model-axis strategy (engine.STRATEGIES).
    num_resamples: int = 200  # Bootstrap resamples for confidence intervals.

    def __post_init__(self):
        if self.num_models < 6 or self.num_models % 2:
            # Leave-one-out keeps M/2 - 1 IN and OUT shadows per example; a std needs 2 of each.
            raise ValueError(f"num_models must be even and >= 6 (LiRA fits per-example Gaussians "
                             f"to the other models), got {self.num_models}")
        for name in ("num_shadow", "target_pool", "attacker_pool", "num_resamples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_population < 0:
            raise ValueError(f"num_population must be >= 0, got {self.num_population}")
        if not 0 <= self.num_canaries <= self.target_pool:
            raise ValueError(f"num_canaries must be in [0, target_pool], got {self.num_canaries}")
        if self.models_per_chunk < 0:
            raise ValueError(f"models_per_chunk must be >= 0, got {self.models_per_chunk}")
        queries.query_shifts(self.num_queries)  # Validates num_queries.
        engine.resolve_strategy(self.strategy)


def _keys(seed: int) -> dict:
    root = jax.random.key(seed)
    names = ("pools", "keep", "halves", "models", "attack", "bootstrap", "balance", "canaries", "population")
    return {name: jax.random.fold_in(root, i) for i, name in enumerate(names)}


def make_split(config: AttackRunConfig, labels: np.ndarray, num_classes: int) -> dict:
    """Pools, labels and keep masks, all from the seed.

    Returns {"target" [N], "attacker" [Na]: dataset indices; "target_labels" [N] (with canaries
    relabelled); "canaries" [C]: their positions in the target pool; "keep" [M, N] LiRA masks;
    "halves" [k, Na] Shokri IN halves}.
    """
    keys = _keys(config.seed)
    parts = data_lib.split_indices(keys["pools"], len(labels),
                                   {"target": config.target_pool, "attacker": config.attacker_pool})
    target_labels, canary_idx = canaries.mislabel(keys["canaries"], labels[parts["target"]],
                                                  config.num_canaries, num_classes)
    keep = masks.lira_keep_masks(keys["keep"], config.num_models, config.target_pool)
    halves = np.stack([masks.half_split_mask(jax.random.fold_in(keys["halves"], i), config.attacker_pool)
                       for i in range(config.num_shadow)])
    return {**parts, "target_labels": target_labels, "canaries": canary_idx, "keep": keep,
            "halves": halves}


def _recipe_need(recipe: bank.Recipe) -> tuple[str, int]:
    """(setting, examples per class each private half must hold) for the recipe."""
    if recipe.kind == "subset":
        return "per_class", recipe.per_class
    if recipe.kind == "condense":
        dc = recipe.condense
        if dc.init == "real" and dc.ipc > dc.batch_real:
            return "ipc", dc.ipc
        return "batch_real", dc.batch_real
    return "", 0


def check_recipe_fits(config: AttackRunConfig, train) -> None:
    """Fails fast, before anything runs or is written, if some model's private half has too
    few examples of a class for the recipe (subset size, DC real batch or real init)."""
    if config.target_pool + config.attacker_pool > len(train.labels):
        raise ValueError(f"target_pool + attacker_pool = {config.target_pool + config.attacker_pool} "
                         f"exceeds the {len(train.labels)} training examples")
    setting, need = _recipe_need(config.recipe)
    if not need:
        return
    split = make_split(config, train.labels, train.num_classes)
    pools = (("target_pool", split["target_labels"], split["keep"]),
             ("attacker_pool", train.labels[split["attacker"]], split["halves"]))
    for pool, labels, keep in pools:
        smallest = min(np.bincount(labels[k], minlength=train.num_classes).min() for k in keep)
        if smallest < need:
            raise ValueError(f"{setting}={need} exceeds the smallest class of a model's private half "
                             f"in the {pool} ({smallest} examples); lower {setting} or enlarge {pool}")


def _chunks(config: AttackRunConfig) -> list[list[int]]:
    """Model indices grouped into chunks trained together; a chunk never mixes the two pools."""
    m, k = config.num_models, config.num_shadow
    size = config.models_per_chunk
    if not size:
        size = jax.device_count() if jax.default_backend() == "cpu" else max(m, k)
    groups = (list(range(m)), list(range(m, m + k)))
    return [g[i:i + size] for g in groups for i in range(0, len(g), size)]


def _model_path(workdir: str, i: int) -> str:
    return os.path.join(workdir, MODELS_DIR, f"model_{i:03d}.npz")


def population_indices(config: AttackRunConfig, num_test: int) -> np.ndarray:
    """Test-set indices [P] of RMIA's population samples: a key-drawn subset, sorted."""
    if config.num_population > num_test:
        raise ValueError(f"num_population={config.num_population} exceeds the {num_test} test examples")
    perm = np.asarray(jax.random.permutation(_keys(config.seed)["population"], num_test))
    return np.sort(perm[:config.num_population]).astype(np.int64)


class _Context:
    """The static pieces of a run: network, data on host, split, queries."""

    def __init__(self, config: AttackRunConfig, fns: ModelFns, train, test, workdir: str):
        self.config, self.fns, self.workdir = config, fns, workdir
        self.keys = _keys(config.seed)
        self.split = make_split(config, train.labels, train.num_classes)
        self.split["population"] = population_indices(config, len(test.labels))
        self.train, self.test = train, test
        # Gathered once: every chunk of a pool trains and queries on the same arrays.
        self._pools = {
            "target": (train.images[self.split["target"]], self.split["target_labels"]),
            "attacker": (train.images[self.split["attacker"]], train.labels[self.split["attacker"]]),
        }

    def pool(self, i: int):
        """(images, labels, keep rows' owner) of the pool model i trains on."""
        name = "target" if i < self.config.num_models else "attacker"
        return (*self._pools[name], name)

    def keep_row(self, i: int) -> np.ndarray:
        m = self.config.num_models
        return self.split["keep"][i] if i < m else self.split["halves"][i - m]


def _mesh_for(chunk: list[int]):
    """The 'models' mesh when the chunk splits evenly over several devices, else None."""
    n = jax.device_count()
    return engine.model_mesh() if n > 1 and len(chunk) % n == 0 else None


def _to_host(x) -> np.ndarray:
    """A (possibly model-sharded, possibly multi-host) array as one NumPy array on every process."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def _train_chunk(ctx: _Context, chunk: list[int]) -> list[dict]:
    """Runs the recipe and trains the chunk's models; returns one record per model."""
    cfg = ctx.config
    images, labels, _ = ctx.pool(chunk[0])
    keep = np.stack([ctx.keep_row(i) for i in chunk])
    model_keys = jnp.stack([jax.random.split(jax.random.fold_in(ctx.keys["models"], i)) for i in chunk])
    data = bank.recipe_data(cfg.recipe, ctx.fns, model_keys[:, 0], (images, labels), keep, cfg.strategy)
    mesh = _mesh_for(chunk)
    variables, losses = engine.train_models(
        ctx.fns, cfg.train, model_keys[:, 1], (jnp.asarray(data.images), jnp.asarray(data.labels),
                                               data.masks), cfg.strategy, mesh)
    query_images = queries.make_queries(jnp.asarray(images), cfg.num_queries)
    logits = jnp.stack([engine.predict_models(ctx.fns, variables, q, cfg.strategy, mesh=mesh)
                        for q in query_images], axis=1)  # [c, Q, n, K]
    population = jnp.asarray(ctx.test.images[ctx.split["population"]])
    population_logits = jnp.stack([engine.predict_models(ctx.fns, variables, q, cfg.strategy, mesh=mesh)
                                   for q in queries.make_queries(population, cfg.num_queries)], axis=1)
    test_acc = engine.evaluate_many(ctx.fns, variables, jnp.asarray(ctx.test.images),
                                    jnp.asarray(ctx.test.labels), cfg.strategy, mesh=mesh)
    # To host before indexing: a model-sharded array cannot be sliced per model in place.
    logits, population_logits, test_acc, losses = (
        _to_host(x) for x in (logits, population_logits, test_acc, losses))
    records = []
    for j, i in enumerate(chunk):
        record = {"logits": logits[j].astype(np.float32), "test_accuracy": float(test_acc[j]),
                  "population_logits": population_logits[j].astype(np.float32),
                  "final_train_loss": float(losses[j, -1]), "used": data.used[j]}
        if data.synthetic is not None:
            record["synthetic"] = data.synthetic[j]
        records.append(record)
    return records


def train_bank(ctx: _Context) -> None:
    """Trains every model not yet on disk, chunk by chunk, logging progress and ETA."""
    all_chunks = _chunks(ctx.config)
    chunks = [c for c in all_chunks if not all(os.path.exists(_model_path(ctx.workdir, i)) for i in c)]
    total = ctx.config.num_models + ctx.config.num_shadow
    if len(chunks) < len(all_chunks):
        logging.info("resuming: %d of %d chunks already trained", len(all_chunks) - len(chunks),
                     len(all_chunks))
    tic = time.perf_counter()
    for done, chunk in enumerate(chunks, start=1):
        chunk_tic = time.perf_counter()
        records = _train_chunk(ctx, chunk)
        seconds = (time.perf_counter() - chunk_tic) / len(chunk)
        for i, record in zip(chunk, records):
            # Each model keeps its share of the chunk's time, so a resumed run still knows its cost.
            checkpoint.write_npz(_model_path(ctx.workdir, i), seconds=seconds, **record)
        elapsed = time.perf_counter() - tic
        logging.info("models %d-%d of %d trained (%s pool); test accuracy %.2f%%; %.0f s/chunk, ETA %.0f s",
                     chunk[0], chunk[-1], total, ctx.pool(chunk[0])[2],
                     100 * np.mean([r["test_accuracy"] for r in records]),
                     elapsed / done, elapsed / done * (len(chunks) - done))


def load_model(workdir: str, i: int) -> dict:
    with np.load(_model_path(workdir, i)) as z:
        return {name: z[name] for name in z.files}


def _stack(ctx: _Context, indices, name: str) -> np.ndarray:
    """One field of several models' files, stacked; only that field is read from disk."""
    def field(i):
        with np.load(_model_path(ctx.workdir, i)) as z:
            return z[name]
    return np.stack([field(i) for i in indices])


def _lira_attacks(phi: np.ndarray, keep: np.ndarray) -> dict[str, np.ndarray]:
    """LiRA online/offline x per-example/fixed variance, leave-one-out. phi: [M, N, Q] -> {name: [M, N]}."""
    out = {}
    for name, fn in (("lira_online", lira.lira_online), ("lira_offline", lira.lira_offline)):
        for fixed in (False, True):
            attack = functools.partial(fn, fixed_variance=fixed)
            out[name + ("_fixed_var" if fixed else "")] = lira.leave_one_out(phi, keep, attack)[0]
    return out


def _shokri_attack(ctx: _Context, target_logits: np.ndarray, labels: np.ndarray):
    """Shokri scores [M, N] of every target, and the poster's balanced accuracy per target [M].

    The attack classifiers learn from the k shadows' query-0 outputs on the attacker pool.
    """
    cfg, m = ctx.config, ctx.config.num_models
    shadows = range(m, m + cfg.num_shadow)
    shadow_logits = _stack(ctx, shadows, "logits")[:, 0]  # [k, Na, K]
    attacker_labels = ctx.train.labels[ctx.split["attacker"]]
    num_classes = shadow_logits.shape[-1]
    features = shokri.attack_features(shadow_logits.reshape(-1, num_classes), cfg.attack)
    params = shokri.train_attack_models(
        ctx.keys["attack"], features, np.tile(attacker_labels, cfg.num_shadow),
        ctx.split["halves"].reshape(-1), num_classes, cfg.attack)
    scores = np.stack([shokri.attack_scores(params, shokri.attack_features(t, cfg.attack), labels)
                       for t in target_logits])
    keep = ctx.split["keep"]
    accuracy = []
    for t in range(m):
        idx = shokri.balanced_indices(jax.random.fold_in(ctx.keys["balance"], t), keep[t])
        accuracy.append(shokri.attack_accuracy(scores[t, idx], keep[t, idx]))
    return scores, np.asarray(accuracy)


def compute_scores(ctx: _Context, logits: np.ndarray) -> dict[str, np.ndarray]:
    """Membership scores [M, N] of every attack against every target model.

    logits: [M, Q, N, K] of the target-pool models on every query.
    """
    m = ctx.config.num_models
    labels = ctx.split["target_labels"]
    keep = ctx.split["keep"]
    phi = np.moveaxis(lira.logit_scale(logits, labels, example_axis=2), 1, 2)  # [M, N, Q]
    scores = _lira_attacks(phi, keep)
    # Threshold attacks need no shadows: the target's own loss / confidence on the plain image.
    scores["loss"] = lira.loss_threshold_scores(logits[:, 0], labels)
    scores["confidence"] = lira.confidence_scores(logits[:, 0], labels)
    scores["shokri"], scores["shokri_accuracy_per_target"] = _shokri_attack(ctx, logits[:, 0], labels)
    if ctx.config.recipe.kind == "condense":
        # The released synthetic set itself as the attack surface: closeness to a real image.
        synthetic = _stack(ctx, range(m), "synthetic")
        pool_images = ctx.train.images[ctx.split["target"]]
        scores["nearest_synthetic"] = nearest.nearest_distance_scores(synthetic, pool_images)
    return scores


def _slices(ctx: _Context) -> dict:
    """All trials, each class, and (when the recipe copies only some real pixels) the used ones."""
    keep = ctx.split["keep"]
    slices = {"all": None, **report.class_slices(ctx.split["target_labels"])}
    if ctx.config.num_canaries:
        slices["canaries"] = ctx.split["canaries"]
    if ctx.config.recipe.kind != "original":
        used = _stack(ctx, range(ctx.config.num_models), "used")
        # Members whose pixels reached the training set, against all non-members.
        slices["used"] = (used & keep) | ~keep
    return slices


ATTACK_NAMES = ("lira_online", "lira_online_fixed_var", "lira_offline", "lira_offline_fixed_var",
                "loss", "confidence", "shokri")


def attack_names(config: AttackRunConfig) -> tuple[str, ...]:
    """The attacks a run reports; released synthetic sets add the nearest-image attack."""
    return ATTACK_NAMES + (("nearest_synthetic",) if config.recipe.kind == "condense" else ())


def _utility(ctx: _Context, logits: np.ndarray) -> dict:
    """Test accuracy of the targets and their accuracy on members / non-members (query 0 logits)."""
    m = ctx.config.num_models
    acc = _stack(ctx, range(m), "test_accuracy")
    labels = ctx.split["target_labels"]
    correct = np.argmax(logits, -1) == labels
    keep = ctx.split["keep"]
    return {"test_accuracy_mean": float(acc.mean()), "test_accuracy_std": float(acc.std()),
            "test_accuracy": acc.tolist(),
            # The generalisation gap that membership inference feeds on.
            "member_accuracy": float(correct[keep].mean()),
            "nonmember_accuracy": float(correct[~keep].mean()),
            "shadow_test_accuracy_mean": float(_stack(
                ctx, range(m, m + ctx.config.num_shadow), "test_accuracy").mean())}


def _results(ctx: _Context, scores: dict, logits: np.ndarray, seconds: dict) -> dict:
    keep = ctx.split["keep"]
    slices = _slices(ctx)
    attacks, rocs = {}, {}
    for a, name in enumerate(attack_names(ctx.config)):
        attacks[name] = report.slice_metrics(scores[name], keep, jax.random.fold_in(ctx.keys["bootstrap"], a),
                                             slices, ctx.config.num_resamples)
        rocs[name] = report.roc_points(scores[name], keep)
    shokri_acc = scores["shokri_accuracy_per_target"]
    return {
        "config": dataclasses.asdict(ctx.config),
        "utility": _utility(ctx, logits[:, 0]),
        "shokri_accuracy": {"mean": float(shokri_acc.mean()), "std": float(shokri_acc.std()),
                            "per_target": shokri_acc.tolist()},
        "attacks": attacks,
        "roc": rocs,
        **seconds,
        "platform": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
    }


def _write_outputs(ctx: _Context, scores: dict, results: dict) -> None:
    path = functools.partial(workdir_lib.path, ctx.workdir)
    checkpoint.write_npz(path(SCORES), keep=ctx.split["keep"], **scores)
    curves = {name: (np.asarray(r["fpr"]), np.asarray(r["tpr"])) for name, r in results["roc"].items()}
    title = (f"{ctx.config.recipe.kind} recipe: {ctx.config.num_models} targets x "
             f"{ctx.config.target_pool} examples")
    plots.roc_figure(path("roc.png"), curves, title)
    checkpoint.write_json(path(workdir_lib.RESULTS), results)  # Last: marks the run finished.


def run_attack(config: AttackRunConfig, fns: ModelFns, train, test, workdir: str,
               overwrite: bool = False) -> dict:
    """Trains the bank (resuming per model), attacks every target, writes the workdir.

    Args:
      config: the run's settings (recorded in config.json).
      fns: the network of targets and shadows.
      train: the dataset's train split (both pools are cut from it).
      test: held-out data for the utility column.
      workdir: output directory (``dcjax.workdir`` rules).
      overwrite: discard whatever the workdir holds.

    Returns:
      The results dict also written to results.json.
    """
    check_recipe_fits(config, train)
    population_indices(config, len(test.labels))  # Fails fast on num_population > the test set.
    workdir_lib.prepare(workdir, dataclasses.asdict(config), overwrite)
    tic = time.perf_counter()
    ctx = _Context(config, fns, train, test, workdir)
    split_path = workdir_lib.path(workdir, SPLIT)
    if not os.path.exists(split_path):
        checkpoint.write_npz(split_path, **ctx.split)
    train_bank(ctx)
    attack_tic = time.perf_counter()
    logits = _stack(ctx, range(config.num_models), "logits")  # [M, Q, N, K]
    scores = compute_scores(ctx, logits)
    total = config.num_models + config.num_shadow
    seconds = {"bank_seconds": float(_stack(ctx, range(total), "seconds").sum()),
               "attack_seconds": time.perf_counter() - attack_tic}
    # The run's whole cost (bank summed over every invocation that trained part of it).
    seconds["wall_seconds"] = seconds["bank_seconds"] + seconds["attack_seconds"]
    seconds["this_invocation_seconds"] = time.perf_counter() - tic
    results = _results(ctx, scores, logits, seconds)
    _write_outputs(ctx, scores, results)
    return results
