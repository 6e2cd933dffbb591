"""The one factory of methods: a registered name and its params to a validated instance."""
from __future__ import annotations

from typing import Any

from .registry_loader import load_plugins


def method_class(name: str):
    load_plugins()
    from fairsqueeze.methods import METHODS

    return METHODS.get(name)


def create_method(name: str, params: dict[str, Any] | None, where: str = "params"):
    """The method ``name`` with ``params`` checked and resolved (as ``create_model`` for models).
    Raises ConfigError naming the key, FairsqueezeError for an unknown name."""
    return method_class(name).from_config(params, where=where)


def method_identity(name: str) -> dict[str, Any]:
    """What the reading side shows about a method without importing it: its family and its
    registration position (the colour order)."""
    from fairsqueeze.methods import METHODS

    return {"family": method_class(name).family, "method_order": METHODS.position(name)}
