"""Membership inference (PROTOCOL section 7).

Pure math on arrays: ``masks`` draws IN/OUT splits, ``queries`` makes shifted query copies, ``lira`` turns
logits into LiRA / LOSS / confidence scores, ``shokri`` trains the per-class attack classifiers, ``metrics``
and ``report`` turn (scores, labels) into ROC numbers with bootstrap CIs per slice.

Training: ``bank`` turns each model's private subset into its training set by the target's recipe (original,
random subset, DC / DSA / DM condensation) for the engine's model axis; ``attack_run`` is the resumable run behind
``experiments/attack.py``; ``study`` runs one attack per target recipe (DP-SGD targets included, with the privacy
accountant in ``accounting``).
"""

from dcjax.privacy import lira, masks, metrics, queries, report, shokri

__all__ = ["lira", "masks", "metrics", "queries", "report", "shokri"]
