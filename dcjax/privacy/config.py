"""Settings of the privacy package's runs: ``AttackRunConfig``, everything that determines an attack run's outputs.

Here, not in ``attack_run`` (the orchestrator), so that what reads a run's settings (``pools`` cutting the pools,
``memory`` estimating a chunk, the study planning its rows, the launchers) imports the settings and not the run.
"""

from __future__ import annotations

import dataclasses

from dcjax import engine
from dcjax import errors
from dcjax import train as train_lib
from dcjax.models import ModelConfig
from dcjax.privacy import bank, queries, shokri
from dcjax.privacy import rmia as rmia_lib


@dataclasses.dataclass(frozen=True)
class AttackRunConfig:
    """Everything that determines an attack run's outputs."""

    dataset: str = "mnist"
    seed: int = 0
    model: ModelConfig = ModelConfig()
    train: train_lib.TrainConfig = train_lib.TrainConfig(epochs=100, augment="none")
    recipe: bank.Recipe = bank.Recipe()
    num_models: int = 16  # M: LiRA bank on the target pool (even, >= 6).
    target_pool: int = 2000  # N.
    # k: Shokri shadows on the attacker pool. 0 (with attacker_pool 0): Shokri from the bank, its classifiers for
    # target m trained on the other M - 1 pipelines (``dcjax.privacy.shokri_bank``).
    num_shadow: int = 8
    attacker_pool: int = 2000  # Na.
    num_queries: int = 2  # LiRA queries: the image and shifted copies (queries.SHIFTS).
    num_canaries: int = 0  # Target-pool examples given a wrong label (IN for half the models).
    # P test images every model is also queried on: RMIA's population samples z, which no model trained on.
    num_population: int = 1000
    attack: shokri.AttackConfig = shokri.AttackConfig()
    rmia: rmia_lib.RMIAConfig = rmia_lib.RMIAConfig()  # Its `online` is set per attack.
    models_per_chunk: int = 0  # 0: one model per device on CPU, all at once elsewhere.
    strategy: str = "auto"  # Model-axis strategy (engine.STRATEGIES).
    num_resamples: int = 200  # Bootstrap resamples for confidence intervals.
    # S: pool examples Shokri from the bank sees (num_shadow 0 only; cross-fitted over two halves of them).
    shokri_sample: int = 2000

    def __post_init__(self):
        if self.num_models < 6 or self.num_models % 2:
            # Leave-one-out keeps M/2 - 1 IN and OUT shadows per example; a std needs 2 of each.
            raise errors.ConfigError(
                "num_models",
                f"must be even and >= 6 (LiRA fits per-example Gaussians to the other models), got {self.num_models}",
            )
        if not 0 <= self.seed < 2**32:  # jax.random.key(seed) wraps outside: two seeds, one key.
            raise errors.ConfigError("seed", f"must be in [0, 2**32), got {self.seed}")
        for name in ("target_pool", "num_resamples"):
            if getattr(self, name) < 1:
                raise errors.ConfigError(name, f"must be >= 1, got {getattr(self, name)}")
        self._check_shokri()
        if self.num_population < 0:
            raise errors.ConfigError("num_population", f"must be >= 0, got {self.num_population}")
        if not 0 <= self.num_canaries <= self.target_pool:
            raise errors.ConfigError("num_canaries", f"must be in [0, target_pool], got {self.num_canaries}")
        if self.models_per_chunk < 0:
            raise errors.ConfigError("models_per_chunk", f"must be >= 0, got {self.models_per_chunk}")
        queries.query_shifts(self.num_queries)  # Validates num_queries.
        engine.resolve_strategy(self.strategy)

    @property
    def shokri_from_bank(self) -> bool:
        """Whether Shokri's classifiers train on the bank's other pipelines (no attacker pool, no shadows)."""
        return self.num_shadow == 0

    def _check_shokri(self) -> None:
        """Shadows on an attacker pool (both >= 1), or Shokri from the bank (both 0, shokri_sample in [2, N])."""
        for name in ("num_shadow", "attacker_pool"):
            if getattr(self, name) < 0:
                raise errors.ConfigError(name, f"must be >= 0, got {getattr(self, name)}")
        if (self.num_shadow == 0) != (self.attacker_pool == 0):
            # Named first: the one set to 0, which is what the other must follow.
            zero, other = ("num_shadow", "attacker_pool") if self.num_shadow == 0 else ("attacker_pool", "num_shadow")
            raise errors.ConfigError(
                zero,
                f"=0 needs {other}=0 (Shokri from the bank, no shadows), got {other}={getattr(self, other)}; "
                "or both >= 1 (Shokri's shadows on an attacker pool)",
            )
        # Two cross-fit halves need an example each; only bank mode reads shokri_sample.
        if self.shokri_from_bank and not 2 <= self.shokri_sample <= self.target_pool:
            raise errors.ConfigError(
                "shokri_sample",
                f"must be in [2, target_pool={self.target_pool}] with num_shadow=0, got {self.shokri_sample}",
            )
