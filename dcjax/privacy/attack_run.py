"""A resumable membership-inference run: pools, keep masks, a shadow bank, attacks, metrics.

Setting (docs/protocol.md section 7). The dataset's train split is cut into two disjoint pools:

* the *target pool* (N examples) with LiRA keep masks over M models: every example is IN for
  exactly M/2 of them. Each model in turn is the target, the other M-1 its shadows
  (leave-one-out), giving M*N membership trials for LiRA, LOSS, confidence and Shokri;
* the *attacker pool* (Na examples, disjoint from every target's data) for the k Shokri
  shadow models, each trained on a random half and labelled IN/OUT on all of it. Without one
  (num_shadow = attacker_pool = 0, the poster's scale) Shokri learns from the other M-1
  pipelines on a subsample of the target pool (``dcjax.privacy.shokri_bank``): an accuracy, no
  per-example score.

Every model (targets and shadows alike) goes through the same ``bank.Recipe``: the attacker
mimics the target's pipeline, condensation included.

Workdir:
  config.json            exact settings (see ``dcjax.workdir`` for overwrite/resume rules)
  split.npz              dataset indices of both pools, the population, both keep masks
  models/model_XXX.npz   one per model, written as its chunk finishes (so a killed run
                         resumes per model): logits on its pool's queries [Q, n, K] and on the
                         population's [Q, P, K] float32, test accuracy, examples used as pixels
                         [n], synthetic set if any
  attack_data.npz        the export (``dcjax.privacy.attack_data``): every array the attack
                         stage reads; ``report_only`` re-attacks it with nothing else
  trials.npz             flat per-trial export: model, example, is_member, is_canary, used and
                         score_<attack> for every attack
  results.json           utility, Shokri accuracy, every attack's metrics per slice with
                         example-bootstrap CIs, the cross-fitted headline and its null test, canary detection, epsilon
                         audits (``dcjax.privacy.assess``); last: it marks the run finished
  roc.png                log-log ROC of every attack on the natural (non-canary) trials

Canaries (``num_canaries``): target-pool examples relabelled to a wrong class; like every
pool example they are IN for half the models. The headline slice leaves them out; they are
reported separately. For the ``condense`` recipe the released synthetic sets are attacked too
(the nearest-synthetic-image attacks of ``dcjax.privacy.attacks``).

Keys, all from ``jax.random.key(seed)`` (``attack_data.KEY_STREAMS``, stream i is
fold_in(root, i)): pools, LiRA keep, Shokri halves, models (model i = fold_in(stream, i) split
into (recipe, training) keys), Shokri classifier, bootstrap, balanced Shokri evaluation,
canaries, population, audits, crossfit, null, Shokri-from-the-bank subsample. Model i's key
does not depend on chunking, so a resumed run (or one with another chunk size) trains the same
models.

Snapshots (``run_attack``'s ``snapshots``, ``dcjax.snapshots.Snapshots``): runs that are points of one longer run
(the privacy study's frontier points of a row) share one directory of per-model states and never change an
output. A 'condense' recipe's condensation resumes from the latest state saved at or below its iteration count
and saves at ``save_at`` (``bank.condense_models``); a run whose models are a checkpoint of longer DP-SGD runs
(``TrainConfig.stop_epochs``) continues them from the latest state an earlier checkpoint saved and saves its own
(``_continue_run``).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import time
import zipfile
import zlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec

from dcjax import checkpoint
from dcjax import engine
from dcjax import host
from dcjax import interrupt
from dcjax import keys as keys_lib
from dcjax import plots
from dcjax import progress
from dcjax import snapshots as snapshots_lib
from dcjax import train as train_lib
from dcjax import workdir as workdir_lib
from dcjax.models import ModelFns
from dcjax.privacy import assess, attack_data, attacks, bank, nearest, pools, queries, shokri, shokri_bank
from dcjax.privacy import memory
from dcjax.privacy import rmia as rmia_lib
from dcjax.privacy.config import AttackRunConfig
from dcjax.privacy import results_schema, tables

SPLIT = "split.npz"
MODELS_DIR = "models"
MOVEMENT_SAMPLE = 500  # Private images per model whose nearest other private image sets the natural distance.
RESULTS_SCHEMA = results_schema.RUN_SCHEMA  # The version of results.json (its history: results_schema).


def _model_path(workdir: str, i: int) -> str:
    return os.path.join(workdir, MODELS_DIR, f"model_{i:03d}.npz")


def snapshot_identity(config: AttackRunConfig) -> str:
    """What a condensation snapshot of this run must record to be resumed from: a digest of the run's settings but
    its condensation iteration count (``bank.condense_models``); runs that differ only in that count share them."""
    recipe = config.recipe
    if recipe.condense is not None:
        recipe = dataclasses.replace(recipe, condense=dataclasses.replace(recipe.condense, iterations=0))
    settings = dataclasses.asdict(dataclasses.replace(config, recipe=recipe))
    if settings["train"]["stop_epochs"] is None:  # Added after ladders, at its default: older caches still resume.
        del settings["train"]["stop_epochs"]
    return hashlib.sha256(checkpoint.to_json(settings).encode()).hexdigest()


class _Context:
    """The static pieces of a run: network, data on host, split, queries, and its snapshots if any."""

    def __init__(self, config: AttackRunConfig, fns: ModelFns, train, test, workdir: str, snapshots=None) -> None:
        self.config, self.fns, self.workdir = config, fns, workdir
        # The condensation snapshots' identity; snapshots a run cannot use (no condensation, no checkpoint) dropped.
        used = snapshots is not None and (config.recipe.kind == "condense" or config.train.stop_epochs is not None)
        self.snapshots = dataclasses.replace(snapshots, identity=snapshot_identity(config)) if used else None
        self.keys = attack_data.run_keys(config.seed)
        self.split = pools.make_split(config, train.labels, train.num_classes)
        self.split["population"] = pools.population_indices(config, len(test.labels))
        self.train, self.test = train, test
        # Gathered once: every chunk of a pool trains and queries on the same arrays.
        self._pools = {
            "target": (train.images[self.split["target"]], self.split["target_labels"]),
            "attacker": (train.images[self.split["attacker"]], train.labels[self.split["attacker"]]),
        }

    @property
    def bank_size(self) -> int:
        """Models in the bank: the targets and Shokri's shadows."""
        return self.config.num_models + self.config.num_shadow

    def pool(self, i: int):
        """(images, labels, keep rows' owner) of the pool model i trains on."""
        name = "target" if i < self.config.num_models else "attacker"
        return (*self._pools[name], name)

    def keep_row(self, i: int) -> np.ndarray:
        m = self.config.num_models
        return self.split["keep"][i] if i < m else self.split["halves"][i - m]


