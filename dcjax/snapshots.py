"""Snapshots: per-model states saved part-way through a run, so that the points of one longer run (the privacy
study's frontier points of a row) do its work once, whatever their number.

``Snapshots`` says where a row's points keep them (``attack_run.run_attack``'s ``snapshots``). Every snapshot is one
file per model, written atomically (``dcjax.checkpoint``) with ``write_models`` and read back, stacked over the
chunk's models and checked against the shapes expected, with ``read_models``; ``complete`` finds the progress at
which every model of a chunk has one. Two layouts use them, side by side in a row's directory:

* Condensation (``bank.condense_models``, ladder points): ``model_XXX_it_TTTTT.npz``, model XXX's condensation
  state after T iterations, recording the run's identity (``attack_run.snapshot_identity``) and T. One that does not
  match or read back is passed over: the cache resumes from an earlier iteration, or none.
* DP-SGD training (below, checkpoint points): a checkpoint point trains its models to ``TrainConfig.stop_epochs``
  expected epochs of a longer run (``train.train_dp_segment``), continuing every model from the latest snapshot at
  or before its checkpoint and saving the state it reaches, so the point at e is the state after e epochs of the
  very run that continues. ``<directory>/config.json``: the run's settings (the attack run's with ``stop_epochs``
  unset: every point of the run records the same); ``<directory>/ep<E>/model_XXX.npz``: model i's
  ``train.DPState`` after E expected epochs (its leaves in tree order, ``leaf_0000``, ...). Snapshots of another run,
  or one that does not read back, are refused (``SnapshotError``): continuing them would attack a training that
  never happened.
"""

from __future__ import annotations

import dataclasses
import os
import re
import zipfile
import zlib
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dcjax import checkpoint
from dcjax import errors
from dcjax import train as train_lib
from dcjax import workdir as workdir_lib
from dcjax.models import ModelFns

_EPOCHS = re.compile(r"ep(\d+)")
_LEAF = "leaf_{:04d}"  # A DP-SGD snapshot's leaf k.


class SnapshotError(errors.UserError):
    """Snapshots that belong to another run or do not read back; the one-line message names the file or directory."""


@dataclasses.dataclass(frozen=True)
class Snapshots:
    """Where the points of one longer run keep their models' states (both layouts above), and which of them a run
    saves and reads.

    directory: the row's snapshot directory, shared by its points.
    save_at: condensation iterations after which to save (those above the run's own count are never reached); a
      DP-SGD checkpoint saves at its own stop_epochs.
    identity: what each condensation snapshot records and a resume must match: the run's settings but its iteration
      count, so a cache left by other settings is never resumed from (set by ``attack_run``).
    models: the chunk's model ids (the files' XXX), one per key, in order (set per chunk by ``attack_run``).
    """

    directory: str
    save_at: tuple[int, ...] = ()
    identity: str = ""
    models: tuple[int, ...] = ()


def write_models(paths: Sequence[str], states, leaf_key: str, **fields) -> None:
    """Writes model j's state to ``paths[j]``, atomically: leaf k of ``states`` (leaves stacked over [len(paths)])
    as ``leaf_key.format(k)``, beside ``fields`` (scalars every file records)."""
    leaves = [np.asarray(leaf) for leaf in jax.tree.leaves(states)]  # To host once, before a next span donates them.
    for j, path in enumerate(paths):
        checkpoint.write_npz(path, **fields, **{leaf_key.format(k): leaf[j] for k, leaf in enumerate(leaves)})


