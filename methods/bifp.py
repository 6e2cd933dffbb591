"""BiFP: bi-level fair pruning (Dai et al., arXiv 2312.10181), on the shared trainer.

The mask is the upper level and the weights the lower level of one bi-level problem, and a
relaxed accuracy-gap penalty enters both. Each training batch is split in two halves A and B
(alternate rows) and runs

1. a lower step on A: one optimizer step on the weights for L + λ_f·P(F̂), the mask fixed;
2. an upper step on B: the gradient of L + λ_f·P(F̂) with respect to the mask scores (the
   forward pass uses the binary top-k mask, the gradient goes straight through to the
   scores; ``toolbox/score_masks.py``) plus the Hessian-free implicit-gradient term of BiP's
   public code, −κ·g_s ⊙ g_s with g_s that score gradient (BiP multiplies two gradients
   taken at the same point, which for a score are equal); one optimizer step on the scores.
   At the default κ = 1e-4 the term is about 1e-5 of the score gradient and does not change
   the masks (see the README); a large κ does.

L is the cross-entropy. F̂ is the relaxed accuracy gap: the mean soft accuracy of group 1
minus that of group 0, i.e. the paper's importance-weighted F̂_A with the batch's group
frequencies as P̂(S) and the sign of group 0 flipped as its derivation needs. The paper
leaves the surrogate u unspecified; here it is softmax(z / T)_y, the tempered probability
of the true class (σ(margin / T) for two classes). ``temperature`` T defaults to 0.3: with
T = 1 the soft gap can be closed by making the better group's predictions less confident
without changing one of them (seen on the planted task of the tests), a sharper u ties it
to the accuracy gap. The signed F̂ is unbounded below, so the penalty P is ``"abs"`` |F̂|
(default), ``"square"`` F̂² or ``"hinge"`` max(0, |F̂| − τ); the run's info names it. A
batch half without rows of one group has no gap estimate and no penalty.
``fair_levels`` keeps the penalty at both levels (default) or at one, for the paper's
ablations.

Differences from the paper, on purpose:

- the paper prunes and fine-tunes on the validation split; here BiFP trains on the training
  split, because validation selects hyperparameters and must stay unseen by training;
- unspecified choices follow BiP's public code: scores start at the weight magnitudes,
  κ = 1e-4, weights and scores both by SGD (momentum 0.9, rate 0.1); the learning rates
  stay constant (BiP decays them with cosine and step schedules).

``sparsity`` is the fraction pruned in every prunable conv and linear layer: ⌊sparsity·n⌋ of
its n filters or neurons (``structured``, the paper's filter pruning) or of its n weights
(unstructured); ``schedule="lth"`` raises it over the epochs as the lottery-ticket levels
1 − 0.8ⁿ (epoch e uses 1 − 0.8^(e+1)), capped at the target, which the last epoch always
uses. The classifier (last linear layer) stays dense unless
``prune_classifier``. The returned model has the masks applied for good: unstructured
zeros stay stored (the FairLRF convention: they save nothing without a sparse format; the
footprint's nonzeros show them), a structured mask removes the pruned filters and neurons
physically (Torch-Pruning, ``toolbox/masks.py``), so the footprint and the latency show it.
A unit mask is exactly the removal when no normalisation layer follows the layer (MLPs, VGG
without batch norm); the engine evaluates the model after removal in any case. Residual networks
couple the outputs of several convs, which the removal refuses.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from fairsqueeze.core.errors import ConfigError
from fairsqueeze.engine.training import Batch, Trainer
from fairsqueeze.spec.train import TrainConfig

from .base import Method, MethodContext, Outcome, TaskInfo, register_method, two_groups
from .toolbox.group_surrogates import cell_means, soft_accuracy
from .toolbox.masks import apply_masks, finalize_masks, remove_filters
from .toolbox.score_masks import MASKABLE, ScoreMasks

PENALTIES = ("abs", "square", "hinge")
SCHEDULES = ("fixed", "lth")
LEVELS = ("both", "mask", "weights", "none")


def lth_sparsity(rounds: int) -> float:
    """The lottery-ticket sparsity after ``rounds`` rounds of pruning 20 %: 1 − 0.8ⁿ."""
    return 1 - 0.8 ** rounds


def accuracy_gap(logits: torch.Tensor, y: torch.Tensor, s: torch.Tensor,
                 temperature: float = 1.0) -> tuple[torch.Tensor, bool]:
    """F̂: soft accuracy of group 1 minus group 0, and whether both groups are in the batch."""
    acc = soft_accuracy(logits / temperature, y).unsqueeze(1)
    member = torch.stack([s == 0, s == 1], 1)
    means, present = cell_means(acc.expand(-1, 2), member)
    return means[1] - means[0], bool(present.all())


def penalty(gap: torch.Tensor, kind: str, tolerance: float) -> torch.Tensor:
    if kind == "abs":
        return gap.abs()
    if kind == "square":
        return gap.square()
    return torch.relu(gap.abs() - tolerance)


def halves(batch: Batch) -> tuple[Batch, Batch]:
    """Alternate rows: the lower-level half A and the upper-level half B of one batch."""
    def take(part):
        return Batch(batch.x[part], batch.y[part], batch.s[part], batch.rows[part])
    return take(slice(0, None, 2)), take(slice(1, None, 2))


def prunable_layers(model: nn.Module, prune_classifier: bool) -> list[str]:
    """Every conv and linear layer, except the classifier (the last linear layer) by default."""
    paths = [name for name, module in model.named_modules() if isinstance(module, MASKABLE)]
    linear = [name for name in paths if isinstance(model.get_submodule(name), nn.Linear)]
    if linear and not prune_classifier:
        paths.remove(linear[-1])
    return paths


class BilevelTrainer(Trainer):
    """The shared trainer with BiFP's step: a weight step on one half, a score step on the other."""

    def __init__(self, model, task, cfg, device, seed, *, masks: ScoreMasks, objective, mask_lr: float,
                 kappa: float, **kwargs):
        super().__init__(model, task, cfg, device, seed, parameters=masks.weights(), **kwargs)
        self.masks, self.objective, self.kappa = masks, objective, kappa
        self.mask_optimizer = torch.optim.SGD(masks.scores(), lr=mask_lr, momentum=cfg.momentum)

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.mask_optimizer.zero_grad(set_to_none=True)

    def step(self, batch: Batch) -> float:
        lower, upper = halves(batch)
        loss = self.objective(self.model, lower, "weights")
        self.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.count(len(lower))
        if len(upper) == 0:
            return float(loss.detach())
        self.zero_grad()
        self.objective(self.model, upper, "mask").backward()
        self.add_implicit_gradient()
        self.mask_optimizer.step()
        self.count(len(upper), steps=1)
        return float(loss.detach())

    @torch.no_grad()
    def add_implicit_gradient(self) -> None:
        """BiP's Hessian-free implicit-gradient term, −κ·g_s ⊙ g_s′ on every score.

        BiP takes the loss gradient of every parameter twice at the same point on the same
        rows (once with weights and scores trainable, once with the scores only) and adds
        −κ times their elementwise product to the score gradients. For a score the two are
        the same straight-through gradient g_s, so the term is −κ·g_s²: no weight factor and
        no sign (the score gradient already carries the chain rule through |scores|).
        """
        for _, score_mask in self.masks.layers.values():
            grad = score_mask.scores.grad
            if grad is not None:
                grad.sub_(self.kappa * grad * grad)

