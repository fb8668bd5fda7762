"""What the attack stage reads, as one self-contained array file: the export of an attack run.

Training a bank is hours; attacking it is seconds to minutes. Everything an attack or a metric
needs is therefore gathered, once the bank is trained, into one compressed ``attack_data.npz``
(``EXPORT``), and every score, table and figure is a pure function of that file
(``dcjax.privacy.attacks`` and ``dcjax.privacy.assess``). A run and ``--report_only`` on its
export give the same results, and the export can be committed and re-attacked elsewhere.

The export holds what the attacks read, not the models' logits: LiRA, LOSS, confidence and RMIA
read only each (model, query, example)'s true-class score phi = z_y - logsumexp_{y' != y} z_y'
(``lira.logit_scale``; log p_y = -log(1 + exp(-phi)), p_y = sigmoid(phi)), computed in float64
from the float32 logits and stored as float32. Shokri's classifiers read whole logit vectors,
stored for query 0 only (optional). At 60,000 pool examples x 8 models x 2 queries and 1,000
population samples, a file without Shokri's inputs is 3.7 MB where the logits were ~40 MB
(tests/test_attack_data.py). Rounding phi to float32 moves no TPR at any reported FPR on the
committed exports, and AUCs by < 1e-6 (near-ties swapped; benchmarks/export_regen.py).

Format 2 (``FORMAT``, ``VERSION``): a plain ``numpy.savez_compressed`` archive, readable with
NumPy alone. M target-pool models, k Shokri shadows, N target-pool examples, Na attacker-pool
examples, P population samples, Q queries, K classes, S synthetic images, C canaries.

  format                 str          "dcjax.attack_data"
  version                int32 ()     2
  num_classes            int32 ()     K
  target_phi_planes      uint8 [4, M, Q, N]   phi of every target-pool model on every query of the pool
  population_phi_planes  uint8 [4, M, Q, P]   the same models on test images none trained on (RMIA)
  correct_bits           uint8 [M, ceil(N/8)] argmax of query 0's logits == target_labels (utility)
  keep_bits              uint8 [M, ceil(N/8)] LiRA keep masks (membership ground truth)
  used_bits              uint8 [M, ceil(N/8)] members whose pixels reached the training set
  target_labels          int32 [N]    labels as trained on (canaries relabelled)
  population_labels      int32 [P]
  canaries               int [C]      canary positions in the target pool
  shokri_target_logits_planes  uint8 [4, M, N, K]   Shokri's input: the targets' query-0 logits
                                      ([4, M, S, K] from the bank: on shokri_examples only)
  shokri_shadow_logits_planes  uint8 [4, k, Na, K]  Shokri's input: the shadows' query-0 logits on
                                      the attacker pool; both [4, 0, ...] when Shokri is not reported
  shokri_examples        int32 [S]    only when Shokri learns from the bank (no shadows, k = Na = 0):
                                      the sorted target-pool positions of its subsample; absent otherwise
  halves_bits            uint8 [k, ceil(Na/8)]  Shokri shadows' IN halves
  attacker_labels        int32 [Na]
  nearest_distances      float32 [M, N]  distance of each pool image to the nearest image of model
                                      m's released synthetic set (condense recipe; else [0, N])
  synthetic_example      float32 [S, H, W, C]  model 0's released synthetic set (figures; else [0])
  test_accuracy          float64 [M + k], seconds float64 [M + k] (bank time per model)
  pool_indices_target, pool_indices_attacker  int32 [N], [Na]: dataset (train split) indices of
                         both pools; pool_indices_population_test int32 [P]: test indices
  config_json            the run's AttackRunConfig as JSON; preprocessing_json: dataset,
                         normalisation and query shifts, so other tools can rebuild the inputs

Decoding (NumPy only). ``*_planes``: a float32 array [...] split into its 4 little-endian bytes,
plane i holding byte i of every value (the same bytes, reordered so that zlib compresses the
sign / exponent plane); ``*_bits``: a bool [R, n] mask as ``np.packbits(mask, axis=-1)``:

  z = np.load("attack_data.npz")
  f32 = lambda planes: np.ascontiguousarray(np.moveaxis(planes, 0, -1)).view("<f4")[..., 0]
  bits = lambda packed, n: np.unpackbits(packed, axis=-1, count=n).astype(bool)
  phi = f32(z["target_phi_planes"])                      # [M, Q, N] float32
  keep = bits(z["keep_bits"], z["target_labels"].size)   # [M, N] bool; halves: attacker_labels.size
  log_p, p = -np.logaddexp(0, -phi.astype(float)), 1 / (1 + np.exp(-phi.astype(float)))

Shokri from the bank (``dcjax.privacy.shokri_bank``) stores the M pipelines' query-0 logits on S key-drawn pool
examples, not on all N: 8 x 2,000 x 10 float32 add 0.64 MB where all 60,000 would add 19 MB. Its membership
labels are keep's columns ``shokri_examples``. An export with shadows has no ``shokri_examples`` field, so
its file is byte for byte what it was before the field existed.

Format 1 (no ``version`` field: every model's float32 logits [M, Q, N, K], [M, Q, P, K],
[k, Q, Na, K] and pool indices as JSON) is still read, converted in memory exactly as a run
converts its logits; ``reencode`` rewrites such a file in format 2.
"""