def _mesh_for(chunk: list[int], strategy: str):
    """The 'models' mesh when the chunk splits evenly over several devices, else None.

    'loop' (a Python loop of single-model runs, the plain baseline) always runs on one device.
    """
    n = jax.device_count()
    sharded = n > 1 and len(chunk) % n == 0 and engine.resolve_strategy(strategy) != "loop"
    return engine.model_mesh() if sharded else None


def _to_host(x) -> Any:
    """A (possibly model-sharded, possibly multi-host) array as one NumPy array on every process."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def _query_logits(ctx: _Context, variables, images: jax.Array, mesh) -> jax.Array:
    """Logits [c, Q, n, K] of the chunk's c models on the Q queries (``queries.make_queries``) of images [n, ...]."""
    cfg = ctx.config
    per_query = [
        engine.predict_models(ctx.fns, variables, q, cfg.strategy, mesh=mesh)
        for q in queries.make_queries(images, cfg.num_queries)
    ]
    return jnp.stack(per_query, axis=1)


def _records(data: bank.BankData, logits, population_logits, test_acc, losses) -> list[dict]:
    """One record per model of the chunk from its host arrays (leading axis: the chunk's models)."""
    records = []
    for j in range(logits.shape[0]):
        record = {
            "logits": logits[j].astype(np.float32),
            "test_accuracy": float(test_acc[j]),
            "population_logits": population_logits[j].astype(np.float32),
            "final_train_loss": float(losses[j, -1]),
            "used": data.used[j],
        }
        if data.synthetic is not None:
            record["synthetic"] = data.synthetic[j]
        records.append(record)
    return records


