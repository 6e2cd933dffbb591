"""The sparse low-rank family: SLR-w, SLR-a and FairLRF.

All three run one procedure (docs/methods.md §2.2-2.4) on each target linear layer W (out x in):

1. truncated SVD, W ≈ P_out · diag(σ) · P_inᵀ, as a real :class:`FactorizedLinear`
   (``first.weight`` = P_inᵀ, ``second.weight`` = P_out);
2. a score per input neuron (row of P_in) and per output neuron (row of P_out);
3. the ⌊sr·in⌋ input rows and ⌊sr·out⌋ output rows with the smallest score are selected;
4. in each selected row only the first ``keep = max(min_keep, ⌊rr·k⌋)`` entries survive.

``rr`` is the fraction of the rank *kept* in a selected row: that reading reproduces the
published compression ratios (rr = 0 zeroes whole rows). The zeroed entries are stored
sparse, so the footprint counts them as removed. Nothing is fine-tuned.

The scores:
- SLR-w: absolute weight sums of the dense W (column sums for inputs, row sums for outputs);
- SLR-a: absolute activations summed over training data, the layer's input for P_in rows
  and its output (after the following ReLU, when there is one) for P_out rows;
- FairLRF: the group-aware curvature score s = ½θ²(h⁰ − β·h¹) of every factor entry, with
  h^c the diagonal loss curvature on the balanced scoring set of group c (c = 0: the
  unprivileged group); a row's score sums s over the whole row (``row_score="full"``, the
  paper's wording) or over the entries that would be zeroed (``"tail"``).
"""
from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import torch
from torch import nn

from fairsqueeze.core.errors import ConfigError
from fairsqueeze.models.base import resolve_layer

from .base import Cost, Method, MethodContext, Outcome, TaskInfo, checked_beta, parse_beta, register_method, two_groups
from .svd import check_ranks, target_layers
from .toolbox.curvature import ESTIMATORS, features_before, sequential_tail
from .toolbox.factorize import SOLVERS, FactorizedLinear, replace_module
from .toolbox.scores import HeadSaliency, scoring_groups


@dataclass
class RowScores:
    inputs: torch.Tensor  # (in,)
    outputs: torch.Tensor  # (out,)


def floor_share(rate: float, n: int) -> int:
    """⌊rate·n⌋ computed on the decimal value of ``rate`` (0.29 x 100 is 29, not 28)."""
    return math.floor(Fraction(str(rate)) * n)


def kept_entries(rr: float, k: int, min_keep: int) -> int:
    return min(k, max(min_keep, floor_share(rr, k)))


def smallest_rows(scores: torch.Tensor, rate: float) -> torch.Tensor:
    """Indices of the ⌊rate·n⌋ smallest scores (ties broken by index, deterministically)."""
    count = floor_share(rate, len(scores))
    order = torch.from_numpy(np.argsort(scores.detach().cpu().double().numpy(), kind="stable"))
    return order[:count]


@torch.no_grad()
def sparsify(layer: FactorizedLinear, scores: RowScores, sr: float, keep: int) -> dict[str, int]:
    """Zero the tail (entries >= keep) of the selected rows of both factors."""
    rows_in = smallest_rows(scores.inputs, sr)
    rows_out = smallest_rows(scores.outputs, sr)
    layer.first.weight[keep:, rows_in] = 0  # columns of P_inᵀ are input-neuron rows
    layer.second.weight[rows_out, keep:] = 0
    return {"rows_in": len(rows_in), "rows_out": len(rows_out), "keep": keep}