from __future__ import annotations

import dataclasses
import json
import os
import zipfile
import zlib

import jax
import numpy as np

from dcjax import checkpoint
from dcjax import data as data_lib
from dcjax import errors
from dcjax import keys as keys_lib
from dcjax.privacy import lira, queries

EXPORT = "attack_data.npz"
TRIALS = "trials.npz"
FORMAT = "dcjax.attack_data"
VERSION = 2
_JSON_FIELDS = ("config", "preprocessing")
_PLANES = ("target_phi", "population_phi", "shokri_target_logits", "shokri_shadow_logits")  # float32 arrays.
_BITS = {"correct": "target_labels", "keep": "target_labels", "used": "target_labels", "halves": "attacker_labels"}
_POOL_PREFIX = "pool_indices_"
KEY_STREAMS = keys_lib.ATTACK  # The run's named key streams (``dcjax.keys`` says which feeds what).


def run_keys(seed: int) -> dict:
    """{stream name: key} of an attack run, all from ``jax.random.key(seed)``."""
    return keys_lib.streams(jax.random.key(seed), KEY_STREAMS)


@dataclasses.dataclass(frozen=True)
class AttackData:
    """The decoded arrays of ``EXPORT`` (shapes in the module docstring, as their decoded dtypes).

    config and preprocessing are JSON-able dicts; pool_indices is {"target", "attacker",
    "population_test": int32 dataset indices}.
    """

    config: dict
    preprocessing: dict
    pool_indices: dict
    num_classes: int
    target_phi: np.ndarray
    population_phi: np.ndarray
    correct: np.ndarray
    keep: np.ndarray
    used: np.ndarray
    target_labels: np.ndarray
    population_labels: np.ndarray
    canaries: np.ndarray
    shokri_target_logits: np.ndarray
    shokri_shadow_logits: np.ndarray
    halves: np.ndarray
    attacker_labels: np.ndarray
    nearest_distances: np.ndarray
    synthetic_example: np.ndarray
    test_accuracy: np.ndarray
    seconds: np.ndarray
    # int32 [S]: Shokri from the bank's pool positions; [0] with shadows (or without Shokri).
    shokri_examples: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int32))

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

    @property
    def has_shokri(self) -> bool:
        """Whether the export carries Shokri's inputs (the Shokri attack is reported)."""
        return self.shokri_target_logits.shape[0] > 0

    @property
    def shokri_from_bank(self) -> bool:
        """Whether Shokri learns from the bank's other pipelines (no shadows; accuracy only, no per-example score)."""
        return self.shokri_examples.size > 0

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


def true_class_phi(logits, labels) -> np.ndarray:
    """float32 phi [R, Q, n] of logits [R, Q, n, K] (``lira.logit_scale`` in float64, then rounded once)."""
    return lira.logit_scale(logits, labels, example_axis=2).astype(np.float32)


