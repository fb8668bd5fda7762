"""The attack stage: every attack's membership scores [M, N] from an export (``AttackData``).

Every attack but Shokri reads only the true-class score phi of each (model, query, example)
(``AttackData.target_phi`` / ``population_phi``); Shokri reads the query-0 logit vectors.
Pure functions of arrays (the only randomness, Shokri's classifiers and balanced evaluation,
comes from keys derived from the run's seed), so a run and a re-attack of its export agree.
Each model of the target-pool bank is the target in turn, the other M - 1 its shadows
(leave-one-out); the attacker runs the target's whole recipe for its shadows.

Attacks (``attack_names``):

* model attacks, which see only the target model's outputs (plus the attacker's shadows):
  LiRA online / offline with per-example or fixed variance (Carlini et al. 2022), RMIA online /
  offline (Zarifzadeh et al. 2024) against the population samples, LOSS, confidence, Shokri;
  for recipes that copy only some members' pixels (a random subset, real-init condensation),
  the recipe-aware LiRA variants condition on which examples each shadow's recipe used.
* release attacks (condense recipe), which see the released synthetic set instead: minus the
  distance to the nearest synthetic image, raw and calibrated against the shadows' sets.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from dcjax.privacy import lira, nearest, rmia, shokri
from dcjax.privacy.attack_data import AttackData

LIRA_ATTACKS = ("lira_online", "lira_online_fixed_var", "lira_offline", "lira_offline_fixed_var")
RMIA_ATTACKS = ("rmia_online", "rmia_offline")
RECIPE_ATTACKS = ("lira_recipe_online", "lira_recipe_offline")
THRESHOLD_ATTACKS = ("loss", "confidence", "shokri")
RELEASE_ATTACKS = ("nearest_synthetic", "nearest_synthetic_lira", "nearest_synthetic_offline")
# Every attack, in ``attack_names``' order: the order a run computes and reports them (results.json sorts its keys).
ORDER = LIRA_ATTACKS + RMIA_ATTACKS + RECIPE_ATTACKS + THRESHOLD_ATTACKS + RELEASE_ATTACKS


def uses_some_pixels(d: AttackData) -> bool:
    """Whether the recipe copies the pixels of SOME members only (subset, real-init condensation)."""
    return bool(d.used.any()) and not np.array_equal(d.used, d.keep)


def attack_names(d: AttackData) -> tuple[str, ...]:
    """The attacks that apply to this export, model attacks first (Shokri only if it carries its shadows' inputs:
    Shokri from the bank gives an accuracy on a subsample, no per-example score, ``dcjax.privacy.shokri_bank``)."""
    names = LIRA_ATTACKS + (RMIA_ATTACKS if d.population_phi.shape[2] else ())
    names += RECIPE_ATTACKS if uses_some_pixels(d) else ()
    shokri_scored = d.has_shokri and not d.shokri_from_bank
    names += tuple(n for n in THRESHOLD_ATTACKS if n != "shokri" or shokri_scored)
    return names + (RELEASE_ATTACKS if d.has_release else ())


def model_attacks(names) -> tuple[str, ...]:
    return tuple(n for n in names if n not in RELEASE_ATTACKS)


def _phi(d: AttackData) -> np.ndarray:
    """LiRA's logit-scaled confidence [M, N, Q] of every model on every query, float64."""
    return np.moveaxis(d.target_phi.astype(np.float64), 1, 2)


def _lira(phi: np.ndarray, keep: np.ndarray) -> dict[str, np.ndarray]:
    # One pass for the four variants: they share every target's shadows and per-example statistics.
    scores = lira.leave_one_out_lira(phi, keep)
    return {name: scores[name] for name in LIRA_ATTACKS}


def _recipe(phi: np.ndarray, d: AttackData) -> dict[str, np.ndarray]:
    return {
        name: lira.leave_one_out_recipe(phi, d.keep, d.used, fn)
        for name, fn in (
            ("lira_recipe_online", lira.lira_recipe_online),
            ("lira_recipe_offline", lira.lira_recipe_offline),
        )
    }


