"""Learnable pruning masks: a score per weight (or per unit), binarised to a top-k mask.

The forward pass multiplies by the binary mask that keeps the ``n − ⌊sparsity·n⌋`` largest
|scores| of a layer; the backward pass hands the mask's gradient straight through to the
scores (the edge-popup / BiP estimator), so the scores learn while the forward pass always
sees an exactly sparse layer.

- unstructured: one score per weight, the mask multiplies the weight (a
  ``torch.nn.utils.parametrize`` parametrization, so the layer's code is unchanged);
- structured: one score per output unit (conv filter or linear neuron), the mask
  multiplies the layer's output, which removes the unit's weights and its bias together,
  exactly what physically removing the unit does when no normalisation layer follows.

Scores start at the weights' magnitudes (per weight, or a unit's L1 norm), scaled so the
largest is 1: training starts from the magnitude mask.
"""
from __future__ import annotations

import math
from fractions import Fraction

import torch
from torch import nn
from torch.nn.utils import parametrize

MASKABLE = (nn.Linear, nn.Conv2d)


def pruned_count(sparsity: float, n: int) -> int:
    """⌊sparsity·n⌋ on the decimal value of ``sparsity`` (0.2 x 10 is 2, not 1)."""
    return math.floor(Fraction(str(sparsity)) * n)


class TopKStraightThrough(torch.autograd.Function):
    """Binary mask of the ``kept`` largest entries; the gradient passes through unchanged."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor, kept: int) -> torch.Tensor:
        mask = torch.zeros_like(scores)
        flat = scores.flatten()
        mask.view(-1)[flat.topk(kept, sorted=False).indices] = 1.0
        return mask

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


class ScoreMask(nn.Module):
    """The scores of one layer and its current sparsity; :meth:`mask` is the binary top-k mask."""

    def __init__(self, scores: torch.Tensor, sparsity: float):
        super().__init__()
        self.scores = nn.Parameter(scores)
        self.sparsity = sparsity

    @property
    def kept(self) -> int:
        return self.scores.numel() - pruned_count(self.sparsity, self.scores.numel())

    def mask(self) -> torch.Tensor:
        return TopKStraightThrough.apply(self.scores.abs(), self.kept)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:  # as a weight parametrization
        return weight * self.mask()


def _output_mask_hook(score_mask: ScoreMask):
    def hook(_module, _args, output):
        shape = (1, -1) + (1,) * (output.dim() - 2)
        return output * score_mask.mask().view(shape)
    return hook


class ScoreMasks:
    """Score masks on chosen layers of ``model``; :meth:`remove` takes them off again."""

    def __init__(self, model: nn.Module, paths: list[str], sparsity: float, structured: bool):
        self.model, self.structured = model, structured
        self.layers: dict[str, tuple[nn.Module, ScoreMask]] = {}
        self._hooks = []
        for path in paths:
            module = model.get_submodule(path)
            weight = module.weight.detach()
            if structured:
                magnitude = weight.abs().flatten(1).sum(1)
            else:
                magnitude = weight.abs()
            score_mask = ScoreMask(magnitude / magnitude.max().clamp(min=1e-12), sparsity).to(weight.device)
            if structured:
                module.add_module("unit_scores", score_mask)  # so .to() and state follow the layer
                self._hooks.append(module.register_forward_hook(_output_mask_hook(score_mask)))
            else:
                parametrize.register_parametrization(module, "weight", score_mask)
            self.layers[path] = (module, score_mask)

    def scores(self) -> list[nn.Parameter]:
        return [m.scores for _, m in self.layers.values()]

    def weights(self) -> list[nn.Parameter]:
        """Every trainable parameter of the model except the scores."""
        ids = {id(p) for p in self.scores()}
        return [p for p in self.model.parameters() if id(p) not in ids and p.requires_grad]

    def set_sparsity(self, sparsity: float) -> None:
        for _, m in self.layers.values():
            m.sparsity = sparsity

    def raw_weight(self, module: nn.Module) -> torch.Tensor:
        return module.parametrizations.weight.original if parametrize.is_parametrized(module, "weight") else module.weight

    @torch.no_grad()
    def masks(self) -> dict[str, torch.Tensor]:
        """The current binary masks, as bool tensors (weight-shaped, or one entry per unit)."""
        return {path: m.mask().bool() for path, (_, m) in self.layers.items()}

    def remove(self) -> None:
        """Take the masks off, leaving each layer's raw (unmasked) weights in place."""
        for hook in self._hooks:
            hook.remove()
        for module, _ in self.layers.values():
            if self.structured:
                del module.unit_scores
            else:
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
