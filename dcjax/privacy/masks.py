"""IN/OUT membership masks for shadow-model attacks, driven only by the ``jax.random`` key passed in."""

from __future__ import annotations

import jax
import numpy as np


def lira_keep_masks(key: jax.Array, num_models: int, num_examples: int) -> np.ndarray:
    """LiRA keep mask: every example is IN for exactly ``num_models / 2`` models.

    Follows the reference recipe: sample a uniform [M, N] matrix, argsort along the model axis and keep
    ``order < M / 2``. Each column of the argsort is a uniformly random permutation of the model indices, so each
    example gets a uniformly random half of the models, and each model trains on about half the pool.

    Args:
      key: a ``jax.random`` key; the mask is a deterministic function of it.
      num_models: M, must be even and >= 2 (an odd M cannot split every example exactly in half).
      num_examples: N >= 1.

    Returns:
      [M, N] bool numpy array; ``mask[m, n]`` is True when example n is in model m's training set.
    """
    if num_models < 2 or num_models % 2:
        raise ValueError(f"num_models must be even and >= 2, got {num_models}")
    if num_examples < 1:
        raise ValueError(f"num_examples must be >= 1, got {num_examples}")
    uniform = np.asarray(jax.random.uniform(key, (num_models, num_examples)))
    # A stable sort keeps the permutation well defined even if float32 draws tie.
    order = np.argsort(uniform, axis=0, kind="stable")
    return order < num_models // 2


def half_split_mask(key: jax.Array, num_examples: int) -> np.ndarray:
    """A random IN half: exactly ``floor(N / 2)`` True entries (Shokri-style IN/OUT halves).

    Args:
      key: a ``jax.random`` key; the mask is a deterministic function of it.
      num_examples: N >= 1.

    Returns:
      [N] bool numpy array.
    """
    if num_examples < 1:
        raise ValueError(f"num_examples must be >= 1, got {num_examples}")
    perm = np.asarray(jax.random.permutation(key, num_examples))
    mask = np.zeros(num_examples, bool)
    mask[perm[: num_examples // 2]] = True
    return mask
