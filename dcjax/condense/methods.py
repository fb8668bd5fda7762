"""The condensation methods: one ``config.Method`` record each, registered in ``condense.METHODS``.

A method is its iteration (in its own module) and its record here: paper defaults, how an iteration is built
(progress, memory), how its sets are evaluated, and what the privacy study's rows of it need. Adding a method adds
its module and its record below; nothing else branches on the method's name.
"""

from __future__ import annotations

from dcjax.condense.config import Method, MethodDefaults, register
from dcjax.condense.distribution_matching import dm_iteration
from dcjax.condense.gradient_matching import dc_iteration

# kept_for_image_gradient: DC (second order: the synthetic gradient w.r.t. the images) keeps the forward residuals
# and the first backward's cotangents; DM, a first-order backward through the embedding only, keeps about half of
# the forward's (calibrated against XLA, tests/test_memory.py).
register(
    # Gradient matching (Zhao, Mopuri & Bilen, ICLR 2021), ``gradient_matching.dc_iteration``.
    Method(
        "dc",
        dc_iteration,
        MethodDefaults(iterations=1000, lr_img=0.1, init="noise"),
        gradient_matching=True,
        dsa=False,
        kept_for_image_gradient=2.0,
    ),
    # With Differentiable Siamese Augmentation (Zhao & Bilen, ICML 2021): the same iteration, DSA on.
    Method(
        "dsa",
        dc_iteration,
        MethodDefaults(iterations=1000, lr_img=0.1, init="real"),
        gradient_matching=True,
        dsa=True,
        kept_for_image_gradient=2.0,
    ),
    # Distribution matching (Zhao & Bilen, WACV 2023), ``distribution_matching.dm_iteration``: an iteration costs a
    # small fraction of a DC one, so the study runs DM rows at the paper's own schedule.
    Method(
        "dm",
        dm_iteration,
        MethodDefaults(iterations=20000, lr_img=1.0, init="real"),
        gradient_matching=False,
        dsa=True,
        kept_for_image_gradient=0.5,
        own_schedule=True,
    ),
)