def from_logits(target_logits, population_logits, shadow_logits, **fields) -> AttackData:
    """The export of a trained bank, from its models' logits (what a run and a format-1 file hold).

    Args:
      target_logits: [M, Q, N, K] float32, every target-pool model on every query of the pool.
      population_logits: [M, Q, P, K] float32, the same models on the population.
      shadow_logits: [k, Q, Na, K] float32, the Shokri shadows on the attacker pool.
      **fields: every other ``AttackData`` field except those computed here (num_classes, the
        phis, correct, Shokri's logits); pool_indices values may be lists. shokri_examples [S] (optional):
        Shokri from the bank's pool positions, whose query-0 logits are kept (shadow_logits [0, Q, 0, K]).

    Returns:
      The validated ``AttackData``; nearest_distances become float32 (computed in float32).
    """
    target_logits = np.asarray(target_logits, np.float32)
    labels = np.asarray(fields["target_labels"])
    examples = np.asarray(fields.pop("shokri_examples", np.zeros(0)), np.int32)
    shokri_logits = target_logits[:, 0, examples] if examples.size else target_logits[:, 0]
    pool_indices = {name: np.asarray(v, np.int32) for name, v in fields.pop("pool_indices").items()}
    return validate(
        AttackData(
            num_classes=int(target_logits.shape[-1]),
            target_phi=true_class_phi(target_logits, labels),
            population_phi=true_class_phi(population_logits, np.asarray(fields["population_labels"])),
            correct=np.argmax(target_logits[:, 0], -1) == labels,
            shokri_target_logits=np.ascontiguousarray(shokri_logits),
            shokri_shadow_logits=np.asarray(shadow_logits, np.float32)[:, 0],
            shokri_examples=examples,
            pool_indices=pool_indices,
            **{**fields, "nearest_distances": np.asarray(fields["nearest_distances"], np.float32)},
        )
    )


def _check_shapes(d: AttackData) -> None:
    """ValueError naming the first field whose shape disagrees with keep [M, N] and halves [k, Na]."""
    (m, n), (k, na) = d.keep.shape, d.halves.shape
    q, p = d.target_phi.shape[1] if d.target_phi.ndim == 3 else None, d.population_labels.shape[0]
    shokri = (m, k) if d.has_shokri else (0, 0)
    s = d.shokri_examples.size if d.shokri_from_bank else n
    expect = {
        "target_phi": (m, None, n),
        "population_phi": (m, q, p),
        "correct": (m, n),
        "used": (m, n),
        "target_labels": (n,),
        "attacker_labels": (na,),
        "shokri_target_logits": (shokri[0], s, d.num_classes),
        "shokri_examples": (s if d.shokri_from_bank else 0,),
        "shokri_shadow_logits": (shokri[1], na, d.num_classes),
        "test_accuracy": (m + k,),
        "seconds": (m + k,),
        "nearest_distances": (m if d.has_release else 0, n),
    }
    for name, shape in expect.items():
        actual = getattr(d, name).shape
        if len(actual) != len(shape) or any(s is not None and s != a for s, a in zip(shape, actual)):
            raise ValueError(f"attack data field {name} has shape {actual}, expected {shape} (None = any)")


def validate(d: AttackData) -> AttackData:
    """Checks that the arrays agree with each other; raises ValueError naming the field."""
    _check_shapes(d)
    for name in ("target_phi", "population_phi"):
        phi = getattr(d, name)
        if phi.dtype != np.float32 or not np.isfinite(phi).all():
            raise ValueError(f"attack data field {name} must be finite float32, got {phi.dtype}")
    for name in ("target_labels", "population_labels", "attacker_labels"):
        labels = getattr(d, name)
        if not np.issubdtype(labels.dtype, np.integer) or ((labels < 0) | (labels >= d.num_classes)).any():
            raise ValueError(f"attack data field {name} must be integers in [0, {d.num_classes})")
    for name in _BITS:
        if getattr(d, name).dtype != bool:
            raise ValueError(f"attack data field {name} must be bool, got {getattr(d, name).dtype}")
    if d.shokri_from_bank:
        _check_shokri_examples(d)
    elif d.has_shokri and d.halves.shape[0] == 0:
        raise ValueError("attack data field shokri_target_logits is given but there are no Shokri shadows")
    if d.used.any() and (d.used & ~d.keep).any():
        raise ValueError("used marks a non-member as used: used must imply keep")
    return d