def _train_chunk(ctx: _Context, chunk: list[int]) -> list[dict]:
    """Runs the recipe and trains the chunk's models; returns one record per model."""
    cfg = ctx.config
    images, labels, _ = ctx.pool(chunk[0])
    keep = np.stack([ctx.keep_row(i) for i in chunk])
    model_keys = jnp.stack([jax.random.split(jax.random.fold_in(ctx.keys["models"], i)) for i in chunk])
    snapshots = dataclasses.replace(ctx.snapshots, models=tuple(chunk)) if ctx.snapshots else None
    data = bank.recipe_data(
        cfg.recipe, ctx.fns, model_keys[:, 0], (images, labels, keep), cfg.strategy, snapshots=snapshots
    )
    mesh = _mesh_for(chunk, cfg.strategy)
    pool = (jnp.asarray(data.images), jnp.asarray(data.labels), data.masks)
    if snapshots is None or cfg.train.stop_epochs is None:
        variables, losses = engine.train_models(ctx.fns, cfg.train, model_keys[:, 1], pool, cfg.strategy, mesh)
    else:
        variables, losses = _continue_run(ctx, snapshots, model_keys[:, 1], pool, mesh)
    logits = _query_logits(ctx, variables, jnp.asarray(images), mesh)
    population_logits = _query_logits(ctx, variables, jnp.asarray(ctx.test.images[ctx.split["population"]]), mesh)
    test_acc = engine.evaluate_many(
        ctx.fns, variables, (jnp.asarray(ctx.test.images), jnp.asarray(ctx.test.labels)), cfg.strategy, mesh=mesh
    )
    # To host before indexing: a model-sharded array cannot be sliced per model in place.
    host = [_to_host(x) for x in (logits, population_logits, test_acc, losses)]
    records = _records(data, *host)
    for record, movement in zip(records, _movement(ctx, chunk, images, keep, data)):
        record.update(movement)
    return records


def _movement(ctx: _Context, chunk: list[int], images: np.ndarray, keep: np.ndarray, data: bank.BankData) -> list:
    """Per model of the chunk ({} each without a synthetic set), L2 distances in normalised pixel space:
    movement_synthetic [K*ipc]: each synthetic image to the nearest image (any class) of the model's private set;
    movement_real [<= MOVEMENT_SAMPLE]: a key-drawn sample of those private images, each to its nearest OTHER one
    (any class), the natural spacing of real digits that the first is compared with."""
    if data.synthetic is None:
        return [{} for _ in chunk]
    records = []
    for j, i in enumerate(chunk):
        private = images[keep[j]]
        count = min(MOVEMENT_SAMPLE, len(private)) if len(private) > 1 else 0
        real = np.zeros((0,), np.float32)
        if count:
            key = keys_lib.item(ctx.keys["movement"], i)
            real = nearest.nearest_other_distances(private, jax.random.choice(key, len(private), (count,), False))
        # nearest_distances(a, b): from each image of b to its nearest image of a.
        synthetic = nearest.nearest_distances(private, data.synthetic[j])
        records.append({"movement_synthetic": synthetic.astype(np.float32), "movement_real": real.astype(np.float32)})
    return records


