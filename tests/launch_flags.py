"""Tiny launcher settings shared by the end-to-end and crash-and-resume tests (one place to change them).

Each list is a launcher's flags for a run that takes seconds on mock data (tests/mock_launch.py); tests add
their own --workdir and whatever they vary.
"""

# experiments/attack.py: a subset target, a 6-model bank and 2 Shokri shadows of a width-4 ConvNet.
TINY_ATTACK = [
    "experiments/attack.py",
    "--target=subset",
    "--per_class=1",
    "--num_models=6",
    "--target_pool=100",
    "--num_shadow=2",
    "--attacker_pool=100",
    "--width=4",
    "--depth=1",
    "--epochs=2",
    "--attack_steps=20",
    "--num_resamples=5",
    "--num_population=50",
]

# experiments/privacy_study.py at --tier=test; callers pick --rows.
TINY_STUDY = [
    "experiments/privacy_study.py",
    "--tier=test",
    "--per_class=1",
    "--num_models=6",
    "--target_pool=120",
    "--num_shadow=2",
    "--attacker_pool=100",
    "--num_canaries=4",
    "--width=4",
    "--depth=1",
    "--epochs=2",
    "--small_epochs=2",
    "--attack_steps=20",
    "--num_resamples=5",
    "--num_population=50",
]
