"""Evaluating a training set the reference way: train M fresh networks on it, test them.

Used for synthetic sets (docs/protocol.md section 4), random real subsets (the naive baseline)
and the full dataset: the same engine, the same protocol, so the rows are comparable.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from dcjax import data
from dcjax import engine
from dcjax import errors
from dcjax import train as train_lib
from dcjax.models import ModelFns


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """M models trained with ``train`` settings; ``strategy`` runs the model axis."""

    num_models: int = 20
    train: train_lib.TrainConfig = train_lib.TrainConfig(epochs=1000, augment="dc")
    strategy: str = "auto"
    test_batch: int = 1000

    def __post_init__(self):
        if self.num_models < 1:
            raise errors.ConfigError("num_models", f"must be >= 1, got {self.num_models}")
        if self.test_batch < 1:
            raise errors.ConfigError("test_batch", f"must be >= 1, got {self.test_batch}")
        if not isinstance(self.train, train_lib.TrainConfig):
            raise errors.ConfigError("train", f"must be a train.TrainConfig, got {self.train!r}")
        engine.resolve_strategy(self.strategy)


def evaluate_training_set(fns: ModelFns, config: EvalConfig, key: jax.Array, train_set, test_set) -> dict:
    """Trains ``config.num_models`` fresh models on train_set and tests them.

    Args:
      fns: the network to train.
      config: how many models and how to train them.
      key: models get ``split(key, num_models)``.
      train_set: (images [n,H,W,C], labels [n]).
      test_set: (images [T,H,W,C], labels [T]).

    Returns:
      {"accuracies": [M] floats, "mean": float, "std": float, "final_train_loss": float}.

    Raises:
      data.DataError: an image of either set holds a NaN or Inf pixel (it would train to chance without a word).
    """
    data.check_finite(train_set[0], "the training set")
    data.check_finite(test_set[0], "the test set")
    images, labels = (jnp.asarray(x) for x in train_set)
    keys = jax.random.split(key, config.num_models)
    masks = jnp.ones((config.num_models, images.shape[0]), bool)
    variables, losses = engine.train_models(fns, config.train, keys, (images, labels, masks), config.strategy)
    test_images, test_labels = (jnp.asarray(x) for x in test_set)
    accs = np.asarray(
        engine.evaluate_many(fns, variables, (test_images, test_labels), config.strategy, config.test_batch)
    )
    return {
        "accuracies": accs.tolist(),
        "mean": float(accs.mean()),
        "std": float(accs.std()),
        "final_train_loss": float(np.asarray(losses)[:, -1].mean()),
    }


class PairedDifference(NamedTuple):
    """after - before in accuracy points: per pair [M], their mean, its ``level`` t-interval (low, high)."""

    differences: list[float]
    mean: float
    low: float
    high: float


def paired_difference(before, after, level: float = 0.95) -> PairedDifference:
    """The accuracy gain of one training set over another, paired by evaluating model.

    Pair i must share what the sets do not change (model i's key, so its initialisation and data order), so the
    differences vary only with the sets; the t-interval then treats the M pairs as independent draws.

    Args:
      before, after: [M] test accuracies as fractions, model i of each paired (M >= 2).
      level: the interval's coverage.
    """
    if len(before) != len(after) or len(before) < 2:
        raise ValueError(f"need two equal lists of >= 2 accuracies, got {len(before)} and {len(after)}")
    diffs = [100 * (float(a) - float(b)) for b, a in zip(before, after)]
    n = len(diffs)
    mean = sum(diffs) / n
    half = stats.t.ppf(0.5 + level / 2, n - 1) * math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1) / n)
    return PairedDifference(diffs, mean, mean - half, mean + half)
