"""Named key streams: which ``fold_in`` of which key feeds what.

Every random draw in dcjax comes from one ``jax.random.key(seed)``. A run splits its root key into named
streams, stream ``name`` being ``fold_in(root, position of name in its tuple)``; appending a name to a tuple
keeps every earlier stream, and so every earlier result, bitwise. Within a stream, item i (iteration i,
model i, evaluation at iteration i) is ``fold_in(stream, i)`` (``item``).

The layouts:
  CONDENSE: one condensation (``dcjax.condense.run``; ``privacy.bank`` runs it per model from the model's key; both
    through ``condense.drive.key_streams``).
    init: the initial synthetic set; iterations: iteration t gets item(iterations, t); eval: the
    evaluation at iteration t gets item(eval, t); baseline: the random-real baseline's evaluation.
  ATTACK: one attack run (``privacy.attack_run``).
    pools: the target / attacker pool split; keep: LiRA keep masks; halves: Shokri's IN/OUT halves;
    models: model i gets item(models, i), split into (recipe key, training key); attack: the attack
    classifiers; bootstrap: confidence intervals; balance: balanced member / non-member draws;
    canaries: which pool examples become canaries; population: RMIA's population draw; audit: the
    empirical epsilon's one-run audit draws; crossfit: the headline's model / example split and its
    bootstrap draws; null: the null test's random membership labels; movement: model i's sample of its private
    images for the natural nearest-neighbour distance (item(movement, i)); shokri_sample: Shokri from the bank
    (no shadows): item 0 draws the pool examples its classifiers see, item 1 cuts them into cross-fit halves.
"""

from __future__ import annotations

import jax

CONDENSE = ("init", "iterations", "eval", "baseline")
ATTACK = (
    "pools",
    "keep",
    "halves",
    "models",
    "attack",
    "bootstrap",
    "balance",
    "canaries",
    "population",
    "audit",
    "crossfit",
    "null",
    "movement",
    "shokri_sample",
)


def streams(root: jax.Array, names: tuple[str, ...]) -> dict[str, jax.Array]:
    """{name: fold_in(root, position)} for a layout (``CONDENSE``, ``ATTACK``); root: one typed key."""
    return {name: jax.random.fold_in(root, i) for i, name in enumerate(names)}


def item(stream: jax.Array, i) -> jax.Array:
    """The key of item i (an int or a traced int32) of a stream."""
    return jax.random.fold_in(stream, i)
