"""Method plugins: the contract in :mod:`.base` (re-exported here), the built-in methods in
their modules, listed in :mod:`.builtin` and imported by the plugin loader, not by this package.

Third-party packages register theirs through the ``fairsqueeze.methods`` entry-point group.
"""
from fairsqueeze.core.registry import METHODS
from fairsqueeze.methods.base import Cost, Method, MethodContext, Outcome, Predictions, register_method

__all__ = ["METHODS", "Cost", "Method", "MethodContext", "Outcome", "Predictions", "register_method"]
