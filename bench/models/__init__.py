"""Model plugins: the contract in :mod:`.base`, the built-in architectures in :mod:`.builtin`
(imported by the plugin loader, not by this package)."""
from fairsqueeze.models.base import ModelSpec, create_model, linear_layers, register_model, resolve_layer

__all__ = ["ModelSpec", "create_model", "linear_layers", "register_model", "resolve_layer"]
