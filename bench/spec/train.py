"""How a model trains: the hyperparameters a suite sets, checked when the suite is read."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from fairsqueeze.core.errors import ConfigError

MAX_EPOCHS = 100_000  # a sane maximum: the papers' protocols train for at most a few hundred


@dataclass(frozen=True)
class TrainConfig:
    """Training hyperparameters. ``lr_step`` epochs between decays by ``lr_gamma`` (0 = none).

    ``patience`` > 0 turns ``epochs`` into a maximum for the dense reference: training stops
    after ``patience`` epochs without the validation loss falling by more than ``min_delta``,
    and the weights of the best validation epoch are restored (see :class:`EarlyStopping`).
    0 trains every epoch (the papers' fixed protocols). Both are part of the config hash.

    The FairLRF protocol is SGD, lr 0.01, x0.57 every 10 epochs, batch 128, 100 epochs.
    """

    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.01
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 0.0
    lr_step: int = 0
    lr_gamma: float = 0.57
    patience: int = 0
    min_delta: float = 0.0

    def __post_init__(self):
        if self.optimizer not in ("sgd", "adam", "adamw"):
            raise ConfigError(f"train.optimizer: unknown optimizer {self.optimizer!r} (sgd, adam, adamw)")
        if self.epochs < 0 or self.batch_size < 1 or self.lr <= 0:
            raise ConfigError("train: epochs must be >= 0, batch_size >= 1 and lr > 0")
        if self.epochs > MAX_EPOCHS:
            raise ConfigError(f"train: epochs {self.epochs} is more than {MAX_EPOCHS:,}, more than any model here could"
                              " train for")
        if self.patience < 0 or not self.min_delta >= 0:
            raise ConfigError("train: patience and min_delta must be >= 0")

    def identity(self) -> dict:
        """What determines the training, for hashing: without early stopping (patience 0)
        ``min_delta`` changes nothing, so neither key enters and a fixed-epoch config keeps
        the hash it had before early stopping existed."""
        fields = asdict(self)
        if not self.patience:
            del fields["patience"], fields["min_delta"]
        return fields

    def check_reference(self) -> "TrainConfig":
        """Refuse a config that would accept an untrained dense reference (a method may
        retrain for 0 epochs; a reference may not)."""
        if self.epochs < 1:
            raise ConfigError(f"train: epochs must be >= 1 for a dense reference, got {self.epochs}")
        return self
