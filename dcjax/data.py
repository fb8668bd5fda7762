"""Datasets as in-memory arrays, per-class sampling inside jit, and key-driven splits.

Images are stored NHWC float32 and normalised as in the reference code: ``(x / 255 - mean) / std`` per channel
(docs/protocol.md section 1). TensorFlow Datasets (and TensorFlow) are imported lazily, the first time data is
loaded, so that ``import dcjax.data`` stays cheap.

All randomness comes from explicit ``jax.random`` keys. Index arrays returned to the host are ``np.int32``; index
arrays computed on device are ``jax.Array`` int32.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import operator
import os
import shutil
import socket
import sys
import threading
import zipfile
from typing import Any
from collections.abc import Mapping

from absl import logging
from flax import struct
import jax
import jax.numpy as jnp
import numpy as np

from dcjax import errors

# Per-channel mean / std of the [0, 1]-scaled training images (the constants the reference code uses).
NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2861,), (0.3530,)),
    "svhn_cropped": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
}
DATASETS: tuple[str, ...] = tuple(NORMALIZATION)
# Each dataset's image shape and class count, known without loading it, so that a user's file is checked against
# the dataset before the (seconds-long) load.
IMAGE_SHAPES: dict[str, tuple[int, int, int]] = {
    "mnist": (28, 28, 1),
    "fashion_mnist": (28, 28, 1),
    "svhn_cropped": (32, 32, 3),
    "cifar10": (32, 32, 3),
}
NUM_CLASSES: dict[str, int] = dict.fromkeys(DATASETS, 10)

_TFDS_DEFAULT_DIR = "~/tensorflow_datasets"


class DataError(errors.UserError):
    """A user-facing data problem (unknown dataset, missing files, impossible sampling request)."""


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: element-wise array comparison has no truth value
class ArrayDataset:
    """A whole split held in memory.

    Attributes:
      images: [N, H, W, C] float32, normalised with ``NORMALIZATION[name]``.
      labels: [N] int32 in [0, num_classes).
      num_classes: number of classes K.
      name: the TFDS dataset name.
    """

    images: np.ndarray
    labels: np.ndarray
    num_classes: int
    name: str

    def __post_init__(self):
        if self.images.ndim != 4 or self.labels.shape != self.images.shape[:1]:
            raise DataError(
                f"{self.name}: images must be [N, H, W, C] and labels [N], got {self.images.shape} and "
                f"{self.labels.shape}"
            )
        check_finite(self.images, self.name)  # Every consumer (condense, attack, study) gets finite pixels.

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of one image."""
        return tuple(self.images.shape[1:])

    def __len__(self) -> int:
        return self.images.shape[0]


def first_nonfinite(images: Any) -> tuple[int, float] | None:
    """(index of the first image holding a NaN or Inf pixel, that pixel's value), or None if all are finite."""
    images = np.asarray(images)
    if images.ndim == 0 or not np.issubdtype(images.dtype, np.floating):
        return None  # Integers are always finite.
    flat = images.reshape(images.shape[0], -1)
    bad = ~np.isfinite(flat)
    rows = np.flatnonzero(bad.any(axis=1))
    if not rows.size:
        return None
    first = int(rows[0])
    return first, float(flat[first][bad[first]][0])


def check_finite(images: Any, what: str) -> None:
    """DataError, one line naming ``what`` (a file or set) and the first bad image, if any pixel is NaN or Inf.

    A NaN pixel does not fail training: it pins the loss (an all-NaN set trains to chance accuracy and exits
    0), so every reader of an image set checks this first.
    """
    if isinstance(images, jax.core.Tracer):
        return  # Traced inside jit: the caller checked the concrete set.
    found = first_nonfinite(images)
    if found is not None:
        index, value = found
        raise DataError(
            f"{what}: image {index} (of {np.shape(images)[0]}) has a non-finite pixel ({value}); "
            "every pixel must be a finite number"
        )


