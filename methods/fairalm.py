"""Fair training with an augmented Lagrangian: FairALM and the baselines it is compared with.

FairALM (Lokhande et al., ECCV 2020, Algorithm 2) trains a network under the constraint
that a rate is equal in the two groups s0 and s1. With μ̂^s the batch mean of a smooth
surrogate of that rate in group s (see ``toolbox/group_surrogates.py``) and ê the
cross-entropy of the batch, every batch runs

- ``inner_steps`` primal steps on ê + λ·(μ̂^{s0} − μ̂^{s1}) + η·(μ̂^{s0} + μ̂^{s1})
  (the paper's (λ+η)μ̂^{s0} − (λ−η)μ̂^{s1}), then
- one dual step λ ← λ + η·(μ̂^{s0} − μ̂^{s1}), evaluated at the new weights (one extra
  forward pass without gradients, in eval mode: no dropout, batch-norm statistics untouched).

``dual="reference"`` reproduces the public code instead: two multipliers λ0, λ1, the loss
ê + (η/4 + (λ0 − λ1)/2)·μ̂^{s0} + (η/4 + (λ1 − λ0)/2)·μ̂^{s1}, the μ̂ of the last inner step
(before its update) in the dual step, and its update order, where the second line already
uses the new λ0: λ0 ← ½(λ0 − λ1) + ½η(μ̂0 − μ̂1), then λ1 ← ½(λ1 − λ0) + ½η(μ̂1 − μ̂0).
``eta0`` is η of the chosen variant. The published CelebA number used the code with η₀ = 60,
which weighs μ̂^{s0} + μ̂^{s1} by 60/4 = 15: the default η₀ of Algorithm 2 here.

Constraints (``constraint``), each one multiplier per constrained class:

- ``"deo"`` (default): equal true-positive rates, surrogate of a miss over the rows with
  y = k. Binary targets constrain the positive class only; a multi-class target gets one
  constraint per class (per-class TPR parity, an extension the paper does not cover);
- ``"fpr"``: equal false-positive rates, surrogate of predicting k over the rows with y ≠ k
  (binary: k = 1; multi-class: every k);
- ``"error_rate"``: equal error rates (what the paper calls DP), surrogate of a miss of the
  true class over all rows of the group; one constraint.

A batch that lacks a cell (no row with y = k in one group, say) has no estimate of that
constraint: the constraint is left out of the batch's loss and its multiplier is not
updated; ``info["absent_constraints"]`` counts how often that happened.

``init="scratch"`` (the paper's protocol) re-initialises the copy of the dense model with
the run's seed (PyTorch's default layer initialisation, not the model builder's own) and
trains it; ``init="finetune"`` starts from the dense weights. Both baselines registered
below share the trainer, epochs, optimizer, inner steps and initialisation:
``unconstrained`` (cross-entropy only, the twin to compare with) and ``l2_penalty``
(ê + ½η·Σ(μ̂^{s0} − μ̂^{s1})², the paper's ℓ2 baseline).
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from fairsqueeze.core.errors import ConfigError
from fairsqueeze.engine.training import Batch, Trainer
from fairsqueeze.spec.train import TrainConfig

from .base import Method, MethodContext, Outcome, TaskInfo, register_method, two_groups
from .toolbox.group_surrogates import SURROGATES, cell_means, false_alarm, miss
from .toolbox.reinit import reinitialise

CONSTRAINTS = ("deo", "fpr", "error_rate")
INITS = ("scratch", "finetune")
DUALS = ("alg2", "reference")
GROUPS = (0, 1)  # s0 and s1 of the paper
# FairALM's search space (see FairALM.space): η₀ between these, and lr·η₀ at most MAX_LR_ETA0
MIN_ETA0, MAX_ETA0, MAX_LR_ETA0 = 1e-3, 100.0, 0.2


def constrained_classes(constraint: str, num_classes: int) -> list[int]:
    """The classes that carry one constraint each."""
    if constraint == "error_rate":
        return [0]  # a single constraint over all rows; the index is a placeholder
    return [1] if num_classes == 2 else list(range(num_classes))


def group_rates(logits: torch.Tensor, y: torch.Tensor, s: torch.Tensor, constraint: str, surrogate: str,
                num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """μ̂ of each group and constraint, shape (2, K), and which constraints both groups estimate."""
    classes = constrained_classes(constraint, num_classes)
    if constraint == "error_rate":
        values = miss(logits, surrogate).gather(1, y.unsqueeze(1))  # the true class's miss
        in_cell = torch.ones_like(values, dtype=torch.bool)
    else:
        scores = miss(logits, surrogate) if constraint == "deo" else false_alarm(logits, surrogate)
        values = scores[:, classes]
        is_class = y.unsqueeze(1) == torch.as_tensor(classes, device=y.device)
        in_cell = is_class if constraint == "deo" else ~is_class
    means, present = zip(*(cell_means(values, in_cell & (s == g).unsqueeze(1)) for g in GROUPS))
    return torch.stack(means), present[0] & present[1]


class InnerStepTrainer(Trainer):
    """The shared trainer, taking ``inner_steps`` optimizer steps on each batch (FairALM's primal loop)."""

    def __init__(self, *args, inner_steps: int = 1, **kwargs):
        super().__init__(*args, **kwargs)
        self.inner_steps = inner_steps

    def step(self, batch: Batch) -> float:
        losses = [super(InnerStepTrainer, self).step(batch) for _ in range(self.inner_steps)]
        return float(np.mean(losses))


class GroupObjective(abc.ABC):
    """Cross-entropy plus a group term; keeps the last batch's rates for a dual step."""

    def __init__(self, constraint: str, surrogate: str, num_classes: int, device: torch.device):
        self.constraint, self.surrogate, self.num_classes = constraint, surrogate, num_classes
        self.count = len(constrained_classes(constraint, num_classes))
        self.absent = 0
        self.last: tuple[Batch, torch.Tensor, torch.Tensor] | None = None

    def rates(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits = model(batch.x)
        mu, present = group_rates(logits, batch.y, batch.s, self.constraint, self.surrogate, self.num_classes)
        return logits, mu, present

    def __call__(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        logits, mu, present = self.rates(model, batch)
        self.last = (batch, mu.detach(), present)
        term = self.group_term(mu, present.to(mu.dtype))
        return nn.functional.cross_entropy(logits, batch.y) + term

    @abc.abstractmethod
    def group_term(self, mu: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """The penalty added to the cross-entropy for these group rates."""


class ALMObjective(GroupObjective):
    """FairALM's augmented Lagrangian (Algorithm 2, or the public code's variant)."""

    def __init__(self, constraint, surrogate, num_classes, device, *, eta: float, eta_growth: float, dual: str):
        super().__init__(constraint, surrogate, num_classes, device)
        self.eta, self.eta_growth, self.dual = eta, eta_growth, dual
        self.lam = torch.zeros(2 if dual == "reference" else 1, self.count, device=device)
        if dual == "reference":
            self.eta *= eta_growth  # the code grows η at the start of every epoch, the first included

    def group_term(self, mu, present):
        if self.dual == "reference":
            l0, l1 = self.lam
            weights = torch.stack([self.eta / 4 + (l0 - l1) / 2, self.eta / 4 + (l1 - l0) / 2])
            return (present * (weights * mu).sum(0)).sum()
        lam = self.lam[0]
        return (present * (lam * (mu[0] - mu[1]) + self.eta * (mu[0] + mu[1]))).sum()

    @torch.no_grad()
    def dual_step(self, trainer: Trainer) -> None:
        batch, mu, present = self.last
        if self.dual == "alg2":  # the rates at the weights the primal steps just produced
            # an evaluation, not a training step: no dropout, no batch-norm statistics update
            trainer.model.eval()
            try:
                _, mu, present = self.rates(trainer.model, batch)
            finally:
                trainer.model.train()
            trainer.count(len(batch), forward=1, backward=0, steps=0)
        self.absent += int((~present).sum())
        gap = torch.where(present, mu[0] - mu[1], torch.zeros_like(mu[0]))
        if self.dual == "alg2":
            self.lam[0] += self.eta * gap
            return
        l0, l1 = self.lam
        new_l0 = torch.where(present, (l0 - l1) / 2 + self.eta * gap / 2, l0)
        new_l1 = torch.where(present, (l1 - new_l0) / 2 - self.eta * gap / 2, l1)
        self.lam = torch.stack([new_l0, new_l1])

    def grow(self, trainer: Trainer, epoch: int) -> None:
        self.eta *= self.eta_growth


class L2Objective(GroupObjective):
    """The ℓ2-penalty baseline: ½η·(μ̂^{s0} − μ̂^{s1})² per constraint."""

    def __init__(self, constraint, surrogate, num_classes, device, *, eta: float):
        super().__init__(constraint, surrogate, num_classes, device)
        self.eta = eta

    def group_term(self, mu, present):
        return (present * 0.5 * self.eta * (mu[0] - mu[1]).square()).sum()

    def count_absent(self, trainer: Trainer) -> None:
        self.absent += int((~self.last[2]).sum())


class FairTraining(Method):
    """Shared by FairALM and its baselines: initialisation, the trainer, cost and validation."""

    family = "fair-training"
    conformance_params = {"epochs": 1, "batch_size": 64, "inner_steps": 2}

    @dataclass
    class Params:
        init: str = "scratch"
        epochs: int = 100
        batch_size: int = 256
        lr: float = 0.01
        optimizer: str = "sgd"
        momentum: float = 0.0
        weight_decay: float = 0.0
        inner_steps: int = 5

    def validate(self) -> None:
        p, name = self.params, self.registered_name
        if p.init not in INITS:
            raise ConfigError(f"{name}: init must be one of {', '.join(INITS)}, got {p.init!r}")
        if p.inner_steps < 1 or p.epochs < 1:
            raise ConfigError(f"{name}: epochs and inner_steps must be >= 1")
        for key in ("constraint", "surrogate"):
            known = CONSTRAINTS if key == "constraint" else SURROGATES
            if hasattr(p, key) and getattr(p, key) not in known:
                raise ConfigError(f"{name}: {key} must be one of {', '.join(known)}, got {getattr(p, key)!r}")
        try:
            self.train_config()
        except ConfigError as exc:
            raise ConfigError(f"{name}: {exc}") from None

    def train_config(self) -> TrainConfig:
        p = self.params
        return TrainConfig(epochs=p.epochs, batch_size=p.batch_size, lr=p.lr, optimizer=p.optimizer,
                           momentum=p.momentum, weight_decay=p.weight_decay)

    def objective(self, ctx: MethodContext):
        """(loss, after_step, on_epoch_end) for the trainer; the default is plain cross-entropy."""
        return None, None, None

    def supports(self, task: TaskInfo) -> str | None:
        return two_groups(task, coded_0_1=True)

    def apply(self, ctx: MethodContext) -> Outcome:
        self.validate()
        groups = sorted(int(g) for g in np.unique(ctx.task.train.s) if g >= 0)
        if groups != list(GROUPS):
            raise ConfigError(f"{self.registered_name}: needs two groups coded 0 and 1, the task has {groups}")
        if self.params.init == "scratch":
            reinitialise(ctx.model, ctx.seed)
        loss, after_step, on_epoch_end = self.objective(ctx)
        extra = {"loss": loss} if loss is not None else {}
        trainer = InnerStepTrainer(ctx.model, ctx.task, self.train_config(), ctx.device, ctx.seed,
                                   inner_steps=self.params.inner_steps, after_step=after_step,
                                   on_epoch_end=on_epoch_end, desc=self.registered_name, **extra)
        history = trainer.fit()
        info = {"train_loss": history, "init": self.params.init, **self.facts(loss)}
        return Outcome(model=trainer.model, cost=trainer.cost.as_cost(), info=info)

    def facts(self, objective) -> dict:
        return {}

    def space(self, trial) -> dict[str, Any]:
        return {"lr": trial.suggest_float("lr", 1e-3, 1e-1, log=True)}


@register_method("unconstrained")
class Unconstrained(FairTraining):
    """Cross-entropy training with FairALM's trainer, epochs, optimizer and inner steps: its twin."""


@register_method("l2_penalty")
class L2Penalty(FairTraining):
    """Cross-entropy plus ½η·(μ̂^{s0} − μ̂^{s1})² per constraint: FairALM's ℓ2 baseline."""

    @dataclass
    class Params(FairTraining.Params):
        constraint: str = "deo"
        surrogate: str = "ce"
        eta: float = 0.1  # the paper searches 0.001 ... 1

    def validate(self) -> None:
        super().validate()
        if not self.params.eta >= 0:
            raise ConfigError("l2_penalty: eta must be >= 0")

    def objective(self, ctx):
        p = self.params
        obj = L2Objective(p.constraint, p.surrogate, ctx.task.num_classes, ctx.device, eta=p.eta)
        return obj, obj.count_absent, None

    def facts(self, obj):
        return {"constraint": obj.constraint, "surrogate": obj.surrogate, "constraints": obj.count,
                "absent_constraints": obj.absent}

    def space(self, trial):
        return {**super().space(trial), "eta": trial.suggest_float("eta", 1e-3, 1.0, log=True)}


@register_method("fairalm")
class FairALM(FairTraining):
    """FairALM: augmented-Lagrangian training under a group-rate equality constraint (Alg. 2)."""

    @dataclass
    class Params(FairTraining.Params):
        constraint: str = "deo"
        surrogate: str = "ce"
        eta0: float = 15.0  # η of the chosen dual; the published table: dual "reference", eta0 60
        eta_growth: float = 1.01  # η ← η·growth every epoch
        dual: str = "alg2"  # or "reference": the public code's two multipliers and update order
        # tuning only: the search space keeps lr·η₀ at or below this (see space)
        max_lr_eta0: float = MAX_LR_ETA0

    def validate(self) -> None:
        super().validate()
        p = self.params
        if p.dual not in DUALS:
            raise ConfigError(f"fairalm: dual must be one of {', '.join(DUALS)}, got {p.dual!r}")
        if not (p.eta0 >= 0 and p.eta_growth > 0):
            raise ConfigError("fairalm: eta0 must be >= 0 and eta_growth > 0")
        if not p.max_lr_eta0 > 0.1 * MIN_ETA0:  # above the product at η₀'s floor and lr's ceiling
            raise ConfigError(f"fairalm: max_lr_eta0 must be > {0.1 * MIN_ETA0:g}, got {p.max_lr_eta0!r}")

    def objective(self, ctx):
        p = self.params
        obj = ALMObjective(p.constraint, p.surrogate, ctx.task.num_classes, ctx.device,
                           eta=p.eta0, eta_growth=p.eta_growth, dual=p.dual)
        return obj, obj.dual_step, obj.grow

    def facts(self, obj):
        return {"constraint": obj.constraint, "surrogate": obj.surrogate, "dual": obj.dual,
                "constraints": obj.count, "absent_constraints": obj.absent, "final_eta": obj.eta,
                "multipliers": obj.lam.cpu().tolist()}

    def space(self, trial):
        """The learning rate, η₀ on a log scale from 0.001 to min(100, ``max_lr_eta0`` / lr) and
        1-5 inner steps.

        The penalty's gradient is η₀ (plus |λ|) times a cross-entropy's, so lr·η₀ is the step it
        takes, and that product, not η₀ alone, decides whether training diverges: on adult with
        momentum 0.9, lr·η₀ of 0.9 or more sends the weights to infinity within the first
        batches (lr 0.03 with η₀ 30, or lr 0.1 with η₀ 10), while 0.3 trains. ``max_lr_eta0``
        (0.2) is the paper's largest: lr 0.01 with η₀ 80 in the public code, which weighs by
        η₀/4, i.e. 20 in Algorithm 2. A short fine-tune needs much smaller penalties than the
        paper's 100 epochs from scratch (adult, two epochs: validation accuracy 0.26-0.70 at its
        values against 0.85 dense), so the range reaches down to 0.001."""
        searched = super().space(trial)
        ceiling = min(MAX_ETA0, self.params.max_lr_eta0 / searched["lr"])
        return {**searched, "eta0": trial.suggest_float("eta0", MIN_ETA0, ceiling, log=True),
                "inner_steps": trial.suggest_int("inner_steps", 1, 5)}
