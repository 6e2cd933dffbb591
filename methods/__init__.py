"""Method plugins. Import this package to register the built-in methods.

Third-party packages register theirs through the ``fairsqueeze.methods`` entry-point group.
"""
from .base import METHODS, Method, MethodContext, Outcome, Predictions, register_method
from . import dense, lora_privacy, lowrank, pruning, svd  # noqa: F401  (registration)

__all__ = ["METHODS", "Method", "MethodContext", "Outcome", "Predictions", "register_method"]