def _stats(name: str, num_channels: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Returns float32 (mean [C], std [C]) for ``name``; DataError for unknown names or a channel mismatch."""
    if name not in NORMALIZATION:
        raise DataError(f"unknown dataset {name!r}; supported: {', '.join(DATASETS)}")
    mean, std = (np.asarray(v, np.float32) for v in NORMALIZATION[name])
    # Broadcasting a 1-channel mean over 3 channels would silently give wrong numbers, so insist on a match.
    if num_channels is not None and num_channels != mean.shape[0]:
        raise DataError(f"{name} images have {mean.shape[0]} channel(s), got {num_channels}")
    return mean, std


def normalize(images_uint8: Any, name: str) -> np.ndarray:
    """Maps [..., H, W, C] uint8 pixels in [0, 255] to float32 ``(x / 255 - mean) / std`` (same shape)."""
    images = np.asarray(images_uint8, np.float32)
    mean, std = _stats(name, images.shape[-1])
    return (images / np.float32(255.0) - mean) / std


def denormalize(images: Any, name: str) -> np.ndarray:
    """Inverse of `normalize` up to the /255: [..., C] -> float32 in about [0, 1] (not clipped), for plotting."""
    images = np.asarray(images, np.float32)
    mean, std = _stats(name, images.shape[-1])
    return images * std + mean


@functools.cache
def _import_tfds():
    """Imports tensorflow_datasets once, with TensorFlow kept quiet, small and off the GPU."""
    if "tensorflow" not in sys.modules:
        # TF is only used here to decode the dataset files; its oneDNN banner and INFO logs are noise for that.
        # setdefault: a user who set these keeps their choice.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    try:
        # JAX owns the accelerator: TF must never allocate GPU memory.
        tf.config.set_visible_devices([], "GPU")
        # Decoding a split is I/O bound; small pools leave the cores to XLA (measured: no slower for MNIST).
        tf.config.threading.set_inter_op_parallelism_threads(1)
        tf.config.threading.set_intra_op_parallelism_threads(1)
    except RuntimeError as err:  # TF was already initialised by someone else; their settings stand.
        logging.warning("Could not configure TensorFlow before use: %s", err)
    return tfds


def _describe_dir(data_dir: str | None) -> str:
    """The directory TFDS searches (``data_dir`` already resolved against TFDS_DATA_DIR), for error messages."""
    return data_dir or f"{_TFDS_DEFAULT_DIR} (TFDS default)"


def _one_line(err: BaseException, limit: int = 200) -> str:
    """First line of an exception's message, shortened, so DataError stays one line."""
    lines = str(err).strip().splitlines()
    text = lines[0] if lines else ""
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


_NOT_PREPARED = "could not find data"  # TFDS's words for a dataset absent from the data directory.


def _load_error(name: str, split: str, data_dir: str | None, download: bool, err: Exception | None) -> DataError:
    """The one-line DataError for a split TFDS could not load (``err`` None: no such directory), with the fix."""
    where = _describe_dir(data_dir)
    fix = f"set TFDS_DATA_DIR or --data_dir to a directory holding {name}/, or "
    fix += "check the network (TFDS downloads it)" if download else "pass --download to let TFDS fetch it"
    if err is None:
        return DataError(f"cannot load {name}: the data directory {where} does not exist; {fix}")
    if not download and _NOT_PREPARED in str(err):  # TFDS's message would suggest download=True.
        return DataError(f"{name} is not prepared in {where} (no {name}/ dataset there); {fix}")
    return DataError(f"cannot load {name} split {split!r} from {where} ({_one_line(err)}); {fix}")


def load_split(name: str, split: str, data_dir: str | None = None, download: bool | None = None) -> ArrayDataset:
    """Loads a whole TFDS split into memory, normalised.

    Uses ``tfds.load``. With ``data_dir=None`` TFDS uses $TFDS_DATA_DIR, else ~/tensorflow_datasets.
    ``download``: whether TFDS may download and prepare a missing dataset; None (auto) allows it only
    when no directory was named (neither ``data_dir`` nor $TFDS_DATA_DIR), so a named directory
    without the data fails at once instead of after minutes of download retries offline. Before a download,
    the download host must answer within ``ONLINE_TIMEOUT_S`` (offline: one DataError naming the dataset and the
    fix), and a download that fails leaves the data directory as it was.

    Returns:
      ArrayDataset with images [N, H, W, C] float32 and labels [N] int32.

    Raises:
      DataError: unknown ``name`` (before TFDS is touched), or the split cannot be loaded (data absent and not
        downloadable, bad split name, unreadable files); the original exception is chained.
    """
    _stats(name)
    # TFDS reads TFDS_DATA_DIR once, at import; reading it here makes the error message name the searched dir.
    data_dir = data_dir or os.environ.get("TFDS_DATA_DIR") or None
    download = data_dir is None if download is None else download
    if not download and data_dir and not os.path.isdir(os.path.expanduser(data_dir)):
        raise _load_error(name, split, data_dir, download, None)  # At once: TensorFlow is not even imported.
    tfds = _import_tfds()
    try:  # Prepared data (or tfds.testing.mock_data) loads without the download path.
        return _load(tfds, name, split, data_dir, False)
    except DataError as err:
        if not (download and _NOT_PREPARED in str(err.__cause__)):
            raise
        absent = err.__cause__  # TFDS's own "not found", chained to the offline error.
    with _restoring(os.path.expanduser(data_dir or _TFDS_DEFAULT_DIR)):  # A failed download leaves no trace.
        try:
            _check_online(name, _describe_dir(data_dir))  # Within seconds, not after TFDS's minutes of retries.
        except DataError as offline:
            raise offline from absent
        return _load(tfds, name, split, data_dir, True)


def _load(tfds, name: str, split: str, data_dir: str | None, download: bool) -> ArrayDataset:
    """`load_split` once the download question is settled."""
    try:
        ds, info = tfds.load(
            name, split=split, as_supervised=True, with_info=True, data_dir=data_dir, download=download
        )
        # Fixed-size batches rather than batch_size=-1: the latter batches by the recorded split size,
        # which tfds.testing.mock_data does not record (TF then aborts the whole process).
        chunks = list(tfds.as_numpy(ds.batch(10_000)))
        images = np.concatenate([c[0] for c in chunks])
        labels = np.concatenate([c[1] for c in chunks])
    except Exception as err:  # TFDS raises many unrelated types here (AssertionError, OSError, requests errors...).
        raise _load_error(name, split, data_dir, download, err) from err
    result = ArrayDataset(
        images=normalize(images, name),
        labels=np.asarray(labels, np.int32),
        num_classes=int(info.features["label"].num_classes),
        name=name,
    )
    logging.info("Loaded %s[%s]: %d images of shape %s.", name, split, len(result), result.image_shape)
    return result


DOWNLOAD_HOST = ("storage.googleapis.com", 443)  # TFDS looks for every dataset on its GCS mirror first.
ONLINE_TIMEOUT_S = 10.0


def _check_online(name: str, where: str, host: tuple[str, int] = DOWNLOAD_HOST, timeout: float = ONLINE_TIMEOUT_S):
    """DataError within ``timeout`` seconds if ``host`` cannot be reached (no network, no DNS), naming the dataset,
    the directory it would go to (``where``) and the fix.

    The connection (name resolution included, which has no timeout of its own) runs in a daemon thread.
    """
    outcome: list = []

    def connect():
        try:
            socket.create_connection(host, timeout=timeout).close()
            outcome.append(None)
        except OSError as err:
            outcome.append(err)

    thread = threading.Thread(target=connect, name="tfds-online-check", daemon=True)
    thread.start()
    thread.join(timeout)
    err = outcome[0] if outcome else TimeoutError(f"no answer in {timeout:.0f} s")
    if err is not None:
        raise DataError(
            f"cannot download {name} into {where}: {host[0]} is unreachable ({_one_line(err)}); connect to the "
            f"network, or set TFDS_DATA_DIR or --data_dir to a directory holding {name}/ (prepared elsewhere)"
        )


@contextlib.contextmanager
def _restoring(directory: str):
    """Leaves ``directory`` as it was (what TFDS adds removed: downloads/, incomplete.* ...) if the body fails."""
    existed = os.path.isdir(directory)
    before = _tree(directory) if existed else set()
    try:
        yield
    except BaseException:
        if not existed:
            shutil.rmtree(directory, ignore_errors=True)
        else:
            for path in sorted(_tree(directory) - before, key=len, reverse=True):  # Deepest first.
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path, ignore_errors=True)
                elif os.path.lexists(path):
                    os.remove(path)
        raise


