"""Shadow banks: many models trained at once, each on its own part of a pool, by a target's recipe.

A *recipe* is what a data owner does with their private subset before training: nothing
(``original``), keep a random ``per_class`` images of each class (``subset``, the naive
baseline), or condense it (``condense``: DC, DSA or DM, per ``CondenseConfig.method``). The attacker mimics the whole
pipeline, so shadow models go through the same recipe on their own IN subsets (docs/protocol.md section 7: "shadow
PIPELINES").

Every recipe produces a ``BankData``: one training pool and a [c, P] mask per model, which is
exactly what ``engine.train_models`` trains in one jitted computation over the model axis.
Condensation itself runs for all c models of a chunk at once too (vmap on GPU/TPU, a
sequential ``lax.map`` on CPU, as everywhere in the engine), driven by ``condense.drive`` as a single run
(``condense.run``) is: the same iteration, keys and loop.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from dcjax import condense
from dcjax import data as data_lib
from dcjax import engine
from dcjax import errors
from dcjax import progress
from dcjax import snapshots as snapshots_lib
from dcjax.condense import drive
from dcjax.models import ModelFns

RECIPES = ("original", "subset", "condense")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How a model's private subset becomes its training set.

    kind: 'original' (train on the subset), 'subset' (``per_class`` random images of each
    class of it) or 'condense' (a DC synthetic set condensed from it with ``condense``).
    """

    kind: str = "original"
    per_class: int = 10
    condense: condense.CondenseConfig | None = None

    def __post_init__(self):
        if self.kind not in RECIPES:
            raise errors.ConfigError(None, f"unknown recipe {self.kind!r}; expected one of {RECIPES}")
        if self.per_class < 1:
            raise errors.ConfigError("per_class", f"must be >= 1, got {self.per_class}")
        if self.kind == "condense" and self.condense is None:
            raise errors.ConfigError(None, "the 'condense' recipe needs a CondenseConfig")

    def per_class_need(self) -> tuple[str, int]:
        """(the setting, examples of each class a private subset must hold) for the recipe; ("", 0): none.

        subset: ``per_class`` images of each class; condense: ``batch_real`` real images per class per
        matching step, and (real and means init) ``ipc`` of them for the initial set.
        """
        if self.kind == "subset":
            return "per_class", self.per_class
        if self.kind == "condense":
            dc = self.condense
            assert dc is not None, "__post_init__ checks that a condense recipe has its CondenseConfig"
            if dc.init in ("real", "means") and dc.ipc > dc.batch_real:
                return "ipc", dc.ipc
            return "batch_real", dc.batch_real
        return "", 0


class BankData(NamedTuple):
    """Training data of a chunk of c models, as ``engine.train_models`` takes it.

    images: [P, H, W, C]; labels: [P] int32; masks: [c, P] bool (model m trains on masks[m]);
    used: [c, N] bool over the ORIGINAL pool: the real examples that reached model m's
    training set as pixels (its subset, or the real images that initialised its synthetic
    set; for 'original' all its IN examples). The privacy study slices on it.
    synthetic: [c, K*ipc, H, W, C] condensed sets ('condense' only, else None).
    """

    images: np.ndarray
    labels: np.ndarray
    masks: np.ndarray
    used: np.ndarray
    synthetic: np.ndarray | None = None


def _check_keep(labels: np.ndarray, keep: np.ndarray) -> np.ndarray:
    keep = np.asarray(keep, bool)
    if keep.ndim != 2 or keep.shape[1] != labels.shape[0]:
        raise ValueError(f"keep must be [c, {labels.shape[0]}], got {keep.shape}")
    return keep


