"""Training snapshots: one DP-SGD run per model, attacked at several checkpoints of its course.

A checkpoint point trains its models to ``TrainConfig.stop_epochs`` expected epochs of a longer run
(``train.train_dp_segment``). The points of one run share a snapshot directory: each point continues every model
from the latest snapshot at or before its checkpoint and saves the state it reaches, so the run is trained once,
whatever the number of points, and the point at e is the state after e epochs of the very run that continues.

Layout: ``<directory>/config.json``, the run's settings (the attack run's with ``stop_epochs`` unset: every point of
the run records the same) and ``<directory>/ep<E>/model_XXX.npz``, model i's ``train.DPState`` after E expected
epochs (its leaves in tree order, ``leaf_0000``, ...). Files are written atomically (``dcjax.checkpoint``), so a
killed point leaves whole snapshots or none.
"""

from __future__ import annotations

import os
import re
import zipfile
import zlib

import jax
import jax.numpy as jnp
import numpy as np

from dcjax import checkpoint
from dcjax import errors
from dcjax import train as train_lib
from dcjax import workdir as workdir_lib
from dcjax.models import ModelFns

_EPOCHS = re.compile(r"ep(\d+)")


class SnapshotError(errors.UserError):
    """Snapshots that belong to another run or do not read back; the one-line message names the directory."""


def model_path(directory: str, epochs: int, model: int) -> str:
    return os.path.join(directory, f"ep{epochs}", f"model_{model:03d}.npz")


def prepare(directory: str, run_config: dict) -> None:
    """Makes ``directory`` the snapshot directory of the run ``run_config`` (JSON-able), or refuses one of another
    run's: continuing another run's models would attack a training that never happened."""
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
    """The largest E <= ``at_most`` at which every one of ``models`` has a snapshot; 0 when there is none."""
    names = os.listdir(directory) if os.path.isdir(directory) else []
    found = sorted((int(m[1]) for name in names if (m := _EPOCHS.fullmatch(name))), reverse=True)
    for epochs in found:
        if epochs <= at_most and all(os.path.exists(model_path(directory, epochs, i)) for i in models):
            return epochs
    return 0


def like(fns: ModelFns, config: train_lib.TrainConfig) -> train_lib.DPState:
    """The structure, shapes and dtypes of one model's snapshot (``jax.ShapeDtypeStruct`` leaves); computes nothing."""
    # Shapes only (eval_shape draws nothing): any key will do.
    return jax.eval_shape(lambda key: train_lib.initial_dp_state(fns, config, key), jax.random.key(0))


def save(directory: str, epochs: int, models, states: train_lib.DPState) -> None:
    """Writes model ``models[j]``'s state ``states[j]`` after ``epochs`` (leaves stacked over [len(models)])."""
    leaves = [np.asarray(leaf) for leaf in jax.tree.leaves(states)]
    for j, i in enumerate(models):
        arrays = {f"leaf_{k:04d}": leaf[j] for k, leaf in enumerate(leaves)}
        checkpoint.write_npz(model_path(directory, epochs, i), **arrays)


def load(directory: str, epochs: int, models, template: train_lib.DPState) -> train_lib.DPState:
    """The snapshots of ``models`` after ``epochs``, stacked over [len(models)] (``template``: ``like``'s).

    SnapshotError when one does not read back as ``template`` (another network, a damaged file)."""
    specs, treedef = jax.tree.flatten(template)
    per_model = []
    for i in models:
        path = model_path(directory, epochs, i)
        try:
            with np.load(path) as z:
                leaves = [z[f"leaf_{k:04d}"] for k in range(len(specs))]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as e:
            raise SnapshotError(f"{path}: unreadable snapshot ({type(e).__name__}); delete it to retrain") from None
        if any(leaf.shape != s.shape or leaf.dtype != s.dtype for leaf, s in zip(leaves, specs)):
            raise SnapshotError(f"{path}: a snapshot of another network or training; delete it to retrain")
        per_model.append(leaves)
    stacked = [jnp.asarray(np.stack(column)) for column in zip(*per_model)]
    return jax.tree.unflatten(treedef, stacked)