def _tree(directory: str) -> set[str]:
    """Every path under ``directory`` (files and directories)."""
    found = set()
    for root, dirs, files in os.walk(directory):
        found |= {os.path.join(root, n) for n in dirs + files}
    return found


def load_train_test(
    name: str, data_dir: str | None = None, download: bool | None = None
) -> tuple[ArrayDataset, ArrayDataset]:
    """(train, test) splits of ``name``; see `load_split`."""
    return load_split(name, "train", data_dir, download), load_split(name, "test", data_dir, download)


def _open_npz(path: str) -> np.lib.npyio.NpzFile:
    """The .npz archive at ``path``, opened without pickle; DataError for a missing file or anything else."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file")
    try:
        archive = np.load(path, allow_pickle=False)  # A text file: ValueError (it would need pickle).
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:  # numpy's own words would mislead.
        raise DataError(f"{path}: not a .npz archive (expected np.savez output holding 'images' and 'labels')") from err
    if not isinstance(archive, np.lib.npyio.NpzFile):  # A .npy file: one bare array.
        raise DataError(
            f"{path}: not a .npz archive (a single .npy array); save with np.savez(path, images=..., labels=...)"
        )
    return archive


def _images_and_labels(path: str, archive: np.lib.npyio.NpzFile) -> tuple[np.ndarray, np.ndarray]:
    """The archive's 'images' and 'labels' arrays, as stored; DataError if either is missing or unreadable."""
    missing = [key for key in ("images", "labels") if key not in archive.files]
    if missing:
        raise DataError(
            f"{path}: lacks {' and '.join(map(repr, missing))} (holds: "
            f"{', '.join(archive.files) or 'nothing'}); expected arrays 'images' and 'labels'"
        )
    try:
        return archive["images"], archive["labels"]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        if "Object arrays" not in str(err):  # A damaged member.
            raise DataError(f"{path}: unreadable .npz archive ({_one_line(err)})") from err
        raise DataError(
            f"{path}: holds object arrays (they would need pickle, never allowed here); save "
            "numeric arrays (float images, integer labels) with np.savez"
        ) from err