def subset_masks(keys: jax.Array, labels: np.ndarray, keep: np.ndarray, per_class: int, num_classes: int) -> np.ndarray:
    """[c, N] bool: for model m, ``per_class`` random IN examples of every class (key keys[m]).

    Raises ConfigError when some model has fewer than ``per_class`` IN examples of a class.
    """
    labels, keep = np.asarray(labels), _check_keep(labels, keep)
    out = np.zeros_like(keep)
    for m in range(keep.shape[0]):
        members = np.flatnonzero(keep[m])
        counts = np.bincount(labels[members], minlength=num_classes)
        if counts.min() < per_class:
            raise errors.ConfigError(
                None,
                f"model {m} has {counts.min()} IN examples of class {counts.argmin()}, "
                f"fewer than per_class={per_class}; use a larger pool",
            )
        chosen = data_lib.stratified_subset(keys[m], labels[members], per_class, num_classes)
        out[m, members[chosen]] = True
    return out


def member_class_index(labels: np.ndarray, member: np.ndarray, num_classes: int, width: int) -> data_lib.ClassIndex:
    """A ClassIndex over the pool restricted to ``member`` ([N] bool), padded to ``width``.

    Indices refer to the whole pool. The fixed width (the largest class of the whole pool)
    gives every model of a bank the same shapes, so one compiled DC step serves them all.
    """
    members = np.flatnonzero(member)
    index = data_lib.build_class_index(np.asarray(labels)[members], num_classes)
    table, counts = np.asarray(index.table), np.asarray(index.counts)
    slots = np.arange(width)
    table = table[np.arange(num_classes)[:, None], slots[None, :] % counts[:, None]]
    return data_lib.ClassIndex(table=jnp.asarray(members[table], jnp.int32), counts=jnp.asarray(counts, jnp.int32))


def _iterate(statics: tuple, states, data, keys: jax.Array, span: tuple[int, int]):
    """Condensation iterations span = [start, stop) of all c models, as one ``progress.task``.

    statics: (fns, config, class strategy, model strategy) of ``drive.models_iteration``; data: (pool
    images [N, H, W, C], stacked ClassIndex [c, ...]); keys: [c] model keys. Returns the states.
    Iteration t always draws item t of the iterations stream, so a run cut into spans is a straight run.
    """
    fns, config, _, model_strategy = statics
    (start, stop), c, (images, indexes) = span, keys.shape[0], data
    label = f"condensing {c} models: {stop - start} x {condense.describe(fns, config)}"
    # A vmapped tick fires once for all c models, a mapped one once per model.
    weight = c if model_strategy == "vmap" else 1
    compiling = progress.first_call((statics, jnp.shape(images), jax.tree.map(jnp.shape, indexes)))
    method = condense.METHODS[config.method]
    step = functools.partial(drive.models_iteration, statics)
    after = functools.partial(_log_iteration, c, (stop, config.iterations))
    loop = drive.Loop(step, data, drive.key_streams(keys)["iterations"], after)
    with progress.task(label, (stop - start) * method.units(config) * c, f"model {method.unit}", weight, compiling):
        return jax.block_until_ready(drive.iterate(loop, states, span))


def _log_iteration(c: int, ends: tuple[int, int], t: int, states, metrics: dict, started: float) -> None:
    """The line of every 10th iteration and of the span's last (``drive.Loop.after``): the c models' mean loss.

    ends: (the span's stop, the run's iterations). Reading the loss waits for the iteration, as it always did.
    """
    del states, started
    (stop, total) = ends
    if (t + 1) % 10 == 0 or t + 1 == stop:
        logging.info(
            "condensing %d models: iteration %d/%d, mean loss %.4f", c, t + 1, total, float(jnp.mean(metrics["loss"]))
        )


def _run_models(statics: tuple, states, data, keys: jax.Array, span: tuple[int, int]):
    """``_iterate`` over all c models at once ('vmap', 'map'), or ('loop') one model's run after another."""
    fns, config, class_strategy, model_strategy = statics
    if model_strategy != "loop":
        return _iterate(statics, states, data, keys, span)
    images, indexes = data
    one = lambda x, m: jax.tree.map(lambda leaf: leaf[m : m + 1], x)  # noqa: E731
    runs = [
        _iterate((fns, config, class_strategy, "map"), one(states, m), (images, one(indexes, m)), keys[m : m + 1], span)
        for m in range(keys.shape[0])
    ]
    return jax.tree.map(lambda *xs: jnp.concatenate(xs), *runs)


