import contextlib
import os
from pathlib import Path

import pytest
import torch

from fairsqueeze.cli.plugins import load_plugins
from fairsqueeze.core.registry import METHODS

load_plugins()  # the test helpers are an entry point of the program, as the command line is

torch.set_num_threads(1)  # tests run beside each other on small machines; keep them predictable
# `run` computes in this process unless a test asks for --jobs: the tests share the machine's
# cores
os.environ.setdefault("FAIRSQUEEZE_JOBS", "1")

SHARED_DATA = Path(os.environ.get("FAIRSQUEEZE_DATA", "data"))


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """A private cache folder and database for one test."""
    monkeypatch.setenv("FAIRSQUEEZE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FAIRSQUEEZE_QUIET", "1")
    return tmp_path


@pytest.fixture
def register_plugin():
    """``register_plugin(name, cls)`` registers a test's method plugin until the test ends, then
    the registry is as it was (the registry's public context managers)."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(METHODS.restored())

        def register(name: str, cls) -> str:
            stack.enter_context(METHODS.registered(name, cls))
            return name

        yield register


from pg import postgres_server, postgres_url  # noqa: E402,F401  (fixtures)
from tuned import tuned_db  # noqa: E402,F401  (fixture)