def read_models(paths: Sequence[str], template, leaf_key: str, fields: dict | None = None):
    """The states ``write_models`` wrote to ``paths``, stacked over [len(paths)] as ``template``'s tree.

    template: one model's state (leaves with the shapes and dtypes expected, e.g. ``jax.ShapeDtypeStruct``s).
    SnapshotError (the message starts with the file) when a file does not read back, records other ``fields``
    than these, or holds other shapes or dtypes.
    """
    specs, treedef = jax.tree.flatten(template)
    expected = fields or {}
    per_model = []
    for path in paths:
        try:
            with np.load(path) as z:
                recorded = {name: z[name].item() for name in expected}
                leaves = [z[leaf_key.format(k)] for k in range(len(specs))]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as e:
            raise SnapshotError(f"{path}: unreadable snapshot ({type(e).__name__})") from None
        if recorded != expected:
            raise SnapshotError(f"{path}: a snapshot saved by other settings")
        if any(leaf.shape != s.shape or leaf.dtype != s.dtype for leaf, s in zip(leaves, specs)):
            raise SnapshotError(f"{path}: a snapshot of another network or training")
        per_model.append(leaves)
    return jax.tree.unflatten(treedef, [jnp.asarray(np.stack(column)) for column in zip(*per_model)])


def complete(
    directory: str, pattern: re.Pattern, path: Callable[[int, int], str], models: Sequence[int], at_most: int
) -> list[int]:
    """The progress values (iterations, epochs) in 1..``at_most`` at which every one of ``models`` has its file
    ``path(model, value)``, newest first; the candidates: the last group of each name in ``directory`` that
    ``pattern`` matches (none for an absent directory or no models)."""
    names = os.listdir(directory) if os.path.isdir(directory) and models else []
    found = {int(match.groups()[-1]) for match in map(pattern.fullmatch, names) if match}
    usable = [v for v in found if 0 < v <= at_most and all(os.path.exists(path(i, v)) for i in models)]
    return sorted(usable, reverse=True)


def model_path(directory: str, epochs: int, model: int) -> str:
    """Model ``model``'s DP-SGD snapshot after ``epochs`` expected epochs."""
    return os.path.join(directory, f"ep{epochs}", f"model_{model:03d}.npz")


def prepare(directory: str, run_config: dict) -> None:
    """Makes ``directory`` the DP-SGD snapshot directory of the run ``run_config`` (JSON-able), or refuses one of
    another run's: continuing another run's models would attack a training that never happened."""
    if os.path.exists(os.path.join(directory, workdir_lib.CONFIG)):
        if not workdir_lib.config_matches(directory, run_config):
            where = workdir_lib.first_difference(run_config, workdir_lib.read_config(directory))
            raise SnapshotError(
                f"{directory} holds training snapshots of another run (differs at {where}); "
                "pass --overwrite or choose another --workdir"
            )
        return
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        raise errors.write_error(directory, e) from None
    checkpoint.write_json(os.path.join(directory, workdir_lib.CONFIG), run_config)


def latest(directory: str, models, at_most: int) -> int:
    """The largest E <= ``at_most`` at which every one of ``models`` has a DP-SGD snapshot; 0 when there is none."""
    found = complete(directory, _EPOCHS, lambda model, epochs: model_path(directory, epochs, model), models, at_most)
    return found[0] if found else 0


def like(fns: ModelFns, config: train_lib.TrainConfig) -> train_lib.DPState:
    """The structure, shapes and dtypes of one model's snapshot (``jax.ShapeDtypeStruct`` leaves); computes nothing."""
    # Shapes only (eval_shape draws nothing): any key will do.
    return jax.eval_shape(lambda key: train_lib.initial_dp_state(fns, config, key), jax.random.key(0))


def save(directory: str, epochs: int, models, states: train_lib.DPState) -> None:
    """Writes model ``models[j]``'s state ``states[j]`` after ``epochs`` (leaves stacked over [len(models)])."""
    write_models([model_path(directory, epochs, i) for i in models], states, _LEAF)


def load(directory: str, epochs: int, models, template: train_lib.DPState) -> train_lib.DPState:
    """The snapshots of ``models`` after ``epochs``, stacked over [len(models)] (``template``: ``like``'s).

    SnapshotError when one does not read back as ``template`` (another network, a damaged file)."""
    try:
        return read_models([model_path(directory, epochs, i) for i in models], template, _LEAF)
    except SnapshotError as e:
        raise SnapshotError(f"{e}; delete it to retrain") from None