def _distances(values: list[np.ndarray]) -> dict:
    """Summary of per-target distance arrays: pooled mean and median, and each target's."""
    pooled = np.concatenate(values)
    return {
        "mean": float(pooled.mean()),
        "median": float(np.median(pooled)),
        "per_target_mean": [float(v.mean()) for v in values],
        "per_target_median": [float(np.median(v)) for v in values],
        "count": int(pooled.size),
    }


def movement_summary(workdir: str, num_models: int) -> dict | None:
    """How far the targets' synthetic images sit from their private images, beside the private images' own spacing
    (``_movement``, read from models 0..num_models-1); None unless every target's record holds both."""
    records = []
    for i in range(num_models):
        with np.load(_model_path(workdir, i)) as z:
            if "movement_synthetic" not in z.files or not z["movement_real"].size:
                return None
            records.append({name: z[name] for name in ("movement_synthetic", "movement_real")})
    synthetic = _distances([r["movement_synthetic"] for r in records])
    real = _distances([r["movement_real"] for r in records])
    return {
        "synthetic_to_nearest_real": synthetic,
        "real_to_nearest_real": real,
        "median_ratio": synthetic["median"] / real["median"] if real["median"] > 0 else None,
        "about": "L2 distance in normalised pixel space to the nearest image of any class of the target's private "
        f"set; real: a key-drawn sample of up to {MOVEMENT_SAMPLE} of those images, each to its nearest other one",
    }


def _continue_run(ctx: _Context, snapshots: snapshots_lib.Snapshots, keys: jax.Array, pool, mesh):
    """A checkpoint point's training of the chunk ``snapshots.models``: each model's DP-SGD run continued from its
    latest snapshot at or before ``stop_epochs`` (from initialisation if none) to ``stop_epochs``, where its
    snapshot is saved.

    Returns (variables, losses [c, stop_epochs]) as ``engine.train_models``'s.
    """
    cfg, directory, chunk = ctx.config, snapshots.directory, list(snapshots.models)
    assert cfg.train.stop_epochs is not None, "only a checkpoint point continues a run"
    stop = cfg.train.stop_epochs
    start = snapshots_lib.latest(directory, chunk, stop)
    states = snapshots_lib.load(directory, start, chunk, snapshots_lib.like(ctx.fns, cfg.train)) if start else None
    if start < stop:
        if start:
            logging.info("models %d-%d: continuing their DP-SGD run from epoch %d", chunk[0], chunk[-1], start)
        states = engine.resume_models(ctx.fns, cfg.train, engine.Resume(keys, start, states), pool, cfg.strategy, mesh)
        snapshots_lib.save(directory, stop, chunk, jax.tree.map(_to_host, states))
    elif mesh is not None:  # Read back from disk: placed as a trained bank is, one share per device.
        states = jax.device_put(states, NamedSharding(mesh, PartitionSpec("models")))
    assert states is not None, "stop_epochs >= 1: the runs were continued or read back"
    return states.variables, train_lib.dp_losses(states, stop)


def _pending_chunks(ctx: _Context) -> list[list[int]]:
    """The chunks (``pools.model_chunks``) with a model not yet on disk; a resumed run says what it keeps."""
    all_chunks = pools.model_chunks(ctx.config)
    chunks = [c for c in all_chunks if not all(os.path.exists(_model_path(ctx.workdir, i)) for i in c)]
    total = ctx.bank_size
    if len(chunks) < len(all_chunks):
        logging.info("resuming: %d of %d chunks already trained", len(all_chunks) - len(chunks), len(all_chunks))
        interrupt.note_saved(_saved_models(ctx, total - sum(map(len, chunks)), total))
    return chunks


