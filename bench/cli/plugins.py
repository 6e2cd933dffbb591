"""Loads the plugins once, at the program's entry points (the command line, the test helpers):
the built-in datasets, models and methods, then every installed entry point of the three
groups. The registries themselves never import a plugin."""
from __future__ import annotations

import logging
from importlib import import_module
from importlib.metadata import entry_points

from fairsqueeze.core.registry import REGISTRIES

BUILTINS = ("fairsqueeze.datasets.builtin", "fairsqueeze.models.builtin", "fairsqueeze.methods.builtin")
_loaded = False


def load_plugins() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in BUILTINS:
        import_module(module)
    load_entry_points()


def load_entry_points() -> None:
    """Import every installed plugin of the three entry-point groups (again, when called again:
    a module already imported is not run twice)."""
    for registry in REGISTRIES:
        for ep in entry_points(group=registry.entry_point_group):
            try:
                ep.load()  # importing the module runs its @register decorators
            except Exception as exc:  # a broken plugin must not take the built-ins down with it
                first = str(exc).splitlines()[0] if str(exc) else ""
                logging.getLogger(__name__).warning(
                    "%s plugin %r (%s) failed to import and is skipped: %s: %s",
                    registry.kind, ep.name, ep.value, type(exc).__name__, first,
                )