class SparseLowRank(Method):
    """Shared procedure; subclasses define :meth:`row_scores`."""

    family = "low-rank"
    conformance_params = {"k": 8}

    def validate(self) -> None:
        p = self.params
        name = self.registered_name
        if p.k < 1:
            raise ConfigError(f"{name}: k must be >= 1")
        if not (0 <= p.sparsity_rate <= 1 and 0 <= p.keep_rate <= 1):  # also rejects NaN
            raise ConfigError(f"{name}: sparsity_rate and keep_rate must lie in [0, 1]")
        if p.min_keep < 0:
            raise ConfigError(f"{name}: min_keep must be >= 0")
        if p.solver not in SOLVERS:
            raise ConfigError(f"{name}: unknown solver {p.solver!r} (known: {', '.join(SOLVERS)})")

    def check_model(self, model: nn.Module) -> None:
        check_ranks(model, self.params.layer, self.params.k)

    def apply(self, ctx: MethodContext) -> Outcome:
        self.validate()
        p = self.params
        sparse, info, passes = [], {}, {}
        # every layer is scored on the dense model first, so the result does not depend on
        # the order in which several layers are listed
        plans = []
        for path, linear in target_layers(ctx.model, p.layer):
            factorized = FactorizedLinear.from_linear(linear, p.k, p.solver)
            keep = kept_entries(p.keep_rate, factorized.rank, p.min_keep)
            scores, cost, facts = self.row_scores(ctx, path, linear, factorized, keep)
            plans.append((path, factorized, scores, keep, facts))
            for key, value in cost.items():
                passes[key] = passes.get(key, 0.0) + value
        for path, factorized, scores, keep, facts in plans:
            replace_module(ctx.model, path, factorized)
            info[path] = {**sparsify(factorized, scores, p.sparsity_rate, keep), **facts}
            sparse += [f"{path}.first.weight", f"{path}.second.weight"]
        out = {"layers": info}
        unprivileged = {facts.get("unprivileged_group") for *_, facts in plans} - {None}
        if unprivileged:
            out["unprivileged_group"] = unprivileged.pop()
        if no_op := self.no_op_reason(plans):
            out["no_op"] = no_op
        return Outcome(model=ctx.model, sparse_storage=tuple(sparse), cost=Cost(passes), info=out)

    def no_op_reason(self, plans) -> str | None:
        """Why the sparsification zeroes nothing (the result then equals truncated SVD), or None."""
        p = self.params
        for path, factorized, _, keep, _ in plans:
            if keep < factorized.rank and (floor_share(p.sparsity_rate, factorized.in_features)
                                           or floor_share(p.sparsity_rate, factorized.out_features)):
                return None
        return (f"nothing is zeroed (sparsity_rate {p.sparsity_rate}, kept entries per row >= k): "
                "the result equals truncated SVD")

    def space(self, trial):
        """Around the papers' settings: the rank from 1 up to the entry's ``k`` (log scale), the
        sparsity rate sr in [0, 0.9] and the kept fraction rr in [0, 1], both in steps of 0.05
        (the papers use sr 0.4-0.8, rr 0-0.65, and see collapse beyond sr ≈ 0.6); every other
        param stays as the entry gives it."""
        return {"k": trial.suggest_int("k", 1, self.params.k, log=True),
                "sparsity_rate": round(trial.suggest_float("sparsity_rate", 0.0, 0.9, step=0.05), 2),
                "keep_rate": round(trial.suggest_float("keep_rate", 0.0, 1.0, step=0.05), 2)}

    @abc.abstractmethod
    def row_scores(self, ctx, path, linear, factorized, keep) -> tuple[RowScores, dict, dict]:
        """(scores, pass counts, facts to report) for one target layer of the dense model."""


@register_method("slr_w")
class SLRWeight(SparseLowRank):
    """Sparse low-rank with absolute-weight neuron importance (Swaminathan et al. 2020)."""

    @dataclass
    class Params:
        k: int = 64
        sparsity_rate: float = 0.5
        keep_rate: float = 0.5
        min_keep: int = 0
        layer: str = "fc2"
        solver: str = "exact"

    def row_scores(self, ctx, path, linear, factorized, keep):
        w = linear.weight.detach().abs()
        return RowScores(inputs=w.sum(0), outputs=w.sum(1)), {}, {}


@register_method("slr_a")
class SLRActivation(SparseLowRank):
    """Sparse low-rank with absolute-activation neuron importance on training data."""

    @dataclass
    class Params(SLRWeight.Params):
        samples: int | None = 10000  # training rows scored (None: all), eval-time transforms

    def validate(self) -> None:
        super().validate()
        if self.params.samples is not None and self.params.samples < 1:
            raise ConfigError("slr_a: samples must be >= 1 (or null for all training rows)")

    @torch.no_grad()
    def row_scores(self, ctx, path, linear, factorized, keep):
        train = ctx.task.train
        rows = np.arange(len(train))
        if self.params.samples is not None and self.params.samples < len(rows):
            rows = np.sort(np.random.default_rng(ctx.seed).choice(rows, self.params.samples, replace=False))
        relu_after = _followed_by_relu(ctx.model, path)
        sums = {"in": torch.zeros(linear.in_features), "out": torch.zeros(linear.out_features)}

        def hook(_module, args, output):
            out = torch.relu(output) if relu_after else output
            # token axes (sequence models) are summed like samples
            sums["in"] += args[0].detach().abs().reshape(-1, linear.in_features).sum(0).cpu()
            sums["out"] += out.detach().abs().reshape(-1, linear.out_features).sum(0).cpu()

        handle = linear.register_forward_hook(hook)
        ctx.model.eval()
        try:
            for x, _, _ in ctx.batches(train.subset(rows)):
                ctx.model(x)
        finally:
            handle.remove()
        return RowScores(inputs=sums["in"], outputs=sums["out"]), {"forward": 1.0}, {"activation_rows": len(rows)}


def _followed_by_relu(model: nn.Module, path: str) -> bool:
    parent_path, _, child = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    names = [n for n, _ in parent.named_children()]
    if not isinstance(parent, nn.Sequential) or child not in names:
        return False
    following = list(parent.children())[names.index(child) + 1 :]
    following = [m for m in following if not isinstance(m, nn.Dropout)]
    return bool(following) and isinstance(following[0], nn.ReLU)