def _log_trained(ctx: _Context, chunk: list[int], records: list[dict], seconds_per_chunk: float, left: int) -> None:
    """The line after a chunk: its models, their mean test accuracy, the mean time per chunk and the ETA of the
    ``left`` chunks still to train."""
    logging.info(
        "models %d-%d of %d trained (%s pool); test accuracy %.2f%%; %.0f s/chunk, ETA %s",
        chunk[0],
        chunk[-1],
        ctx.bank_size,
        ctx.pool(chunk[0])[2],
        100 * np.mean([r["test_accuracy"] for r in records]),
        seconds_per_chunk,
        progress.format_eta(seconds_per_chunk * left),
    )


def train_bank(ctx: _Context) -> None:
    """Trains every model not yet on disk, chunk by chunk, logging progress and ETA.

    Within a chunk (which can take many minutes) the recipe's condensation and the training
    report their own progress (``dcjax.progress``); a line before each chunk says which it is.
    """
    chunks, total = _pending_chunks(ctx), ctx.bank_size
    tic = time.perf_counter()
    for done, chunk in enumerate(chunks, start=1):
        pool_name = ctx.pool(chunk[0])[2]
        chunk_tic = time.perf_counter()
        logging.info(
            "chunk %d/%d: models %d-%d of %d (%s pool) ...", done, len(chunks), chunk[0], chunk[-1], total, pool_name
        )
        records = _train_chunk(ctx, chunk)
        seconds = (time.perf_counter() - chunk_tic) / len(chunk)
        for i, record in zip(chunk, records):
            # Each model keeps its share of the chunk's time, so a resumed run still knows its cost.
            checkpoint.write_npz(_model_path(ctx.workdir, i), seconds=seconds, **record)
        interrupt.note_saved(_saved_models(ctx, total - sum(map(len, chunks[done:])), total))
        _log_trained(ctx, chunk, records, (time.perf_counter() - tic) / done, len(chunks) - done)


def _saved_models(ctx: _Context, trained: int, total: int) -> str:
    """What a Ctrl-C keeps of the bank: the interrupt line's words."""
    return f"{trained} of {total} trained models (in {os.path.join(ctx.workdir, MODELS_DIR)})"


def load_model(workdir: str, i: int) -> dict:
    with np.load(_model_path(workdir, i)) as z:
        return {name: z[name] for name in z.files}


def _stack(ctx: _Context, indices, name: str) -> np.ndarray:
    """One field of several models' files, stacked; only that field is read from disk."""

    def field(i):
        with np.load(_model_path(ctx.workdir, i)) as z:
            return z[name]

    return np.stack([field(i) for i in indices])


def _release(ctx: _Context) -> tuple[np.ndarray, np.ndarray]:
    """(nearest distances [M, N], model 0's synthetic set) of a condense recipe; empty otherwise."""
    m, n = ctx.config.num_models, ctx.config.target_pool
    if ctx.config.recipe.kind != "condense":
        return np.zeros((0, n)), np.zeros((0,), np.float32)
    synthetic = _stack(ctx, range(m), "synthetic")
    pool_images = ctx.train.images[ctx.split["target"]]
    return -nearest.nearest_distance_scores(synthetic, pool_images), synthetic[0]


def _shadow_logits(ctx: _Context) -> np.ndarray:
    """The Shokri shadows' logits [k, Q, Na, K]; [0, Q, 0, K] without shadows (Shokri from the bank)."""
    cfg, m = ctx.config, ctx.config.num_models
    if not cfg.num_shadow:
        return np.zeros((0, cfg.num_queries, 0, ctx.train.num_classes), np.float32)
    return _stack(ctx, range(m, m + cfg.num_shadow), "logits")