def _check_shokri_examples(d: AttackData) -> None:
    """Shokri from the bank: sorted distinct pool positions, its logits present, and no shadows beside it."""
    e, n = d.shokri_examples, d.keep.shape[1]
    if not np.issubdtype(e.dtype, np.integer) or (e < 0).any() or (e >= n).any() or (np.diff(e) <= 0).any():
        raise ValueError(f"attack data field shokri_examples must be increasing integers in [0, {n})")
    if not d.has_shokri:
        raise ValueError("attack data field shokri_examples is given but shokri_target_logits is empty")
    if d.halves.shape[0]:
        raise ValueError("attack data field shokri_examples is given beside Shokri shadows (bank mode has none)")


def float32_planes(a) -> np.ndarray:
    """float32 [...] -> uint8 [4, ...]: plane i holds byte i (little-endian) of every value. Lossless.

    The bytes are only reordered: the sign / exponent bytes of similar numbers repeat a few values,
    so zlib compresses their plane, which it cannot do while they sit between mantissa bytes.
    """
    a = np.ascontiguousarray(a, dtype="<f4")
    return np.ascontiguousarray(np.moveaxis(a.view(np.uint8).reshape(*a.shape, 4), -1, 0))


def planes_float32(planes: np.ndarray) -> np.ndarray:
    """The inverse of ``float32_planes``: uint8 [4, ...] -> float32 [...]."""
    if planes.dtype != np.uint8 or planes.ndim < 1 or planes.shape[0] != 4:
        raise ValueError(f"byte planes must be uint8 [4, ...], got {planes.dtype} {planes.shape}")
    return np.ascontiguousarray(np.moveaxis(planes, 0, -1)).view("<f4")[..., 0].astype(np.float32)


