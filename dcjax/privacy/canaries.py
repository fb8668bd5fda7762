"""Injected canaries for the privacy study.

docs/protocol.md section 7: "injected canaries such as mislabeled examples".

A canary is a pool example that is unusually easy to memorise: here its label is replaced by a wrong one, so a
model that trains on it must memorise it to fit it. Canaries live in the LiRA-masked pool like every other
example, so each one is IN for about half the models and its membership is measured like any other example's.
The only randomness comes from the ``jax.random`` key passed in.
"""

from __future__ import annotations

import jax
import numpy as np


def _check_labels(labels, num_classes: int) -> np.ndarray:
    """labels -> int64 [N]; raises ValueError naming the bad argument."""
    y = np.asarray(labels)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D integer array, got {y.dtype} {y.shape}")
    if num_classes < 2:
        # A wrong label needs at least one other class to move to.
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"labels must be in [0, {num_classes}), got range [{y.min()}, {y.max()}]")
    return y.astype(np.int64)


def mislabel(key: jax.Array, labels, num_canaries: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Gives ``num_canaries`` random examples a random wrong label.

    Args:
      key: ``jax.random`` key; the output is a deterministic function of it.
      labels: int [N] true labels in [0, num_classes).
      num_canaries: how many distinct examples to mislabel, in [0, N].
      num_classes: K >= 2.

    Returns:
      (new_labels int32 [N], a copy with the canaries relabelled; canary indices int64 [num_canaries], sorted).
      Each canary's new label is uniform over the K - 1 classes other than its true one.
    """
    y = _check_labels(labels, num_classes)
    if not 0 <= num_canaries <= y.size:
        raise ValueError(f"num_canaries must be in [0, {y.size}], got {num_canaries}")
    new_labels = y.astype(np.int32)
    if num_canaries == 0:
        return new_labels, np.zeros((0,), np.int64)
    key_idx, key_shift = jax.random.split(key)
    idx = np.sort(np.asarray(jax.random.permutation(key_idx, y.size))[:num_canaries]).astype(np.int64)
    # A shift in [1, K) modulo K never maps a class to itself and hits each other class exactly once.
    shift = np.asarray(jax.random.randint(key_shift, (num_canaries,), 1, num_classes), np.int64)
    new_labels[idx] = ((y[idx] + shift) % num_classes).astype(np.int32)
    return new_labels, idx