def build_export(ctx: _Context) -> attack_data.AttackData:
    """Gathers the trained bank's files into the attack stage's one input (``attack_data``)."""
    cfg, m, split = ctx.config, ctx.config.num_models, ctx.split
    everyone = range(m + cfg.num_shadow)
    has_population = cfg.num_population > 0
    distances, synthetic = _release(ctx)
    # The export keeps what the attacks read (true-class scores, Shokri's query-0 logits), not the logits.
    return attack_data.from_logits(
        config=workdir_lib.as_json(dataclasses.asdict(cfg)),
        preprocessing=attack_data.preprocessing(cfg.dataset, cfg.num_queries),
        pool_indices={
            "target": split["target"].tolist(),
            "attacker": split["attacker"].tolist(),
            "population_test": split["population"].tolist(),
        },
        target_logits=_stack(ctx, range(m), "logits"),
        population_logits=(
            _stack(ctx, range(m), "population_logits")
            if has_population
            else np.zeros((m, cfg.num_queries, 0, ctx.train.num_classes), np.float32)
        ),
        shadow_logits=_shadow_logits(ctx),
        shokri_examples=pools.shokri_examples(cfg),
        keep=split["keep"],
        halves=split["halves"],
        target_labels=split["target_labels"],
        attacker_labels=ctx.train.labels[split["attacker"]],
        population_labels=ctx.test.labels[split["population"]],
        canaries=split["canaries"],
        used=_stack(ctx, range(m), "used"),
        nearest_distances=distances,
        synthetic_example=synthetic,
        test_accuracy=_stack(ctx, everyone, "test_accuracy"),
        seconds=_stack(ctx, everyone, "seconds"),
    )


def _null_scorer(
    d: attack_data.AttackData, configs: tuple[shokri.AttackConfig, rmia_lib.RMIAConfig], keys: dict, shokri_result
) -> assess.NullScores:
    """(keep, used) -> the model attacks of ``d`` rescored as if those were the membership labels (the null
    test). ``shokri_result`` (or None without Shokri) is reused: its classifiers never read the target's labels."""

    def rescore(keep: np.ndarray, used: np.ndarray) -> dict:
        relabelled = dataclasses.replace(d, keep=keep, used=used)
        return attacks.compute_scores(relabelled, *configs, keys, shokri_result, release=False)[0]  # Model attacks.

    return rescore


def _shokri_summary(accuracy: np.ndarray, mode: str | None = None) -> dict | None:
    """Shokri's balanced accuracy over the targets, or None for an export without Shokri's inputs.

    mode: how it was measured, recorded when it is not the shadows' (``shokri_bank.mode``).
    """
    if not accuracy.size:
        return None
    summary = {"mean": float(accuracy.mean()), "std": float(accuracy.std()), "per_target": accuracy.tolist()}
    return summary if mode is None else {**summary, "mode": mode}


def evaluate_export(d: attack_data.AttackData) -> tuple[dict, dict]:
    """(scores {attack: [M, N]}, results dict) of an export: the whole attack stage, no training."""
    cfg = d.config
    keys = attack_data.run_keys(cfg["seed"])
    configs = (shokri.AttackConfig(**cfg["attack"]), rmia_lib.RMIAConfig(**cfg.get("rmia", {})))
    scores, shokri_acc = attacks.compute_scores(d, *configs, keys)
    shokri_result = (scores["shokri"], shokri_acc) if "shokri" in scores else None
    null_scores = _null_scorer(d, configs, keys, shokri_result)
    mode = None
    if d.shokri_from_bank:  # An accuracy only (no score: it would cover S of N examples), so not in ``scores``.
        shokri_acc, mode = shokri_bank.shokri_accuracy(d, configs[0], keys), shokri_bank.mode(d)
    results = {
        "schema": RESULTS_SCHEMA,
        "config": cfg,
        "utility": assess.utility(d),
        "shokri_accuracy": _shokri_summary(shokri_acc, mode),
        **assess.assess(scores, d, keys, cfg["num_resamples"], null_scores),
        "bank_seconds": float(d.seconds.sum()),
    }
    return scores, results