def _unpack_bits(packed: np.ndarray, count: int) -> np.ndarray:
    """The inverse of ``np.packbits(mask, axis=-1)`` for masks [R, count]: bool [R, count]."""
    # unpackbits pads a short row with zeros, so a truncated field must be caught here.
    if packed.dtype != np.uint8 or packed.ndim != 2 or packed.shape[1] != -(-count // 8):
        raise ValueError(f"packed bits must be uint8 [R, {-(-count // 8)}], got {packed.dtype} {packed.shape}")
    return np.unpackbits(packed, axis=-1, count=count).astype(bool)


def _encode(d: AttackData) -> dict[str, np.ndarray]:
    """The npz fields of format 2 (module docstring) of a validated export."""
    arrays = {"format": np.asarray(FORMAT), "version": np.asarray(VERSION, np.int32)}
    arrays["num_classes"] = np.asarray(d.num_classes, np.int32)
    for f in dataclasses.fields(d):
        value = getattr(d, f.name)
        if f.name in _JSON_FIELDS:
            arrays[f"{f.name}_json"] = np.asarray(checkpoint.to_json(value))
        elif f.name == "pool_indices":
            arrays.update({_POOL_PREFIX + k: np.asarray(v, np.int32) for k, v in value.items()})
        elif f.name in _PLANES:
            arrays[f"{f.name}_planes"] = float32_planes(value)
        elif f.name in _BITS:
            arrays[f"{f.name}_bits"] = np.packbits(value, axis=-1)
        elif f.name == "shokri_examples" and not value.size:
            continue  # Written only from the bank: an export with shadows keeps its fields.
        elif f.name != "num_classes":
            arrays[f.name] = value
    return arrays


def save(path: str, d: AttackData) -> None:
    """Writes ``d`` in format 2 as one compressed npz, atomically."""
    checkpoint.write_npz(path, compressed=True, **_encode(validate(d)))


def _field(path: str, fields: dict, key: str) -> np.ndarray:
    if key not in fields:
        raise ValueError(f"{path} is not an attack export: field {key!r} is missing")
    return fields[key]


def _stored_name(name: str) -> str:
    """The npz field that holds ``AttackData`` field ``name`` in format 2."""
    if name in _JSON_FIELDS:
        return f"{name}_json"
    return f"{name}_planes" if name in _PLANES else f"{name}_bits" if name in _BITS else name


def _decode_field(path: str, fields: dict, name: str):
    """One ``AttackData`` field from format-2 npz fields (``_stored_name`` says which)."""
    if name == "shokri_examples" and name not in fields:  # Optional: only Shokri from the bank writes it.
        return np.zeros(0, np.int32)
    value = _field(path, fields, _stored_name(name))
    if name in _JSON_FIELDS:
        return json.loads(str(value))
    if name in _PLANES:
        return planes_float32(value)
    if name in _BITS:
        return _unpack_bits(value, _field(path, fields, _BITS[name]).shape[0])
    return int(value) if name == "num_classes" else value


def _decode(path: str, fields: dict) -> AttackData:
    """The validated ``AttackData`` of format-2 npz fields; ValueError naming file and field."""
    kwargs: dict = {
        "pool_indices": {k.removeprefix(_POOL_PREFIX): v for k, v in fields.items() if k.startswith(_POOL_PREFIX)}
    }
    for f in dataclasses.fields(AttackData):
        if f.name == "pool_indices":
            continue
        try:
            kwargs[f.name] = _decode_field(path, fields, f.name)
        except (TypeError, ValueError) as e:
            message = str(e)
            if message.startswith(path):  # Already names the file and the field.
                raise
            raise ValueError(f"{path}: field {_stored_name(f.name)!r} cannot be decoded: {message}") from None
    return validate(AttackData(**kwargs))


def _from_format1(path: str, fields: dict) -> AttackData:
    """A format-1 export (every model's logits), converted in memory as a run converts its logits."""
    names = [f.name for f in dataclasses.fields(AttackData)]
    names = [n for n in names if n not in ("num_classes", "target_phi", "population_phi", "correct")]
    names = [n for n in names if not n.startswith("shokri_")] + ["target_logits", "population_logits", "shadow_logits"]
    kwargs = {}
    for name in names:
        key = f"{name}_json" if name in _JSON_FIELDS + ("pool_indices",) else name
        value = _field(path, fields, key)
        kwargs[name] = json.loads(str(value)) if key.endswith("_json") else value
    return from_logits(**kwargs)


class ExportError(errors.UserError, ValueError):
    """An attack export that is missing a field, truncated or damaged; the one-line message names the file."""


def _read_fields(path: str) -> dict[str, np.ndarray]:
    """Every array of the npz at ``path``; ExportError naming the file (and the field) when unreadable."""
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"no attack export at {path} (run the attack first, or pass the workdir that holds {EXPORT})"
        )
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise ExportError(f"{path} is not a readable .npz attack export: {e}") from None
    with z:
        fields = {}
        for name in z.files:
            try:
                fields[name] = z[name]
            except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
                raise ExportError(f"{path}: field {name!r} is damaged: {e}") from None
    return fields


def load(path: str) -> AttackData:
    """Reads an export (format 2, or format 1 converted in memory); ExportError naming the file (and what is
    wrong: a missing or undecodable field, arrays that disagree), FileNotFoundError if there is none."""
    fields = _read_fields(path)
    try:
        if "version" not in fields and "target_logits" in fields:
            return _from_format1(path, fields)
        version, kind = _field(path, fields, "version"), str(fields.get("format"))
        if version.shape != () or int(version) != VERSION or kind != FORMAT:
            raise ValueError(f"format {kind!r} version {version} is not {FORMAT!r} {VERSION} (a newer dcjax?)")
        return _decode(path, fields)
    except ValueError as e:  # The checks' own ValueErrors: here they blame the file, not the program.
        message = str(e)
        raise ExportError(message if message.startswith(path) else f"{path}: {message}") from None


def reencode(path: str) -> tuple[int, int]:
    """Rewrites the export at ``path`` (either format) in format 2, atomically; (bytes before, after)."""
    before = os.path.getsize(path)
    save(path, load(path))
    return before, os.path.getsize(path)


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