# The condensation layout of ``dcjax.snapshots``: model XXX's state after T iterations, leaf k as state_k.
_SNAPSHOT = re.compile(r"model_(\d+)_it_(\d+)\.npz")
_STATE = "state_{}"


def _snapshot_path(snapshots: snapshots_lib.Snapshots, model: int, iteration: int) -> str:
    return os.path.join(snapshots.directory, f"model_{model:03d}_it_{iteration:05d}.npz")


def _snapshot_iterations(snapshots: snapshots_lib.Snapshots, stop: int) -> list[int]:
    """Iterations in 1..stop at which every model of the chunk has a snapshot file, newest first."""
    path = functools.partial(_snapshot_path, snapshots)
    return snapshots_lib.complete(snapshots.directory, _SNAPSHOT, path, snapshots.models, stop)


def _load_snapshots(snapshots: snapshots_lib.Snapshots, iteration: int, like):
    """The chunk's stacked states at ``iteration`` shaped as ``like`` (stacked [c] states), or None when a file
    does not read back or was saved by other settings (a stale or damaged cache: that iteration is not used)."""
    template = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape[1:], leaf.dtype), like)
    paths = [_snapshot_path(snapshots, model, iteration) for model in snapshots.models]
    try:
        fields = {"iteration": iteration, "identity": snapshots.identity}
        return snapshots_lib.read_models(paths, template, _STATE, fields)
    except snapshots_lib.SnapshotError as e:
        logging.warning("%s; not resuming from it", e)
        return None


def _save_snapshots(snapshots: snapshots_lib.Snapshots, iteration: int, states) -> None:
    """Each model's state (``SynState`` leaves) after ``iteration``, one file per model."""
    paths = [_snapshot_path(snapshots, model, iteration) for model in snapshots.models]
    snapshots_lib.write_models(paths, states, _STATE, iteration=iteration, identity=snapshots.identity)


def _resume(snapshots: snapshots_lib.Snapshots | None, states, stop: int):
    """(states, iteration) to start from: the newest complete snapshot at or below ``stop``, else (states, 0)."""
    if snapshots is None:
        return states, 0
    for iteration in _snapshot_iterations(snapshots, stop):
        loaded = _load_snapshots(snapshots, iteration, states)
        if loaded is not None:
            logging.info("condensation resumes from the snapshots after iteration %d", iteration)
            return loaded, iteration
    return states, 0


def _condense_spans(statics: tuple, states, data, keys: jax.Array, snapshots: snapshots_lib.Snapshots | None):
    """All of config.iterations, resumed from and saved to ``snapshots`` (if any) at its ``save_at`` iterations."""
    total = statics[1].iterations
    if snapshots is not None and len(snapshots.models) != keys.shape[0]:
        raise ValueError(f"snapshots name {len(snapshots.models)} models for a chunk of {keys.shape[0]}")
    states, start = _resume(snapshots, states, total)
    saves = set(snapshots.save_at) if snapshots is not None else set()
    for span in drive.segments(start, total, saves):
        states = _run_models(statics, states, data, keys, span)
        if snapshots is not None and span[1] in saves:
            _save_snapshots(snapshots, span[1], states)
    return states


def _member_indexes(config: condense.CondenseConfig, labels, keep: np.ndarray) -> list[data_lib.ClassIndex]:
    """Each model's ClassIndex over its IN examples (keep [c, N] bool; labels [N]), all padded to the pool's largest
    class; ValueError for a badly shaped keep, and ``condense.check_batch_real``'s error for a class too small."""
    labels, keep = np.asarray(labels), _check_keep(labels, keep)
    num_classes = int(labels.max()) + 1
    width = int(np.bincount(labels).max())
    indexes = [member_class_index(labels, k, num_classes, width) for k in keep]
    for index in indexes:
        condense.check_batch_real(config, index)
    return indexes


