"""The pruning family: magnitude pruning and FairPrune, unstructured and structured.

One procedure (:mod:`.toolbox.pruning`) with two scores (:mod:`.toolbox.scores`):

- ``magnitude_prune``: remove the weights with the smallest ``|θ|`` (fairness-unaware twin);
- ``fairprune`` (Wu et al., MICCAI 2022, as FairLRF describes its baseline, docs/methods.md
  §2.5): remove the weights with the smallest saliency ``½θ²(h⁰ − β·h¹)``, where ``h^c`` is
  the diagonal curvature of the CE loss on the balanced scoring set of group ``c``
  (``c = 0``: the unprivileged group). No retraining.

Targets are every conv and linear weight ("the weights of the entire model"); biases are
never scored or pruned. Where the paper is silent the choice is a parameter: ``scope``
(per-layer ranking by default, ``"global"`` as both public reimplementations do) and
``steps`` (one-shot by default; with more steps each step re-scores the pruned model).
The defaults are FairLRF Table 2's FairPrune row (Fitzpatrick-17k: p = 35 %, β = 1/3);
Table 1 (CelebA) uses p = 55 %, β = 3/7.

Footprint: unstructured zeros are stored dense (the papers count FairPrune as compression
ratio 1.000); the footprint's ``sparsity`` and ``csr_bytes`` say what a sparse format saves.

The ``*_structured`` variants go **beyond the paper**: the score of an output channel (conv
filter, or linear output neuron) is the sum of its entries' scores, the fraction ``ratio``
of each layer's channels with the smallest sums is removed physically (Torch-Pruning), and
the smaller model really is cheaper to store and run. The logits layer and channels tied
across a residual sum are left alone.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from fairsqueeze.core.errors import ConfigError

from .base import Cost, Method, MethodContext, Outcome, TaskInfo, checked_beta, parse_beta, register_method, two_groups
from .toolbox.curvature import ESTIMATORS, prunable_weights
from .toolbox.pruning import SCOPES, PruningResult, filter_layers, prune_filters, prune_weights
from .toolbox.scores import GroupSaliency, Magnitude, scoring_groups


class Pruning(Method):
    """Shared procedure; subclasses choose the score (:meth:`score`) and the unit (``structured``)."""

    family = "pruning"
    structured = False

    def validate(self) -> None:
        p, name = self.params, self.registered_name
        if not 0 <= p.ratio < 1:  # also rejects NaN
            raise ConfigError(f"{name}: ratio must lie in [0, 1)")
        if p.steps < 1:
            raise ConfigError(f"{name}: steps must be >= 1")
        if p.scope not in SCOPES:
            raise ConfigError(f"{name}: scope must be one of {', '.join(SCOPES)}, got {p.scope!r}")
        if self.structured and p.scope != "layer":
            raise ConfigError(f"{name}: structured pruning ranks channels per layer only (scope: layer)")

    def space(self, trial):
        return {"ratio": trial.suggest_float("ratio", 0.05, 0.9)}

    def apply(self, ctx: MethodContext) -> Outcome:
        self.validate()
        p = self.params
        ctx.model.eval()
        score, facts = self.score(ctx)
        if self.structured:
            example = ctx.task.prepare(ctx.task.train.x[:2], False).to(ctx.device)
            layers = filter_layers(ctx.model, example)
            if not layers:
                raise ConfigError(f"{self.registered_name}: the model has no layer whose channels can be removed")
            result = prune_filters(ctx.model, score, layers, p.ratio, example, steps=p.steps)
        else:
            result = prune_weights(ctx.model, score, prunable_weights(ctx.model), p.ratio, scope=p.scope, steps=p.steps)
        info = {**facts, **result.info, **_summary(result)}
        if not any(r.any() for r in result.removed.values()):
            info["no_op"] = f"ratio {p.ratio} removes no unit of any layer"
        return Outcome(model=ctx.model, cost=Cost(result.passes), info=info)

    def score(self, ctx: MethodContext):
        """(score object, facts for the run's info)."""
        return Magnitude(), {"score": "magnitude"}


def _summary(result: PruningResult) -> dict:
    units = {n: len(r) for n, r in result.removed.items()}
    gone = {n: int(r.sum()) for n, r in result.removed.items()}
    return {
        "removed_fraction": sum(gone.values()) / max(1, sum(units.values())),
        "layers": {n: {"units": units[n], "removed": gone[n]} for n in units},
        "steps": result.steps,
    }


@dataclass
class _PruneParams:
    ratio: float = 0.35  # fraction of each target's units removed (FairLRF Table 2)
    scope: str = "layer"  # "layer" or "global" ranking
    steps: int = 1  # 1: one-shot; n: n equal cumulative steps, re-scored each time


@register_method("magnitude_prune")
class MagnitudePrune(Pruning):
    """Unstructured magnitude pruning of every conv and linear weight: FairPrune's fairness-unaware twin."""

    Params = _PruneParams


@register_method("magnitude_prune_structured")
class MagnitudePruneStructured(MagnitudePrune):
    """Magnitude filter pruning (L1 norm of each output channel), physically removed. Beyond the paper."""

    structured = True


@register_method("fairprune")
class FairPrune(Pruning):
    """FairPrune: prune the weights the unprivileged group needs least relative to the privileged one."""

    @dataclass
    class Params(_PruneParams):
        beta: float | str = "1/3"  # FairLRF Table 2 (Fitzpatrick); Table 1 (CelebA): 3/7
        unprivileged_group: int | None = None  # None: the group the dense model does worse on (val)
        scoring_size: int | None = None  # rows per group (None: the smaller group's size)
        estimator: str = "ggn_exact"
        batch_size: int = 64

    def validate(self) -> None:
        super().validate()
        p, name = self.params, self.registered_name
        checked_beta(name, p.beta)
        if p.estimator not in ESTIMATORS:
            raise ConfigError(f"{name}: unknown estimator {p.estimator!r} (known: {', '.join(ESTIMATORS)})")
        if p.scoring_size is not None and p.scoring_size < 1:
            raise ConfigError(f"{name}: scoring_size must be >= 1 (or null for the smaller group's size)")
        if p.batch_size < 1:
            raise ConfigError(f"{name}: batch_size must be >= 1")

    def supports(self, task: TaskInfo) -> str | None:
        return two_groups(task, unprivileged_group=self.params.unprivileged_group)

    def space(self, trial):
        return {**super().space(trial), "beta": trial.suggest_float("beta", 0.0, 1.0)}

    def score(self, ctx: MethodContext):
        p = self.params
        sets, unprivileged = scoring_groups(ctx, p.scoring_size, p.unprivileged_group, self.registered_name)
        data = {c: ctx.labelled_batches(rows, p.batch_size) for c, rows in sets.items()}
        generator = torch.Generator().manual_seed(ctx.seed)
        score = GroupSaliency(data, parse_beta(p.beta), p.estimator, generator=generator)
        facts = {
            "score": "group_saliency",
            "unprivileged_group": int(unprivileged),
            "beta": parse_beta(p.beta),
            "scoring_rows_per_group": len(sets[0]),
        }
        return score, facts


@register_method("fairprune_structured")
class FairPruneStructured(FairPrune):
    """FairPrune's saliency summed per output channel; channels physically removed. Beyond the paper."""

    structured = True
