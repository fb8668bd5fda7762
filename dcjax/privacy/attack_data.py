"""What the attack stage reads, as one self-contained array file: the export of an attack run.

Training a bank is hours; attacking it is seconds to minutes. Everything an attack or a metric
needs is therefore gathered, once the bank is trained, into one compressed ``attack_data.npz``
(``EXPORT``), and every score, table and figure is a pure function of that file
(``dcjax.privacy.attacks`` and ``dcjax.privacy.assess``). A run and ``--report_only`` on its
export give the same results, and the export can be committed and re-attacked elsewhere.

Contents (M target-pool models, k Shokri shadows, N target-pool examples, Na attacker-pool
examples, P population samples, Q queries, K classes, S synthetic images):

  target_logits      [M, Q, N, K] float32  every target-pool model on every query of the pool
  population_logits  [M, Q, P, K] float32  the same models on test images none trained on (RMIA)
  shadow_logits      [k, Q, Na, K] float32 Shokri shadows on the attacker pool
  keep               [M, N] bool           LiRA keep masks (membership ground truth)
  halves             [k, Na] bool          Shokri shadows' IN halves
  target_labels      [N] int32             labels as trained on (canaries relabelled)
  attacker_labels    [Na] int32, population_labels [P] int32
  canaries           [C] int64             canary positions in the target pool
  used               [M, N] bool           members that reached the training set as pixels
  nearest_distances  [M, N] float64        distance of each pool image to the nearest image of
                                           model m's released synthetic set (condense recipe; else [0, N])
  synthetic_example  [S, H, W, C] float32  model 0's released synthetic set (figures; else [0])
  test_accuracy      [M + k] float64, seconds [M + k] float64 (bank time per model)
  config_json        the run's AttackRunConfig as JSON; preprocessing_json: dataset,
                     normalisation and query shifts, so other tools can rebuild the inputs
  pool_indices_json  dataset (train split) indices of both pools and test indices of the population
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import numpy as np

from dcjax import checkpoint
from dcjax import data as data_lib
from dcjax import keys as keys_lib
from dcjax.privacy import queries

EXPORT = "attack_data.npz"
TRIALS = "trials.npz"
_JSON_FIELDS = ("config", "preprocessing", "pool_indices")
KEY_STREAMS = keys_lib.ATTACK  # The run's named key streams (``dcjax.keys`` says which feeds what).


def run_keys(seed: int) -> dict:
    """{stream name: key} of an attack run, all from ``jax.random.key(seed)``."""
    return keys_lib.streams(jax.random.key(seed), KEY_STREAMS)


@dataclasses.dataclass(frozen=True)
class AttackData:
    """The arrays of ``EXPORT`` (shapes in the module docstring) and three JSON-able dicts."""

    config: dict
    preprocessing: dict
    pool_indices: dict
    target_logits: np.ndarray
    population_logits: np.ndarray
    shadow_logits: np.ndarray
    keep: np.ndarray
    halves: np.ndarray
    target_labels: np.ndarray
    attacker_labels: np.ndarray
    population_labels: np.ndarray
    canaries: np.ndarray
    used: np.ndarray
    nearest_distances: np.ndarray
    synthetic_example: np.ndarray
    test_accuracy: np.ndarray
    seconds: np.ndarray

    @property
    def num_models(self) -> int:
        return self.keep.shape[0]

    @property
    def recipe_kind(self) -> str:
        return self.config["recipe"]["kind"]

    @property
    def has_release(self) -> bool:
        """Whether each target released a synthetic set (the nearest-image attacks apply)."""
        return self.nearest_distances.shape[0] > 0

    def natural(self) -> np.ndarray:
        """bool [N]: True for every pool example that is not a canary."""
        natural = np.ones(self.keep.shape[1], bool)
        natural[self.canaries] = False
        return natural


def preprocessing(dataset: str, num_queries: int) -> dict:
    """How pool images became model inputs: normalisation and the LiRA query shifts."""
    mean, std = data_lib.NORMALIZATION[dataset]
    return {
        "dataset": dataset,
        "normalization": {"mean": list(mean), "std": list(std)},
        "input": "uint8 / 255, then (x - mean) / std per channel",
        "layout": "NHWC",
        "query_shifts": [list(s) for s in queries.query_shifts(num_queries)],
        "query_fill": "edge pixels repeated",
    }


def validate(d: AttackData) -> AttackData:
    """Checks that the arrays agree with each other; raises ValueError naming the field."""
    m, n = d.keep.shape
    expect = {
        "target_logits": (m, None, n, None),
        "population_logits": (m, None, None, None),
        "used": (m, n),
        "target_labels": (n,),
        "test_accuracy": (m + d.halves.shape[0],),
    }
    for name, shape in expect.items():
        actual = getattr(d, name).shape
        if len(actual) != len(shape) or any(s is not None and s != a for s, a in zip(shape, actual)):
            raise ValueError(f"attack data field {name} has shape {actual}, expected {shape} (None = any)")
    if d.nearest_distances.size and d.nearest_distances.shape != (m, n):
        raise ValueError(f"nearest_distances has shape {d.nearest_distances.shape}, expected {(m, n)}")
    if d.used.any() and (d.used & ~d.keep).any():
        raise ValueError("used marks a non-member as used: used must imply keep")
    return d


def save(path: str, d: AttackData) -> None:
    """Writes ``d`` as one compressed npz, atomically."""
    arrays = {f.name: getattr(d, f.name) for f in dataclasses.fields(d) if f.name not in _JSON_FIELDS}
    json_fields = {f"{name}_json": np.asarray(checkpoint.to_json(getattr(d, name))) for name in _JSON_FIELDS}
    checkpoint.write_npz(path, compressed=True, **arrays, **json_fields)


def load(path: str) -> AttackData:
    """Reads an export; ValueError naming the file when it is not one."""
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"no attack export at {path} (run the attack first, or pass the workdir that holds {EXPORT})"
        )
    try:
        with np.load(path, allow_pickle=False) as z:
            fields = {name: z[name] for name in z.files}
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} is not a readable .npz attack export: {e}") from None
    kwargs = {}
    for f in dataclasses.fields(AttackData):
        key = f"{f.name}_json" if f.name in _JSON_FIELDS else f.name
        if key not in fields:
            raise ValueError(f"{path} is not an attack export: field {key!r} is missing")
        kwargs[f.name] = json.loads(str(fields[key])) if f.name in _JSON_FIELDS else fields[key]
    return validate(AttackData(**kwargs))


def save_trials(path: str, scores: dict[str, np.ndarray], d: AttackData) -> None:
    """The flat export for other tools: one row per (target model, example) trial.

    Columns: model [T], example [T] (target-pool position), is_member [T], is_canary [T],
    used [T] and score_<attack> [T] float64 for every attack (higher = member), T = M * N.
    """
    m, n = d.keep.shape
    model, example = np.meshgrid(np.arange(m), np.arange(n), indexing="ij")
    canary = np.zeros((m, n), bool)
    canary[:, d.canaries] = True
    columns = {
        "model": model.ravel().astype(np.int32),
        "example": example.ravel().astype(np.int32),
        "is_member": d.keep.ravel(),
        "is_canary": canary.ravel(),
        "used": d.used.ravel(),
    }
    columns.update({f"score_{name}": np.asarray(s, np.float64).ravel() for name, s in scores.items()})
    checkpoint.write_npz(path, compressed=True, **columns)