class FairObjective:
    """Cross-entropy plus λ_f·P(F̂) at the levels that carry the penalty; counts skipped halves."""

    def __init__(self, weight: float, kind: str, tolerance: float, levels: str, temperature: float = 1.0):
        self.weight, self.kind, self.tolerance, self.levels = weight, kind, tolerance, levels
        self.temperature = temperature
        self.without_gap = 0

    def __call__(self, model: nn.Module, batch: Batch, level: str) -> torch.Tensor:
        logits = model(batch.x)
        loss = nn.functional.cross_entropy(logits, batch.y)
        if self.weight == 0 or self.levels not in ("both", level):
            return loss
        gap, present = accuracy_gap(logits, batch.y, batch.s, self.temperature)
        if not present:
            self.without_gap += 1
            return loss
        return loss + self.weight * penalty(gap, self.kind, self.tolerance)


@register_method("bifp")
class BiFP(Method):
    """Bi-level fair pruning: mask scores and weights trained jointly under an accuracy-gap penalty."""

    family = "pruning"
    conformance_params = {"sparsity": 0.5, "epochs": 1, "batch_size": 64, "lr": 0.05}

    @dataclass
    class Params:
        sparsity: float = 0.672  # 1 − 0.8⁵, one of the paper's lottery-ticket levels
        structured: bool = True  # filters / neurons (the paper's main setting); False: weights
        schedule: str = "fixed"  # or "lth": 1 − 0.8^(epoch+1) up to the target
        penalty: str = "abs"
        tolerance: float = 0.0  # τ of the hinge penalty
        fairness_weight: float = 1.0  # λ_f; 0 switches the penalty off
        fair_levels: str = "both"
        temperature: float = 0.3  # T of the soft accuracy softmax(z / T)_y (docs/methods.md §2.8)
        epochs: int = 100
        batch_size: int = 128  # split into two halves: weights on one, scores on the other
        lr: float = 0.1
        mask_lr: float = 0.1
        momentum: float = 0.9
        weight_decay: float = 1e-4
        kappa: float = 1e-4  # step of BiP's implicit-gradient approximation
        prune_classifier: bool = False

    def validate(self) -> None:
        p = self.params
        if not 0 <= p.sparsity < 1:
            raise ConfigError("bifp: sparsity must lie in [0, 1)")
        for key, known in (("penalty", PENALTIES), ("schedule", SCHEDULES), ("fair_levels", LEVELS)):
            if getattr(p, key) not in known:
                raise ConfigError(f"bifp: {key} must be one of {', '.join(known)}, got {getattr(p, key)!r}")
        if not (p.tolerance >= 0 and p.fairness_weight >= 0 and p.kappa >= 0 and p.mask_lr > 0 and p.temperature > 0):
            raise ConfigError("bifp: tolerance, fairness_weight and kappa must be >= 0, mask_lr and temperature > 0")
        if p.structured and p.prune_classifier:
            raise ConfigError("bifp: a structured mask on the classifier would remove classes")
        if p.epochs < 1 or p.batch_size < 2:
            raise ConfigError("bifp: epochs must be >= 1 and batch_size >= 2 (it is split in two halves)")
        self.train_config()

    def train_config(self) -> TrainConfig:
        p = self.params
        try:
            return TrainConfig(epochs=p.epochs, batch_size=p.batch_size, lr=p.lr, optimizer="sgd",
                               momentum=p.momentum, weight_decay=p.weight_decay)
        except ConfigError as exc:
            raise ConfigError(f"bifp: {exc}") from None

    def sparsity_at(self, epoch: int) -> float:
        p = self.params
        if p.schedule == "fixed" or epoch >= p.epochs - 1:
            return p.sparsity
        return min(p.sparsity, lth_sparsity(epoch + 1))

    def supports(self, task: TaskInfo) -> str | None:
        return two_groups(task, coded_0_1=True)

    def apply(self, ctx: MethodContext) -> Outcome:
        self.validate()
        p = self.params
        groups = sorted(int(g) for g in np.unique(ctx.task.train.s) if g >= 0)
        if groups != [0, 1]:
            raise ConfigError(f"bifp: needs two groups coded 0 and 1, the task has {groups}")
        model = ctx.model.to(ctx.device)
        paths = prunable_layers(model, p.prune_classifier)
        if not paths:
            raise ConfigError("bifp: the model has no prunable layer")
        masks = ScoreMasks(model, paths, self.sparsity_at(0), p.structured)
        objective = FairObjective(p.fairness_weight, p.penalty, p.tolerance, p.fair_levels, p.temperature)
        trainer = BilevelTrainer(model, ctx.task, self.train_config(), ctx.device, ctx.seed, masks=masks,
                                 objective=objective, mask_lr=p.mask_lr, kappa=p.kappa, desc="bifp",
                                 on_epoch_end=lambda t, epoch: masks.set_sparsity(self.sparsity_at(epoch + 1)))
        history = trainer.fit()
        final = masks.masks()
        masks.remove()
        model, facts = self.finalize(ctx, model, final)
        info = {"penalty": p.penalty if p.fairness_weight > 0 and p.fair_levels != "none" else "none",
                "fairness_weight": p.fairness_weight, "fair_levels": p.fair_levels,
                "structured": p.structured, "sparsity": p.sparsity, "train_loss": history,
                "halves_without_gap": objective.without_gap, **facts}
        return Outcome(model=model, cost=trainer.cost.as_cost(), info=info)

    def finalize(self, ctx: MethodContext, model: nn.Module, masks: dict[str, torch.Tensor]):
        """Apply the final masks for good (structured: remove the filters); facts to report."""
        kept = sum(int(m.sum()) for m in masks.values())
        total = sum(m.numel() for m in masks.values())
        facts = {"layers": len(masks), "achieved_sparsity": 1 - kept / total}
        if self.params.structured and masks:
            example = ctx.task.prepare(ctx.task.train.x[:2], False).to(ctx.device)
            model.eval()
            remove_filters(model, example, masks)
            facts["filters_kept"] = {path: int(m.sum()) for path, m in masks.items()}
        else:
            finalize_masks(apply_masks(model, {f"{path}.weight": m for path, m in masks.items()}))
        return model, facts

    def space(self, trial) -> dict[str, Any]:
        return {"fairness_weight": trial.suggest_float("fairness_weight", 0.1, 10.0, log=True),
                "penalty": trial.suggest_categorical("penalty", list(PENALTIES)),
                "lr": trial.suggest_float("lr", 1e-3, 1e-1, log=True),
                "mask_lr": trial.suggest_float("mask_lr", 1e-3, 1e-1, log=True)}
