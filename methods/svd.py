"""``truncated_svd``: rank-k factorization of chosen linear layers, no fine-tuning."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from fairsqueeze.core.errors import ConfigError
from fairsqueeze.models.base import linear_layers, resolve_layer

from .base import Method, MethodContext, Outcome, register_method
from .toolbox.factorize import FactorizedLinear, checked_rank, replace_module


def target_layers(model: nn.Module, layer: str) -> list[tuple[str, nn.Linear]]:
    """Resolve a ``layer`` parameter: one linear layer or several, comma-separated (``"fc1,fc2"``)."""
    names = [name.strip() for name in str(layer).split(",") if name.strip()]
    if not names:
        raise ConfigError(f"layer: no layer named in {layer!r}")
    targets: dict[str, nn.Linear] = {}
    for name in names:
        path, module = resolve_layer(model, name)
        if not isinstance(module, nn.Linear):
            raise ConfigError(
                f"layer {name!r} is a {type(module).__name__}, not a linear layer"
                f" (linear layers: {', '.join(linear_layers(model))})"
            )
        if path in targets:
            raise ConfigError(f"layer {path!r} is named twice in {layer!r}")
        targets[path] = module
    return list(targets.items())


@register_method("truncated_svd")
class TruncatedSVD(Method):
    """Replace each target layer W (out x in) by U_k S_k V_kᵀ: two real, smaller layers."""

    family = "low-rank"
    conformance_params = {"k": 8}

    @dataclass
    class Params:
        k: int = 64
        layer: str = "fc2"
        solver: str = "exact"  # or "randomized": approximate top-k SVD, seconds instead of minutes

    def validate(self) -> None:
        if self.params.k < 1:
            raise ConfigError("truncated_svd: k must be >= 1")

    def check_model(self, model: nn.Module) -> None:
        check_ranks(model, self.params.layer, self.params.k)

    def space(self, trial) -> dict[str, Any]:
        """The rank, from 1 up to the entry's ``k`` (log scale); the other params stay as given."""
        return {"k": trial.suggest_int("k", 1, self.params.k, log=True)}

    def apply(self, ctx: MethodContext) -> Outcome:
        ranks, info = {}, {}
        for path, linear in target_layers(ctx.model, self.params.layer):
            factorized = FactorizedLinear.from_linear(linear, self.params.k, self.params.solver)
            replace_module(ctx.model, path, factorized)
            ranks[path] = factorized.rank
            if factorized.rank == min(linear.in_features, linear.out_features):
                info["no_op"] = f"k = {factorized.rank} is the full rank of {path}: the factorization is exact"
        return Outcome(model=ctx.model, info={"ranks": ranks, **info})


def check_ranks(model: nn.Module, layer: str, k: int) -> None:
    """Every target layer exists, is linear, and has rank >= k."""
    for path, linear in target_layers(model, layer):
        checked_rank(k, linear.in_features, linear.out_features, path)
