"""Importance scores of weights: small objects that any compression procedure can take.

A score maps a model and the names of its target parameters to one tensor per name, of the
parameter's shape: the larger the value, the more the weight matters. A procedure removes
(or factorizes, quantizes...) the entries with the *smallest* scores.

- :class:`Magnitude`: ``|θ|``, the fairness-unaware baseline.
- :class:`GroupSaliency`: ``½θ²(h⁰ − β·h¹)`` (FairPrune; FairQuantize puts the rounding
  error ``q(θ) − θ`` in place of ``θ``), with ``h^c`` the diagonal loss curvature on the
  scoring set of group ``c`` (``c = 0``: the unprivileged group). A weight scores low when the unprivileged group
  needs it little compared with the privileged group.
- :class:`HeadSaliency`: the same saliency with the curvature of a head (one layer to the
  logits) on the features that layer receives (FairLRF's factor entries).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .curvature import APPROXIMATIONS, Curvature, Data, network_curvature, per_group_curvature

__all__ = ["GroupSaliency", "HeadSaliency", "Magnitude", "RoundingError", "Scores", "group_saliency", "scoring_groups"]


@dataclass
class Scores:
    """Per-parameter scores (shapes of the parameters), what computing them cost, and facts."""

    values: dict[str, Tensor]
    passes: dict[str, float] = field(default_factory=dict)
    info: dict = field(default_factory=dict)


def group_saliency(theta: Tensor, h_unprivileged: Tensor, h_privileged: Tensor, beta: float) -> Tensor:
    """``½θ²(h⁰ − β·h¹)``: the OBD saliency on group 0 minus β times that on group 1.

    ``theta`` is how far the weight moves: itself when it is removed, ``q(θ) − θ`` when it
    is rounded to ``q(θ)`` (FairQuantize's score, up to the positive ½).
    """
    return 0.5 * theta.detach() ** 2 * (h_unprivileged - beta * h_privileged)


def scoring_groups(ctx, size: int | None, unprivileged_group: int | None, who: str) -> tuple[dict, int]:
    """The balanced scoring sets by role (0: unprivileged, 1: privileged) and the unprivileged group's id.

    ``unprivileged_group`` ``None`` means the group the dense model does worse on (validation).
    """
    from fairsqueeze.core.errors import ConfigError

    sets = ctx.scoring_sets(size)
    if len(sets) != 2:
        raise ConfigError(f"{who} needs exactly two groups in the training split, found {sorted(sets)}")
    unprivileged = unprivileged_group if unprivileged_group is not None else ctx.unprivileged_group()
    if unprivileged not in sets:
        raise ConfigError(f"{who}: unprivileged_group {unprivileged} is not a group of this task ({sorted(sets)})")
    privileged = next(g for g in sets if g != unprivileged)
    return {0: sets[unprivileged], 1: sets[privileged]}, int(unprivileged)


class Magnitude:
    """``|θ|``."""

    name = "magnitude"

    def __call__(self, model: nn.Module, names: Sequence[str]) -> Scores:
        return Scores({name: model.get_parameter(name).detach().abs() for name in names})


@dataclass
class RoundingError:
    """``(q(θ) − θ)²``: how far each weight moves when rounded, with no curvature and no groups
    (the fairness-unaware counterpart of :class:`GroupSaliency` with a ``displacement``)."""

    displacement: Callable[[str, Tensor], Tensor]
    name = "rounding_error"

    def __call__(self, model: nn.Module, names: Sequence[str]) -> Scores:
        return Scores({name: self.displacement(name, model.get_parameter(name).detach()) ** 2 for name in names})


@dataclass
class GroupSaliency:
    """FairPrune's saliency from :func:`network_curvature` on two groups' scoring data.

    ``data`` maps ``0`` (unprivileged) and ``1`` (privileged) to what :func:`network_curvature`
    accepts (an ``(x, y)`` pair or a re-iterable of batches: it is read once per call).
    ``generator`` (seed) drives the sampling estimators; it is consumed call after call, so
    iterative procedures draw fresh samples at every step while a seed fixes them all.
    """

    data: Mapping[int, Data]
    beta: float
    estimator: str = "ggn_exact"
    batch_size: int | None = None
    generator: torch.Generator | int | None = None
    backend: str = "backpack"
    # how far each weight would move, (name, θ) -> tensor; None: to zero (pruning)
    displacement: Callable[[str, Tensor], Tensor] | None = None
    name = "group_saliency"

    def __post_init__(self):
        if set(self.data) != {0, 1}:
            raise ValueError(f"GroupSaliency needs data for groups 0 and 1, got {sorted(self.data)}")
        if not isinstance(self.generator, torch.Generator):
            seed = 0 if self.generator is None else int(self.generator)
            self.generator = torch.Generator().manual_seed(seed)

    def curvature(self, model: nn.Module, names: Sequence[str]) -> dict[int, Curvature]:
        return network_curvature(
            model, self.data, self.estimator, params=list(names), generator=self.generator,
            batch_size=self.batch_size, backend=self.backend,
        )

    def __call__(self, model: nn.Module, names: Sequence[str]) -> Scores:
        curv = self.curvature(model, names)
        moves = {name: model.get_parameter(name).detach() for name in names}
        if self.displacement is not None:
            moves = {name: self.displacement(name, theta) for name, theta in moves.items()}
        values = {
            name: group_saliency(moves[name], curv[0].diag[name].to(moves[name].device),
                                 curv[1].diag[name].to(moves[name].device), self.beta)
            for name in names
        }
        rows = sum(c.samples for c in curv.values())
        info = {"estimator": self.estimator, "estimator_kind": APPROXIMATIONS[self.estimator],
                # reverse-mode calls: the same backward work counted by call, not a further pass
                "backward_sweeps": sum(c.backward_sweeps * c.samples for c in curv.values()) / rows}
        return Scores(values, passes=scoring_passes(curv), info=info)


@dataclass
class HeadSaliency(GroupSaliency):
    """FairLRF's saliency: :class:`GroupSaliency` of the parameters of a *head* (the model from
    one layer to the logits), with the curvature of the head's loss on each group's
    features, the inputs that layer receives (``data``: group -> ``(features, y)``)."""

    name = "head_saliency"

    def curvature(self, head: nn.Module, names: Sequence[str]) -> dict[int, Curvature]:
        params = {name: head.get_parameter(name) for name in names}
        return per_group_curvature(head, self.data, params, self.estimator, batch_size=self.batch_size,
                                   generator=self.generator)


def scoring_passes(curv: Mapping[int, Curvature]) -> dict[str, float]:
    """Curvature cost in passes over all groups' scoring rows together."""
    rows = sum(c.samples for c in curv.values())
    return {
        "forward": sum(c.forward_passes * c.samples for c in curv.values()) / rows,
        "backward": sum(c.backward_passes * c.samples for c in curv.values()) / rows,
    }