def _check_synthetic_shapes(path: str, images: np.ndarray, labels: np.ndarray) -> None:
    """DataError unless images are numeric [n, H, W, C] and labels integer [n], n >= 1."""
    if (
        images.ndim != 4
        or not images.shape[0]
        or labels.shape != images.shape[:1]
        or not np.issubdtype(images.dtype, np.number)
        or not np.issubdtype(labels.dtype, np.integer)
    ):
        raise DataError(
            f"{path}: needs numeric images [n, H, W, C] and integer labels [n], n >= 1, got images "
            f"{images.shape} {images.dtype} and labels {labels.shape} {labels.dtype}"
        )


def load_synthetic_npz(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(images [n, H, W, C], labels [n] integers) of a synthetic set saved as .npz (condense.py's synthetic.npz).

    Read with ``allow_pickle=False``: a file from elsewhere never runs code. Raises DataError, one line starting
    with ``path``, for a missing file, a file that is not a .npz archive, object arrays, missing keys or bad shapes.
    """
    with _open_npz(path) as archive:
        images, labels = _images_and_labels(path, archive)
    _check_synthetic_shapes(path, images, labels)
    check_finite(images, path)
    return images, labels


@struct.dataclass
class ClassIndex:
    """Example indices grouped by class, padded to a rectangle so it can pass through jit as a pytree.

    Attributes:
      table: [K, max_count] int32. Row c lists the indices of class c in ascending order in its first counts[c]
        slots; the remaining slots repeat the row cyclically (slot j holds row[j % counts[c]]), so every entry of
        row c is a valid index of class c, even if a caller oversamples.
      counts: [K] int32, examples per class (all >= 1).
    """

    table: jax.Array
    counts: jax.Array

    @property
    def num_classes(self) -> int:
        return self.table.shape[0]


def _class_counts(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """[K] examples per class of ``labels`` ([N] ints); DataError if a label is outside [0, num_classes)."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or (labels.size and (labels.min() < 0 or labels.max() >= num_classes)):
        raise DataError(f"labels must be a vector of ints in [0, {num_classes})")
    return np.bincount(labels, minlength=num_classes)


def build_class_index(labels: np.ndarray, num_classes: int) -> ClassIndex:
    """Builds a `ClassIndex` over ``labels`` ([N] ints in [0, num_classes)); indices refer to ``labels``.

    Raises:
      DataError: labels out of range, or a class with no examples.
    """
    counts = _class_counts(labels, num_classes)
    empty = np.flatnonzero(counts == 0)
    if empty.size:
        raise DataError(f"class {int(empty[0])} has no examples (empty classes: {empty.tolist()})")
    order = np.argsort(np.asarray(labels), kind="stable")  # grouped by class, ascending within a class
    starts = np.cumsum(counts) - counts
    slots = np.arange(counts.max())
    table = order[starts[:, None] + slots[None, :] % counts[:, None]]
    return ClassIndex(table=jnp.asarray(table, jnp.int32), counts=jnp.asarray(counts, jnp.int32))


def _static_n(index: ClassIndex, n: int) -> int:
    """Validates the sample size: a Python int (it fixes an output shape) within the table width."""
    n = operator.index(n)
    if not 0 <= n <= index.table.shape[1]:
        raise DataError(f"cannot sample {n} examples per class: the largest class has {index.table.shape[1]}")
    return n


def _require(n: int, c: int, count: int) -> None:
    if n > count:
        raise DataError(f"class {c} has only {count} examples; cannot sample {n} without replacement")


def _sample_row(key: jax.Array, row: jax.Array, count: jax.Array, n: int) -> jax.Array:
    """n distinct entries among the first ``count`` of ``row`` ([W]) -> [n], in random order."""
    # Top-n of random 31-bit integers is a uniform random n-subset in random order. Integers rather than float32
    # noise because float32 uniforms collide often in a 6742-wide row; padded slots get -1 so they lose.
    noise = (jax.random.bits(key, row.shape, jnp.uint32) >> 1).astype(jnp.int32)
    noise = jnp.where(jnp.arange(row.shape[0]) < count, noise, -1)
    _, positions = jax.lax.top_k(noise, n)
    return row[positions]


def sample_class(key: jax.Array, index: ClassIndex, c: Any, n: int) -> jax.Array:
    """[n] int32 dataset indices of class ``c`` drawn without replacement; ``c`` may be traced, ``n`` is static.

    ``sample_class(jax.random.split(key, K)[c], index, c, n)`` equals ``sample_per_class(key, index, n)[c]``.
    n <= counts[c] is checked when c and the counts are concrete; inside jit it is the caller's job (violating it
    repeats indices, still all of class c).
    """
    n = _static_n(index, n)
    if not isinstance(c, jax.core.Tracer) and not isinstance(index.counts, jax.core.Tracer):
        _require(n, int(c), int(np.asarray(index.counts)[c]))  # numpy: under jit, indexing traces
    return _sample_row(key, index.table[c], index.counts[c], n)


def sample_per_class(key: jax.Array, index: ClassIndex, n: int) -> jax.Array:
    """[K, n] int32 dataset indices: row c holds n distinct examples of class c (like torch.randperm(n_c)[:n]).

    Class c uses key ``jax.random.split(key, K)[c]``, so classes are independent. Jit-able with ``n`` static; the
    draw for a smaller n is a prefix of the draw for a larger n under the same key. n <= min(counts) is checked when
    the counts are concrete; inside jit it is the caller's job (violating it repeats indices within a class).
    """
    n = _static_n(index, n)
    if not isinstance(index.counts, jax.core.Tracer):  # inside jit the counts are unknown
        counts = np.asarray(index.counts)
        _require(n, int(counts.argmin()), int(counts.min()))
    keys = jax.random.split(key, index.num_classes)
    return jax.vmap(functools.partial(_sample_row, n=n))(keys, index.table, index.counts)


def split_indices(key: jax.Array, num_examples: int, sizes: Mapping[str, int]) -> dict[str, np.ndarray]:
    """Disjoint random parts of range(num_examples), e.g. ``{"target": 30000, "attacker": -1}``.

    Parts are cut, in the mapping's order, from one ``jax.random.permutation(key, num_examples)``; at most one size
    may be -1, meaning "all the rest". Returns {name: [size] np.int32 indices, sorted ascending}; deterministic per key.

    Raises:
      DataError: sizes below -1, more than one -1, or fixed sizes summing to more than num_examples.
    """
    rest = [name for name, size in sizes.items() if size == -1]
    if len(rest) > 1 or any(size < -1 for size in sizes.values()):
        raise DataError(f"split sizes must be >= 0, with at most one -1 ('the rest'); got {dict(sizes)}")
    fixed = sum(size for size in sizes.values() if size != -1)
    if fixed > num_examples:
        raise DataError(f"split sizes {dict(sizes)} need {fixed} examples, only {num_examples} available")
    perm = np.asarray(jax.random.permutation(key, num_examples), np.int32)
    parts, start = {}, 0
    for name, size in sizes.items():
        size = num_examples - fixed if size == -1 else size
        parts[name] = np.sort(perm[start : start + size])
        start += size
    return parts


def stratified_subset(key: jax.Array, labels: np.ndarray, per_class: int, num_classes: int) -> np.ndarray:
    """``per_class`` random distinct examples of every class, e.g. the 10-per-class random real baseline.

    Returns:
      [num_classes * per_class] np.int32 indices into ``labels``, grouped by class (class 0 first), random order
      within a class (a smaller per_class under the same key gives a per-class prefix).

    Raises:
      DataError: a class has fewer than ``per_class`` examples.
    """
    counts = _class_counts(labels, num_classes)
    short = np.flatnonzero(counts < per_class)
    if short.size:
        c = int(short[0])
        raise DataError(f"class {c} has {int(counts[c])} examples, fewer than per_class={per_class}")
    index = build_class_index(labels, num_classes)
    return np.asarray(sample_per_class(key, index, per_class), np.int32).reshape(-1)
