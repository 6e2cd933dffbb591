"""One pruning procedure with pluggable scores: remove the units with the smallest scores.

A *unit* is one weight entry (unstructured) or one output channel of a conv / output neuron
of a linear layer (structured: its score is the sum of its entries' scores). Only the
parameters named as targets are scored; biases never are, and every score, mask and index
is kept per parameter name, so nothing can shift when biases are left out.

Ranking: per layer (``scope="layer"``: each target loses the same fraction) or global (one
ranking over all targets' units together; unstructured only). Schedule: ``steps`` equal
increments of the cumulative target ``ratio·n/steps``; every step re-scores the currently
pruned model and picks new units among the surviving ones (pruned units are excluded, not
re-ranked with a score of 0). ``steps=1`` is one-shot.

Unstructured pruning zeroes weights through real masks (:mod:`.masks`), baked into plain
zeros after each step; structured pruning physically removes channels (Torch-Pruning), so
the model really gets smaller and faster.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
import torch
from torch import Tensor, nn

from .masks import apply_masks, finalize_masks, remove_filters
from .scores import Scores

__all__ = ["PruningResult", "filter_layers", "prune_filters", "prune_weights", "select_smallest", "step_target"]

Score = Callable[[nn.Module, Sequence[str]], Scores]
SCOPES = ("layer", "global")


@dataclass
class PruningResult:
    """Which units were removed (True = removed), per target, and what the scoring cost."""

    removed: dict[str, Tensor]
    passes: dict[str, float] = field(default_factory=dict)
    steps: list[dict] = field(default_factory=list)
    info: dict = field(default_factory=dict)


def step_target(ratio: float, step: int, steps: int, units: int) -> int:
    """⌊ratio·step/steps·units⌋, computed on the decimal value of ``ratio`` (0.35·100 = 35)."""
    return math.floor(Fraction(str(ratio)) * step * units / steps)


def _stable_order(values: Tensor) -> Tensor:
    # ties broken by position, the same way on every platform
    return torch.from_numpy(np.argsort(values.detach().cpu().double().numpy(), kind="stable"))


def select_smallest(scores: dict[str, Tensor], removed: dict[str, Tensor], counts: dict[str, int] | int) -> dict[str, Tensor]:
    """The units to remove next: the smallest scores among those not yet removed.

    ``scores`` and ``removed`` hold one 1-D tensor per target. ``counts`` is the number of
    new removals per target (per-layer ranking) or one total (global ranking over all
    targets, concatenated in the mapping's order and split back at the same offsets).
    """
    names = list(scores)
    if isinstance(counts, int):
        flat = torch.cat([scores[n].detach().double().cpu() for n in names])
        dead = torch.cat([removed[n].cpu() for n in names])
        picked = _pick(flat, dead, counts)
        sizes = [len(scores[n]) for n in names]
        return dict(zip(names, picked.split(sizes)))
    return {n: _pick(scores[n].detach().double().cpu(), removed[n].cpu(), counts[n]) for n in names}


def _pick(values: Tensor, dead: Tensor, count: int) -> Tensor:
    alive = int((~dead).sum())
    if not 0 <= count <= alive:
        raise ValueError(f"cannot remove {count} of {alive} remaining units")
    values = values.masked_fill(dead, math.inf)
    chosen = torch.zeros_like(dead)
    chosen[_stable_order(values)[:count]] = True
    return chosen


def prune_weights(
    model: nn.Module, score: Score, names: Sequence[str], ratio: float, *, scope: str = "layer", steps: int = 1
) -> PruningResult:
    """Zero the fraction ``ratio`` of the entries of ``names`` with the smallest scores, in place."""
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    params = {n: model.get_parameter(n) for n in names}
    removed = {n: torch.zeros(p.numel(), dtype=torch.bool) for n, p in params.items()}
    result = PruningResult(removed)
    for step in range(1, steps + 1):
        scored = score(model, list(names))
        flat = {n: scored.values[n].flatten() for n in names}
        if scope == "layer":
            counts = {n: step_target(ratio, step, steps, len(r)) - int(r.sum()) for n, r in removed.items()}
        else:
            total = sum(len(r) for r in removed.values())
            counts = step_target(ratio, step, steps, total) - sum(int(r.sum()) for r in removed.values())
        new = select_smallest(flat, removed, counts)
        for n in names:
            removed[n] |= new[n]
        keep = {n: ~removed[n].view(params[n].shape) for n in names}
        finalize_masks(apply_masks(model, keep))
        _account(result, scored, step, sum(int(r.sum()) for r in removed.values()))
    return result


def filter_layers(model: nn.Module, example_input: Tensor) -> list[str]:
    """Conv and linear layers whose output channels can be removed on their own.

    Excluded: the last conv/linear layer (its outputs are the logits) and layers whose
    outputs are tied to another layer's (both sides of a residual sum).
    """
    import torch_pruning as tp

    layers = [(p, m) for p, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    if not layers:
        return []
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_input)
    candidates = dict(layers[:-1])
    free = []
    for path, module in candidates.items():
        fn = tp.prune_conv_out_channels if isinstance(module, nn.Conv2d) else tp.prune_linear_out_channels
        group = graph.get_pruning_group(module, fn, idxs=[0])
        tied = [d for d, _ in group if d.target.module is not module and graph.is_out_channel_pruning_fn(d.handler)
                and isinstance(d.target.module, (nn.Conv2d, nn.Linear))]
        if not tied:
            free.append(path)
    return free


def prune_filters(
    model: nn.Module, score: Score, layers: Sequence[str], ratio: float, example_input: Tensor, *, steps: int = 1
) -> PruningResult:
    """Remove the fraction ``ratio`` of each layer's output channels with the smallest summed score.

    Channels are removed physically after every step, so the next step scores the smaller
    model. Each layer keeps at least one channel. ``removed`` is indexed by the original
    channel numbers.
    """
    widths = {p: _width(model.get_submodule(p)) for p in layers}
    removed = {p: torch.zeros(w, dtype=torch.bool) for p, w in widths.items()}
    result = PruningResult(removed)
    for step in range(1, steps + 1):
        names = [f"{p}.weight" for p in layers]
        scored = score(model, names)
        surviving = {p: torch.nonzero(~removed[p]).flatten() for p in layers}  # original ids of current channels
        units = {p: scored.values[f"{p}.weight"].flatten(1).sum(1) for p in layers}
        counts = {p: min(step_target(ratio, step, steps, widths[p]), widths[p] - 1) - int(removed[p].sum())
                  for p in layers}
        none_yet = {p: torch.zeros(len(surviving[p]), dtype=torch.bool) for p in layers}
        new = select_smallest(units, none_yet, counts)
        keep = {p: ~new[p] for p in layers if new[p].any()}
        for p in layers:
            removed[p][surviving[p][new[p]]] = True
        if keep:
            remove_filters(model, example_input, keep)
        _account(result, scored, step, sum(int(r.sum()) for r in removed.values()))
    return result


def _width(module: nn.Module) -> int:
    return module.out_channels if isinstance(module, nn.Conv2d) else module.out_features


def _account(result: PruningResult, scored: Scores, step: int, removed_total: int) -> None:
    for key, value in scored.passes.items():
        result.passes[key] = result.passes.get(key, 0.0) + value
    result.info.update(scored.info)
    result.steps.append({"step": step, "removed": removed_total})
