"""``dense``: the uncompressed reference model, returned unchanged."""
from __future__ import annotations

from .base import Method, MethodContext, Outcome, register_method


@register_method("dense")
class Dense(Method):
    """The dense reference every other method is compared with."""

    family = "reference"

    def apply(self, ctx: MethodContext) -> Outcome:
        return Outcome(model=ctx.model)