def _rmia(d: AttackData, config: rmia.RMIAConfig) -> dict[str, np.ndarray]:
    """RMIA with Pr(x | model) the true-class probability averaged over the queries."""
    px = lira.confidence_from_phi(d.target_phi).mean(1)  # [M, N]
    pz = lira.confidence_from_phi(d.population_phi).mean(1)  # [M, P]
    return {
        f"rmia_{mode}": rmia.leave_one_out_rmia(px, pz, d.keep, dataclasses.replace(config, online=mode == "online"))
        for mode in ("online", "offline")
    }


def shokri_scores(d: AttackData, config: shokri.AttackConfig, keys: dict) -> tuple[np.ndarray, np.ndarray]:
    """Shokri scores [M, N] of every target, and the poster's balanced accuracy per target [M].

    The per-class attack classifiers learn from the k shadows' query-0 outputs on the attacker pool.
    """
    shadow = d.shokri_shadow_logits  # [k, Na, K]
    k, num_classes = shadow.shape[0], shadow.shape[-1]
    features = shokri.attack_features(shadow.reshape(-1, num_classes), config)
    params = shokri.train_attack_models(
        keys["attack"], features, np.tile(d.attacker_labels, k), d.halves.reshape(-1), num_classes, config
    )
    targets = d.shokri_target_logits  # [M, N, K]
    scores = np.stack(
        [shokri.attack_scores(params, shokri.attack_features(t, config), d.target_labels) for t in targets]
    )
    accuracy = []
    for t in range(d.num_models):
        idx = shokri.balanced_indices(jax.random.fold_in(keys["balance"], t), d.keep[t])
        accuracy.append(shokri.attack_accuracy(scores[t, idx], d.keep[t, idx]))
    return scores, np.asarray(accuracy)


def compute_scores(
    d: AttackData,
    attack_config: shokri.AttackConfig,
    rmia_config: rmia.RMIAConfig,
    keys: dict,
    shokri_result: tuple[np.ndarray, np.ndarray] | None = None,
    release: bool = True,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Every applicable attack's scores {name: float64 [M, N]} and Shokri's accuracy per target [M].

    keys: the run's named keys (``attack_data.run_keys``); "attack" and "balance" are used. An export
    without Shokri's inputs (``AttackData.has_shokri``) gets no Shokri score and an accuracy of shape [0].
    shokri_result: ``shokri_scores``'s output for this export's outputs, reused instead of retraining
      the attack classifiers (they learn from the attacker pool alone, so other keep masks leave them
      unchanged: the null test rescoring a row 20 times trains them once).
    release: False leaves out the release attacks (the null test reads the model attacks alone: skipping the
      calibrated nearest-synthetic scores saved ~13 % of one rescoring of a poster-tier condensed point, profiled).
    """
    phi = _phi(d)
    scores = _lira(phi, d.keep)
    names = attack_names(d)
    if "rmia_online" in names:
        scores.update(_rmia(d, rmia_config))
    if "lira_recipe_online" in names:
        scores.update(_recipe(phi, d))
    # Threshold attacks need no shadows: the target's own loss / confidence on the plain image.
    scores["loss"] = lira.loss_from_phi(d.target_phi[:, 0])
    scores["confidence"] = lira.confidence_from_phi(d.target_phi[:, 0])
    shokri_accuracy = np.zeros(0)
    if "shokri" in names:
        scores["shokri"], shokri_accuracy = shokri_result or shokri_scores(d, attack_config, keys)
    if release and d.has_release:
        scores["nearest_synthetic"] = -d.nearest_distances
        scores.update(nearest.calibrated_nearest_scores(d.nearest_distances, d.keep))
    return {name: scores[name] for name in (names if release else model_attacks(names))}, shokri_accuracy