def condense_models(
    fns: ModelFns,
    config: condense.CondenseConfig,
    keys: jax.Array,
    pool,
    strategy: str = "auto",
    *,
    snapshots: snapshots_lib.Snapshots | None = None,
):
    """Condenses each model's IN subset of the pool, all c models at once.

    Args:
      keys: [c] keys; model m's condensation draws from ``keys.CONDENSE`` streams of keys[m], the layout
        of ``dcjax.condense.run`` (init: its initial set; item t of iterations: its iteration t).
      pool: (images [N, H, W, C], labels [N] int32, keep [c, N] bool IN masks) — the whole pool, kept on device
        once, and each model's subset of it (the triple ``engine.train_models`` takes).
      strategy: model-axis strategy ('loop': one model's condensation after another).
      snapshots: where to save the states at ladder iterations and resume from (None: a straight run).

    Returns:
      (synthetic images [c, K*ipc, H, W, C], init indices [c, K*ipc] into the pool, -1 for noise).
    """
    condense.check_network(fns)
    images, labels, keep = pool
    indexes = _member_indexes(config, labels, keep)
    images = jnp.asarray(images)
    inits = [drive.initial_state(config, k, images, index) for k, index in zip(keys, indexes)]
    states = jax.tree.map(lambda *xs: jnp.stack(xs), *[s for s, _ in inits])
    indexes = jax.tree.map(lambda *xs: jnp.stack(xs), *indexes)
    model_strategy = engine.resolve_strategy(strategy)
    class_strategy = condense.resolve_class_strategy(config.class_strategy)
    statics = (fns, config, class_strategy, model_strategy)
    states = _condense_spans(statics, states, (images, indexes), keys, snapshots)
    init_indices = np.stack([np.asarray(i) for _, i in inits])
    return np.asarray(states.images), init_indices


def _condensed_bank(
    syn: np.ndarray, init_indices: np.ndarray, keep: np.ndarray, ipc: int, num_classes: int
) -> BankData:
    """The BankData of c condensed sets (``condense_models``' syn [c, K*ipc, H, W, C] and init_indices [c, K*ipc]
    into the pool, -1 for noise; keep [c, N]): used[m] holds the real images that initialised model m's set."""
    c, n_syn = syn.shape[:2]
    used = np.zeros_like(keep)
    for m in range(c):
        used[m, init_indices[m][init_indices[m] >= 0]] = True
    syn_labels = np.asarray(condense.synthetic_labels(num_classes, ipc))
    # One pool of all c synthetic sets; model m's mask selects its own block.
    masks = np.kron(np.eye(c, dtype=bool), np.ones((1, n_syn), bool))
    return BankData(syn.reshape((c * n_syn,) + syn.shape[2:]), np.tile(syn_labels, c), masks, used, syn)


def recipe_data(
    recipe: Recipe,
    fns: ModelFns,
    keys: jax.Array,
    pool,
    strategy: str = "auto",
    *,
    snapshots: snapshots_lib.Snapshots | None = None,
) -> BankData:
    """The training data a chunk of c models gets from ``recipe``.

    Args:
      recipe: the pipeline shared by target and shadows.
      fns: the network (condensation matches its gradients).
      keys: [c] per-model recipe keys.
      pool: (images [N, H, W, C], labels [N] int32, keep [c, N] bool): the pool and each model's private (IN)
        subset of it (the triple ``engine.train_models`` takes).
      strategy: model-axis strategy for condensation.
      snapshots: the 'condense' recipe's snapshot cache (``condense_models``); ignored by the others.
    """
    images, labels, keep = pool
    images, labels = np.asarray(images), np.asarray(labels, np.int32)
    keep = _check_keep(labels, keep)
    num_classes = int(labels.max()) + 1
    if recipe.kind == "original":
        return BankData(images, labels, keep, keep.copy())
    if recipe.kind == "subset":
        masks = subset_masks(keys, labels, keep, recipe.per_class, num_classes)
        return BankData(images, labels, masks, masks.copy())
    assert recipe.condense is not None, "Recipe checks that a condense recipe has its CondenseConfig"
    syn, init_indices = condense_models(
        fns, recipe.condense, keys, (images, labels, keep), strategy, snapshots=snapshots
    )
    return _condensed_bank(syn, init_indices, keep, recipe.condense.ipc, num_classes)
