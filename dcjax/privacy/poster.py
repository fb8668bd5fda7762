"""The poster's protocol: Shokri's attack trained on ORIGINAL pipelines, applied to another row's targets.

The poster trained Shokri's attack classifiers on shadow models trained on original data and applied them to
models trained on condensed data, reporting a balanced attack accuracy of ~62 % against original targets and
~41 % against condensed ones. Here, in a study whose rows learn Shokri from the bank (``shokri_bank``): for
target m, the classifiers are the ``original`` row's, trained on its pipelines other than m (cross-fitted over
the two halves of the Shokri subsample), and they score the OTHER row's target m on the half they did not train
on. Every row of a study has the same seed, hence the same pool, keep masks and subsample, so target m's
membership is the same in both rows and its classifiers never saw target m's data as another pipeline's row.
The original row against itself is its own Shokri accuracy.
"""

from __future__ import annotations

import os

import numpy as np
from absl import logging

from dcjax.privacy import attack_data, shokri, shokri_bank
from dcjax.privacy.attack_data import AttackData

TRAINED_ON = "original"


def check_same_split(original: AttackData, other: AttackData) -> None:
    """ExportError naming what differs, unless both exports learn Shokri from the bank on one seed's split."""
    for name, d in (("original", original), ("other", other)):
        if not d.shokri_from_bank:
            raise attack_data.ExportError(
                f"the {name} export has no Shokri-from-the-bank inputs (run with num_shadow=0)"
            )
    same = {
        "seed": original.config.get("seed") == other.config.get("seed"),
        "target pool": np.array_equal(original.pool_indices["target"], other.pool_indices["target"]),
        "target labels": np.array_equal(original.target_labels, other.target_labels),
        "keep masks": np.array_equal(original.keep, other.keep),
        "Shokri subsample": np.array_equal(original.shokri_examples, other.shokri_examples),
    }
    differ = [name for name, equal in same.items() if not equal]
    if differ:
        raise attack_data.ExportError(
            f"the poster's protocol needs rows of one split; the exports differ in: {', '.join(differ)}"
        )


def summary(accuracy: np.ndarray, d: AttackData) -> dict:
    """{"mean", "std", "per_target", "trained_on", "mode"} of balanced accuracies [M]."""
    return {
        "mean": float(accuracy.mean()),
        "std": float(accuracy.std()),
        "per_target": accuracy.tolist(),
        "trained_on": TRAINED_ON,
        "mode": shokri_bank.mode(d),
    }


def protocol(original: AttackData, others: dict[str, AttackData]) -> dict[str, dict]:
    """{row name: ``summary``} of the original row's classifiers applied to each other row's targets.

    original: the ``original`` row's export; others: {row name: export} of rows on the same split (checked).
    The classifiers are trained once, with the original row's attack settings and keys.
    """
    for d in others.values():
        check_same_split(original, d)
    keys = attack_data.run_keys(original.config["seed"])
    config = shokri.AttackConfig(**original.config["attack"])
    params = shokri_bank.train_classifiers(original, config, keys)
    return {name: summary(shokri_bank.accuracy(params, d, config, keys), d) for name, d in others.items()}


def study_protocol(workdir: str, names) -> dict[str, dict] | None:
    """``protocol`` over a study's rows (each row's export in ``workdir/<name>``), or None unless an
    ``original`` row learns Shokri from the bank."""
    if TRAINED_ON not in names:
        return None
    original = _load(workdir, TRAINED_ON)
    if not original.shokri_from_bank:
        return None
    logging.info("the poster's protocol: Shokri's classifiers of the original row against every other row")
    return protocol(original, {name: _load(workdir, name) for name in names if name != TRAINED_ON})


def _load(workdir: str, name: str) -> AttackData:
    return attack_data.load(os.path.join(workdir, name, attack_data.EXPORT))
