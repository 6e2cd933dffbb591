"""Shared test helpers (a module, not conftest, so nested conftest files cannot shadow it)."""
from fairsqueeze.testing import tiny_suite  # noqa: F401  (the tiny suite plugins are checked on)
