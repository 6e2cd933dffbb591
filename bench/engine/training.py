"""The one training loop of the suite: dense references and every method that trains.

:class:`Trainer` runs epochs of minibatch steps over a split. Methods adapt it through
hooks rather than writing loops of their own:

- ``loss(model, batch)``: the training objective (default: cross-entropy of the logits);
  a fairness penalty or an augmented Lagrangian goes here, ``batch.s`` holds the groups;
- ``after_step(trainer)``: runs once per batch, after :meth:`Trainer.step` (re-apply masks,
  overwrite frozen quantized codes, dual updates). That is after every optimizer step for
  the default step; a subclass whose step takes several (FairALM's inner steps) runs the
  hook once, after the last of them;
- ``on_epoch_end(trainer, epoch)``: once per epoch (grow a dual step size, evaluate on
  validation and keep the best checkpoint);
- ``parameters``: which tensors train (default: every parameter that requires grad);
- ``sampler``: ``"shuffle"`` (every row once per epoch) or ``"balanced"`` (each batch holds
  ``batch_size // groups`` rows of every group, drawn with the epoch's seed);
- ``augment``: whether batches get the task's train-time transforms (default) or the
  evaluation ones (FairQuantize retrains on un-augmented balanced subsets);
- a subclass may override :meth:`Trainer.step` for a bi-level update (two batches per step).

The trainer counts what it spent (optimizer steps, forward and backward passes over rows,
wall time) in :attr:`Trainer.cost`, so a method can report its cost beside its fairness.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
from torch import nn

from fairsqueeze.core.errors import ConfigError
from fairsqueeze.spec.train import TrainConfig
from fairsqueeze.core.progress import progress_bar
from fairsqueeze.datasets.base import Split, TaskData, TaskView
from fairsqueeze.methods.base import Cost


def make_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


@dataclass
class Batch:
    """One minibatch on the device: inputs, labels, groups and the split row numbers.

    ``y`` or ``s`` is None when the split does not hold that column (one side of a privacy
    split holds labels only, the other groups only).
    """

    x: torch.Tensor
    y: torch.Tensor | None
    s: torch.Tensor | None
    rows: np.ndarray

    def __len__(self) -> int:
        return len(self.rows)


def cross_entropy(model: nn.Module, batch: Batch) -> torch.Tensor:
    return nn.functional.cross_entropy(model(batch.x), batch.y)


SAMPLERS = ("shuffle", "balanced")


@dataclass
class TrainCost:
    """What training spent: optimizer steps, passes over rows (forward, backward), seconds."""

    steps: int = 0
    forward_rows: int = 0
    backward_rows: int = 0
    seconds: float = 0.0
    epochs: int = 0
    rows_per_epoch: int = field(default=0, repr=False)

    def as_cost(self, scale: float = 1.0) -> Cost:
        """The method's cost of this training: passes over the rows it trained on (one unit =
        every row once; ``scale`` converts them to passes over a larger split), steps, seconds."""
        n = max(self.rows_per_epoch, 1)
        return Cost({"train_forward": self.forward_rows / n * scale, "train_backward": self.backward_rows / n * scale},
                    steps=self.steps, seconds=self.seconds)


class Trainer:
    """Minibatch training of ``model`` on a task's split; see the module notes for the hooks."""

    def __init__(
        self,
        model: nn.Module,
        task: TaskData | TaskView,
        cfg: TrainConfig,
        device: torch.device,
        seed: int,
        *,
        loss: Callable[[nn.Module, Batch], torch.Tensor] = cross_entropy,
        parameters: Iterable[torch.Tensor] | None = None,
        after_step: Callable[["Trainer"], None] | None = None,
        on_epoch_end: Callable[["Trainer", int], None] | None = None,
        sampler: str = "shuffle",
        augment: bool = True,
        desc: str = "train",
    ):
        if sampler not in SAMPLERS:
            raise ConfigError(f"unknown sampler {sampler!r} (known: {', '.join(SAMPLERS)})")
        self.model = model.to(device)
        self.task = task
        self.cfg = cfg
        self.device = device
        self.on_cpu = torch.device(device).type == "cpu"  # batches need no copy: read once, not per step
        self.seed = seed
        self.loss_fn = loss
        self.after_step = after_step
        self.on_epoch_end = on_epoch_end
        self.sampler = sampler
        self.augment = augment
        self.desc = desc
        params = list(parameters) if parameters is not None else [p for p in model.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(params, cfg)
        self.scheduler = (
            torch.optim.lr_scheduler.StepLR(self.optimizer, cfg.lr_step, cfg.lr_gamma) if cfg.lr_step else None
        )
        self.rng = np.random.default_rng(seed)
        self.cost = TrainCost()
        self.stop = False  # a hook may set it to end training after the current epoch

    # -- data ------------------------------------------------------------------------------
    def batch(self, split: Split, rows: np.ndarray, train: bool = True) -> Batch:
        rows = np.sort(rows)  # sorted reads are memmap-friendly
        x = self.task.prepare(split.x[rows], train)
        return Batch(
            x=x if self.on_cpu else x.to(self.device),
            y=self.column(split, "y", rows),
            s=self.column(split, "s", rows),
            rows=rows,
        )

    def column(self, split: Split, name: str, rows: np.ndarray) -> torch.Tensor | None:
        """``split.<name>[rows]`` on the device, or None where the split withholds the column."""
        values = getattr(split, name, None)  # a withheld column raises AttributeError on access
        if values is None:
            return None
        picked = torch.from_numpy(values[rows])
        return picked if self.on_cpu else picked.to(self.device)

    def epoch_rows(self, split: Split) -> Iterator[np.ndarray]:
        """Row numbers of each batch of one epoch, as the sampler draws them."""
        size = self.cfg.batch_size
        if self.sampler == "shuffle":
            order = self.rng.permutation(len(split))
            for start in range(0, len(order), size):
                yield order[start : start + size]
            return
        groups = [np.flatnonzero(split.s == g) for g in np.unique(split.s[split.s >= 0])]
        if len(groups) < 2 or size < len(groups):
            raise ConfigError(f"balanced batches need >= 2 groups and batch_size >= groups, got {len(groups)} groups")
        per_group = size // len(groups)
        shuffled = [self.rng.permutation(g) for g in groups]
        # an epoch is as long as the largest group; smaller groups are cycled
        steps = -(-max(len(g) for g in groups) // per_group)
        for step in range(steps):
            yield np.concatenate([np.take(g, np.arange(step * per_group, (step + 1) * per_group), mode="wrap")
                                  for g in shuffled])

    # -- one step --------------------------------------------------------------------------
    def step(self, batch: Batch) -> float:
        """One optimizer step on ``batch``; returns the loss. Override for other update rules."""
        loss = self.loss_fn(self.model, batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.count(len(batch), forward=1, backward=1)
        return loss.item()

    def count(self, rows: int, forward: int = 1, backward: int = 1, steps: int = 1) -> None:
        self.cost.forward_rows += forward * rows
        self.cost.backward_rows += backward * rows
        self.cost.steps += steps

    # -- the loop --------------------------------------------------------------------------
    def fit(self, split: Split | None = None) -> list[float]:
        """Train for ``cfg.epochs`` epochs; returns the mean loss of each epoch."""
        split = split if split is not None else self.task.train
        if len(split) == 0:
            raise ConfigError(f"{self.desc}: the training split has no rows")
        self.cost.rows_per_epoch = len(split)
        torch.manual_seed(self.seed)
        history: list[float] = []
        started = time.perf_counter()
        bar = progress_bar(range(self.cfg.epochs), desc=self.desc, unit="epoch", leave=False)
        for epoch in bar:
            self.model.train()
            total, count = 0.0, 0
            for rows in self.epoch_rows(split):
                batch = self.batch(split, rows, train=self.augment)
                total += self.step(batch) * len(batch)
                count += len(batch)
                if self.after_step:
                    self.after_step(self)
            if self.scheduler:
                self.scheduler.step()
            history.append(total / max(count, 1))
            self.cost.epochs += 1
            bar.set_postfix(loss=f"{history[-1]:.4f}")
            if self.on_epoch_end:
                self.on_epoch_end(self, epoch)
            if self.stop:
                break
        self.cost.seconds += time.perf_counter() - started
        self.model.eval()
        return history


class EarlyStopping:
    """An ``on_epoch_end`` hook that watches one validation split.

    After every epoch it records the validation loss and accuracy, keeps a copy of the
    weights of the epoch with the lowest loss, and, with ``patience`` > 0, stops training
    once ``patience`` epochs in a row have not lowered that loss by more than ``min_delta``.
    :meth:`restore` puts the best weights back. With ``patience`` = 0 it only records.
    """

    def __init__(self, val: Split, patience: int = 0, min_delta: float = 0.0, batch_size: int = 512):
        self.val = val
        self.patience = patience
        self.min_delta = min_delta
        self.batch_size = batch_size
        self.val_loss: list[float] = []
        self.val_accuracy: list[float] = []
        self.best_epoch = -1
        self.best_state: dict[str, torch.Tensor] | None = None
        self.stopped_early = False

    @torch.no_grad()
    def __call__(self, trainer: "Trainer", epoch: int) -> None:
        trainer.model.eval()
        total, correct = 0.0, 0
        for start in range(0, len(self.val), self.batch_size):
            rows = np.arange(start, min(start + self.batch_size, len(self.val)))
            batch = trainer.batch(self.val, rows, train=False)
            logits = trainer.model(batch.x)
            total += float(nn.functional.cross_entropy(logits, batch.y, reduction="sum"))
            correct += int((logits.argmax(1) == batch.y).sum())
        loss, n = total / max(len(self.val), 1), max(len(self.val), 1)
        self.val_loss.append(loss)
        self.val_accuracy.append(correct / n)
        if self.best_epoch < 0 or loss < self.val_loss[self.best_epoch] - self.min_delta:
            self.best_epoch = epoch
            self.best_state = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
        elif self.patience and epoch - self.best_epoch >= self.patience:
            self.stopped_early = True
            trainer.stop = True

    def restore(self, model: nn.Module) -> None:
        if self.best_state is not None:
            model.load_state_dict(self.best_state)

    def record(self, train_loss: list[float]) -> dict:
        """What the training did, as stored with the dense reference."""
        return {"epochs_used": len(self.val_loss), "best_epoch": self.best_epoch + 1,
                "stopped_early": self.stopped_early, "train_loss": train_loss,
                "val_loss": self.val_loss, "val_accuracy": self.val_accuracy}


def train_model(
    model: nn.Module,
    task: TaskData | TaskView,
    cfg: TrainConfig,
    device: torch.device,
    seed: int,
    split: Split | None = None,
    desc: str = "train",
) -> list[float]:
    """Plain supervised training of ``model`` in place for ``cfg.epochs``; epoch losses."""
    return Trainer(model, task, cfg, device, seed, desc=desc).fit(split)


def train_reference(model: nn.Module, task: TaskData, cfg: TrainConfig, device: torch.device, seed: int,
                    desc: str = "train") -> dict:
    """Train the dense reference on ``task.train``, watching ``task.val`` (early stopping
    when ``cfg.patience`` > 0), and leave the best validation epoch's weights in ``model``.
    Returns the training record (:meth:`EarlyStopping.record`)."""
    monitor = EarlyStopping(task.val, cfg.patience, cfg.min_delta)
    history = Trainer(model, task, cfg, device, seed, on_epoch_end=monitor, desc=desc).fit()
    if cfg.patience:  # a fixed protocol (patience 0) keeps its last epoch
        monitor.restore(model)
    model.eval()
    return {**monitor.record(history), "restored": bool(cfg.patience)}
