"""``truncated_svd``: rank-k factorization of chosen linear layers, no fine-tuning."""
from __future__ import annotations

from dataclasses import dataclass

from fairsqueeze.models import resolve_layer

from .base import Method, MethodContext, Outcome, register_method
from .toolbox.factorize import FactorizedLinear, replace_module


def layer_names(layer: str) -> list[str]:
    """A ``layer`` parameter names one layer or several, comma-separated (``"fc1,fc2"``)."""
    return [name.strip() for name in layer.split(",") if name.strip()]


@register_method("truncated_svd")
class TruncatedSVD(Method):
    """Replace each target layer W (out x in) by U_k S_k V_kᵀ: two real, smaller layers."""

    family = "low-rank"

    @dataclass
    class Params:
        k: int = 64
        layer: str = "fc2"
        solver: str = "exact"  # or "randomized": approximate top-k SVD, seconds instead of minutes

    def space(self, trial) -> "TruncatedSVD.Params":
        return self.Params(k=trial.suggest_int("k", 1, 256, log=True), layer=self.params.layer, solver=self.params.solver)

    def apply(self, ctx: MethodContext) -> Outcome:
        ranks = {}
        for name in layer_names(self.params.layer):
            path, linear = resolve_layer(ctx.model, name)
            factorized = FactorizedLinear.from_linear(linear, self.params.k, self.params.solver)
            replace_module(ctx.model, path, factorized)
            ranks[path] = factorized.rank
        return Outcome(model=ctx.model, info={"ranks": ranks})