@register_method("fairlrf")
class FairLRF(SparseLowRank):
    """Fairness-oriented sparse SVD: drop the factor rows the unprivileged group needs least."""

    @dataclass
    class Params:
        k: int = 64
        sparsity_rate: float = 0.4
        keep_rate: float = 0.0
        beta: float | str = "5/9"
        min_keep: int = 0
        layer: str = "fc2"
        solver: str = "exact"
        row_score: str = "full"  # "full" row or only the "tail" that would be zeroed
        unprivileged_group: int | None = None  # None: the group the dense model does worse on (val)
        scoring_size: int | None = None  # rows per group (None: the smaller group's size)
        estimator: str = "ggn_exact"
        batch_size: int = 128

    def validate(self) -> None:
        super().validate()
        p = self.params
        checked_beta("fairlrf", p.beta)
        if p.row_score not in ("full", "tail"):
            raise ConfigError(f"fairlrf: row_score must be 'full' or 'tail', got {p.row_score!r}")
        if p.scoring_size is not None and p.scoring_size < 1:
            raise ConfigError("fairlrf: scoring_size must be >= 1 (or null for the smaller group's size)")
        if p.batch_size < 1:
            raise ConfigError("fairlrf: batch_size must be >= 1")
        if p.estimator not in ESTIMATORS:
            raise ConfigError(f"fairlrf: unknown estimator {p.estimator!r} (known: {', '.join(ESTIMATORS)})")

    def supports(self, task: TaskInfo) -> str | None:
        return two_groups(task, unprivileged_group=self.params.unprivileged_group)

    def space(self, trial):
        """The shared low-rank space plus β in [0, 1] (the paper's 5/9 lies inside; β weighs how
        much the privileged group's curvature counts against the unprivileged one's)."""
        return {**super().space(trial), "beta": round(trial.suggest_float("beta", 0.0, 1.0), 4)}

    def row_scores(self, ctx, path, linear, factorized, keep):
        p = self.params
        sets, unprivileged = scoring_groups(ctx, p.scoring_size, p.unprivileged_group, "fairlrf")

        head, original = curvature_head(ctx.model, path, factorized)
        try:
            check_head(ctx, path, head, sets[0])
            features = {}
            for c, rows in sets.items():
                # inputs are prepared chunk by chunk: only the (small) layer inputs are kept
                feats = [
                    features_before(ctx.model, path, ctx.task.prepare(rows.x[i : i + 512], False))
                    for i in range(0, len(rows), 512)
                ]
                features[c] = (torch.cat(feats), torch.as_tensor(rows.y))
            by_identity = {id(param): n for n, param in head.named_parameters()}
            names = {"in": by_identity[id(factorized.first.weight)], "out": by_identity[id(factorized.second.weight)]}
            score = HeadSaliency(features, parse_beta(p.beta), p.estimator, batch_size=p.batch_size,
                                 generator=ctx.seed)
            scored = score(head, list(names.values()))
        finally:
            head_parent, name = original
            setattr(head_parent, name, linear)  # the head borrowed the model's container
        scores = {key: scored.values[name] for key, name in names.items()}
        # input-neuron rows are columns of first.weight (k x in); entries j >= keep form the tail
        tail = slice(keep, None) if p.row_score == "tail" else slice(None)
        inputs = scores["in"][tail, :].sum(0)
        outputs = scores["out"][:, tail].sum(1)
        cost = {**scored.passes, "features_forward": 1.0}
        facts = {"unprivileged_group": unprivileged, "scoring_rows_per_group": len(sets[0]),
                 "backward_sweeps": scored.info["backward_sweeps"]}
        return RowScores(inputs=inputs.cpu(), outputs=outputs.cpu()), cost, facts


@torch.no_grad()
def check_head(ctx: MethodContext, path: str, head: nn.Module, split) -> None:
    x = ctx.task.prepare(split.x[:4], False).to(ctx.device)
    was_training = ctx.model.training
    ctx.model.eval()
    full, tail = ctx.model(x), head(features_before(ctx.model, path, x))
    ctx.model.train(was_training)
    if full.shape != tail.shape or not torch.allclose(full, tail, rtol=1e-4, atol=1e-5):
        raise ConfigError(f"layer {path!r}: the layers after it are not one nn.Sequential ending in the logits")


def curvature_head(model: nn.Module, path: str, factorized: FactorizedLinear):
    """The part of ``model`` from the target layer to the logits, with the factorized layer in place.

    Needs the layer inside the model's last ``nn.Sequential`` (MLP, VGG classifier); checked by
    comparing the head's output with the model's on a few rows (:func:`check_head`).
    """
    parent_path, _, child = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    if not isinstance(parent, nn.Sequential):
        raise ConfigError(f"layer {path!r}: curvature scoring needs the layer inside an nn.Sequential")
    original = getattr(parent, child)
    setattr(parent, child, factorized)
    return sequential_tail(parent, child), (parent, child)
