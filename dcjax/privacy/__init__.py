"""Membership inference: keep masks, LiRA / LOSS scores and attack metrics (PROTOCOL section 7).

Pure math on score arrays; nothing here trains a model. ``masks`` draws the IN/OUT splits, ``lira`` turns logits
into per-example membership scores and ``metrics`` turns (scores, labels) into ROC-based numbers with bootstrap CIs.
"""

from dcjax.privacy import lira, masks, metrics

__all__ = ["lira", "masks", "metrics"]
