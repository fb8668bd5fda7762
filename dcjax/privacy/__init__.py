"""Membership inference (docs: docs/RESULTS.md, docs/protocol.md).

Pure math on arrays: ``masks`` draws IN/OUT splits, ``queries`` makes shifted query copies, ``lira`` turns
logits into LiRA / LOSS / confidence scores (and the recipe-aware LiRA variants), ``rmia`` the RMIA scores
against population samples, ``shokri`` trains the per-class attack classifiers, ``nearest`` attacks released
synthetic sets; ``metrics`` turns (scores, labels) into ROC numbers with example-level bootstrap CIs, ``audit``
into empirical epsilon lower bounds.

The attack stage: ``attack_data`` is a run's export (every array an attack reads), ``attacks`` computes every
attack's scores from it, ``assess`` every reported number (slices, the cross-fitted headline of ``headline`` and
the null test of ``null``, canaries, audits); ``multiplicity`` adjusts a study's row contrasts as a family.

Training: ``bank`` turns each model's private subset into its training set by the target's recipe (original,
random subset, DC / DSA / DM condensation) for the engine's model axis; ``attack_run`` is the resumable run behind
``experiments/attack.py``, its settings ``config.AttackRunConfig`` and its chunks' memory estimate ``memory``;
``study`` runs one attack per target recipe (DP-SGD targets included, with the privacy accountant in
``accounting``) and ``study_report`` writes its document and figures. ``tables`` formats results rows as markdown,
for one run's RESULTS.md and the study's.
"""

from dcjax.privacy import lira, masks, metrics, queries, rmia, shokri

__all__ = ["lira", "masks", "metrics", "queries", "rmia", "shokri"]