def _write_outputs(workdir: str, d: attack_data.AttackData, scores: dict, results: dict) -> None:
    path = functools.partial(workdir_lib.path, workdir)
    results_schema.check_run(results, path(workdir_lib.RESULTS))  # Before any output: errors name the file.
    attack_data.save_trials(path(attack_data.TRIALS), scores, d)
    curves = {name: (np.asarray(r["fpr"]), np.asarray(r["tpr"])) for name, r in results["roc"].items()}
    title = f"{d.recipe_kind} recipe: {d.num_models} targets x {d.keep.shape[1]} examples (natural examples)"
    plots.roc_figure(path("roc.png"), curves, title)
    checkpoint.atomic_write_bytes(path("RESULTS.md"), tables.run_document(results, report_command(workdir)).encode())
    checkpoint.write_json(path(workdir_lib.RESULTS), results)  # Last: marks the run finished.


def report_command(workdir: str) -> str:
    """The command that regenerates a run's results and RESULTS.md from its export (``report_only``)."""
    return f"python experiments/attack.py --report_only --workdir={workdir}"


ExportError = attack_data.ExportError  # Defined beside the format it guards; also raised here (read_export).


def read_export(path: str) -> attack_data.AttackData:
    """``attack_data.load(path)``, with every way a file can be missing or damaged (absent, truncated, a bad CRC,
    not an archive, a missing field) as one ExportError naming the file and what is wrong."""
    try:
        return attack_data.load(path)
    except FileNotFoundError:
        raise ExportError(
            f"{path}: no such file (run the attack first, or pass the --workdir that holds {attack_data.EXPORT})"
        ) from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, KeyError) as e:
        detail = " ".join(str(e).split()).removeprefix(f"{path} ").removeprefix(f"{path}: ")
        if len(detail) > 200:
            detail = detail[:197] + "..."
        raise ExportError(f"{path}: damaged attack export ({type(e).__name__}: {detail}); rerun the attack") from None


# What report_only carries over from the results it replaces: not in the export, so not recomputable from it.
_CARRIED = ("movement", "provenance")


def _carried_over(workdir: str) -> dict:
    """The ``_CARRIED`` fields of the results.json in ``workdir`` that it holds ({}: none, or no readable results)."""
    try:
        previous = checkpoint.read_json(workdir_lib.path(workdir, workdir_lib.RESULTS))
        return {key: previous[key] for key in _CARRIED if previous.get(key) is not None}
    except (OSError, ValueError, AttributeError):
        return {}


def report_only(workdir: str) -> dict:
    """Re-attacks the export in ``workdir`` and rewrites its results, trials and ROC; trains nothing.

    The image movement (``movement_summary``) and the provenance of the bank (where its floats were made), neither
    in the export, are carried over from the results it replaces.
    """
    tic = time.perf_counter()
    d = read_export(workdir_lib.path(workdir, attack_data.EXPORT))
    carried = _carried_over(workdir)
    scores, results = evaluate_export(d)
    results.update(carried)
    results.update(attack_seconds=time.perf_counter() - tic, platform=jax.default_backend())
    results["wall_seconds"] = results["bank_seconds"] + results["attack_seconds"]
    _write_outputs(workdir, d, scores, results)
    return results


def export_trained_bank(config: AttackRunConfig, fns: ModelFns, train, test, workdir: str) -> str:
    """Writes the export of a workdir whose bank is trained (e.g. by an earlier version); returns its path."""
    workdir_lib.check_inputs(config, fns, train, test)
    ctx = _Context(config, fns, train, test, workdir)
    missing = [i for i in range(config.num_models + config.num_shadow) if not os.path.exists(_model_path(workdir, i))]
    if missing:
        raise workdir_lib.WorkdirError(f"{workdir}: models {missing[:5]} are not trained; run the attack")
    path = workdir_lib.path(workdir, attack_data.EXPORT)
    attack_data.save(path, build_export(ctx))
    return path


