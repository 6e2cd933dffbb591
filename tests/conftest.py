import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)  # tests run beside each other on small machines; keep them predictable

SHARED_DATA = Path(os.environ.get("FAIRSQUEEZE_DATA", "data"))


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """A private cache folder and database for one test."""
    monkeypatch.setenv("FAIRSQUEEZE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FAIRSQUEEZE_QUIET", "1")
    return tmp_path


def tiny_suite(methods, seeds=(0,), epochs=2, name="tiny"):
    """A seconds-long suite on the file-less digits task with a small MLP."""
    from fairsqueeze.suite import parse_suite

    return parse_suite(
        {
            "name": name,
            "seeds": list(seeds),
            "train": {"epochs": epochs, "batch_size": 64, "lr": 0.05},
            "tasks": [{"name": "digits", "options": {"target": "parity"}}],
            "models": [{"name": "mlp", "options": {"hidden": [32, 16]}}],
            "methods": methods,
        }
    )
