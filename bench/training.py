"""Supervised training loop shared by the dense reference and methods that fine-tune."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .errors import ConfigError
from .progress import progress_bar
from .tasks import Split, TaskData, TaskView


@dataclass(frozen=True)
class TrainConfig:
    """Training hyperparameters. ``lr_step`` epochs between decays by ``lr_gamma`` (0 = none).

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

    def __post_init__(self):
        if self.optimizer not in ("sgd", "adam", "adamw"):
            raise ConfigError(f"train.optimizer: unknown optimizer {self.optimizer!r} (sgd, adam, adamw)")
        if self.epochs < 0 or self.batch_size < 1 or self.lr <= 0:
            raise ConfigError("train: epochs must be >= 0, batch_size >= 1 and lr > 0")


def make_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def train_model(
    model: nn.Module,
    task: TaskData | TaskView,
    cfg: TrainConfig,
    device: torch.device,
    seed: int,
    split: Split | None = None,
    desc: str = "train",
    loss_fn=None,
) -> list[float]:
    """Train ``model`` in place on ``split`` (default: the task's train split).

    Shuffling and initialisation-independent randomness come from ``seed`` so the same call
    gives the same weights. Returns the mean training loss of each epoch.
    """
    split = split if split is not None else task.train
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    model.to(device).train()
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], cfg)
    scheduler = (
        torch.optim.lr_scheduler.StepLR(optimizer, cfg.lr_step, cfg.lr_gamma) if cfg.lr_step else None
    )
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    history: list[float] = []
    bar = progress_bar(range(cfg.epochs), desc=desc, unit="epoch", leave=False)
    for _ in bar:
        order = rng.permutation(len(split))
        total, count = 0.0, 0
        for start in range(0, len(order), cfg.batch_size):
            rows = np.sort(order[start : start + cfg.batch_size])  # sorted reads are memmap-friendly
            x = task.prepare(split.x[rows], True).to(device)
            y = torch.as_tensor(split.y[rows], device=device)
            loss = loss_fn(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(rows)
            count += len(rows)
        if scheduler:
            scheduler.step()
        history.append(total / max(count, 1))
        bar.set_postfix(loss=f"{history[-1]:.4f}")
    model.eval()
    return history
