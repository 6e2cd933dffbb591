"""Imports the built-in plugin packages so their registrations run (once)."""
from __future__ import annotations

import importlib

_loaded = False


def load_plugins() -> None:
    global _loaded
    if not _loaded:
        for package in ("fairsqueeze.datasets", "fairsqueeze.methods", "fairsqueeze.models"):
            importlib.import_module(package)
        _loaded = True
