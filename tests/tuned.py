"""A small tuned suite on the file-less digits task, run once through the CLI (seconds)."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

POLICIES = ["best_utility", {"fairest_within": 0.05}, {"fairest_above": 0.5}, "utopia"]


@pytest.fixture(scope="session")
def tuned_db(tmp_path_factory) -> tuple[str, str]:
    """The tuned suite, run once per test session: (database URL, suite name)."""
    return tuned_suite(tmp_path_factory.mktemp("tuned"))


def tuned_suite(folder: Path, name: str = "tuned-report") -> tuple[str, str]:
    """Run a suite with two tuned entries of unequal budgets (allowed by the suite), two seeds,
    four policies and an accuracy constraint; return (database URL, suite name)."""
    suite = {
        "name": name,
        "seeds": [0, 1],
        "train": {"epochs": 2, "batch_size": 64, "lr": 0.05},
        "tasks": [{"name": "digits", "options": {"target": "parity"}}],
        "models": [{"name": "mlp", "options": {"hidden": [32, 16]}}],
        "tuning": {"trials": 5, "unequal_budgets": True, "sampler": {"name": "random", "seed": 7},
                   "policies": POLICIES, "constraints": {"accuracy_within": 0.01}},
        "methods": [
            "dense",
            {"name": "truncated_svd", "label": "svd", "params": {"layer": "fc2", "k": 8}, "tune": True},
            {"name": "slr_w", "params": {"layer": "fc2", "k": 8}, "tune": {"trials": 3}},
        ],
    }
    from fairsqueeze.cli.main import main

    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(suite))
    db = f"sqlite:///{folder}/tuned.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FAIRSQUEEZE_CACHE", str(folder / "cache"))
        mp.setenv("FAIRSQUEEZE_QUIET", "1")
        assert main(["run", str(path), "--db", db, "--quiet"]) == 0
    return db, name