def _check_run(config: AttackRunConfig, fns: ModelFns, train, test) -> None:
    """Refuses a run that cannot go ahead, before the workdir is touched or any work is done."""
    workdir_lib.check_inputs(config, fns, train, test)  # config.json must describe this very run.
    pools.check_recipe_fits(config, train)
    pools.population_indices(config, len(test.labels))  # Fails fast on num_population > the test set.
    memory.check_attack_run(config, fns, train, test)  # Refuses a chunk that cannot fit, before any work.


def _prepare_snapshots(config: AttackRunConfig, snapshots: snapshots_lib.Snapshots | None) -> None:
    """Checks whose training snapshots a DP-SGD checkpoint's are: the run's settings but ``stop_epochs``."""
    if snapshots is not None and config.train.stop_epochs is not None:
        run = dataclasses.replace(config, train=dataclasses.replace(config.train, stop_epochs=None))
        snapshots_lib.prepare(snapshots.directory, workdir_lib.as_json(dataclasses.asdict(run)))


def _write_split(ctx: _Context) -> None:
    """split.npz, unless a resumed run already wrote it (the same split: it is drawn from the seed)."""
    split_path = workdir_lib.path(ctx.workdir, SPLIT)
    if not os.path.exists(split_path):
        checkpoint.write_npz(split_path, **ctx.split)


def _attack_bank(ctx: _Context) -> tuple[attack_data.AttackData, dict, dict]:
    """Exports the trained bank and attacks the export: (export, scores {attack: [M, N]}, results), the results
    with the image movement (condensed sets only), the attack stage's time, where it ran and the run's whole cost."""
    attack_tic = time.perf_counter()
    export = workdir_lib.path(ctx.workdir, attack_data.EXPORT)
    attack_data.save(export, build_export(ctx))
    d = attack_data.load(export)  # The attack stage reads exactly what was exported.
    scores, results = evaluate_export(d)
    if (movement := movement_summary(ctx.workdir, ctx.config.num_models)) is not None:  # Condensed sets only.
        results["movement"] = movement
    results.update(
        attack_seconds=time.perf_counter() - attack_tic,
        platform=jax.default_backend(),
        devices=[str(x) for x in jax.devices()],
        provenance=host.provenance(),  # The commit and CPU of the invocation that wrote the export.
    )
    # The run's whole cost (bank summed over every invocation that trained part of it).
    results["wall_seconds"] = results["bank_seconds"] + results["attack_seconds"]
    return d, scores, results


def run_attack(
    config: AttackRunConfig,
    fns: ModelFns,
    data,
    workdir: str,
    overwrite: bool = False,
    *,
    snapshots: snapshots_lib.Snapshots | None = None,
) -> dict:
    """Trains the bank (resuming per model), attacks every target, writes the workdir.

    Args:
      config: the run's settings (recorded in config.json).
      fns: the network of targets and shadows.
      data: (train, test) ``ArrayDataset``s (``dcjax.data.load_train_test``'s pair): both pools are cut from train
        (images [N, H, W, C], labels [N]); test is held out for the utility column and the population.
      workdir: output directory (``dcjax.workdir`` rules).
      overwrite: discard whatever the workdir holds.
      snapshots: per-model states shared with the other points of one longer run (the module docstring's
        Snapshots; ``Snapshots``' directory and save_at, identity and model ids are set here). It changes no output;
        ignored by a run with neither a 'condense' recipe nor ``train.stop_epochs``.

    Returns:
      The results dict also written to results.json.
    """
    train, test = data
    _check_run(config, fns, train, test)
    workdir_lib.prepare(workdir, dataclasses.asdict(config), overwrite)
    _prepare_snapshots(config, snapshots)
    tic = time.perf_counter()
    ctx = _Context(config, fns, train, test, workdir, snapshots)
    _write_split(ctx)
    train_bank(ctx)
    d, scores, results = _attack_bank(ctx)
    results["this_invocation_seconds"] = time.perf_counter() - tic
    _write_outputs(workdir, d, scores, results)
    return results
