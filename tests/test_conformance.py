"""Every registered method: valid outcome on a tiny task, dense cache untouched, deterministic.

A new plugin gets these checks for free. Methods whose default parameters do not fit the
tiny model may list overrides in ``TINY_PARAMS``.
"""
import hashlib

import pytest
import torch

from tiny import tiny_suite
from fairsqueeze.methods import METHODS
from fairsqueeze.reference import checkpoint_path
from fairsqueeze.registry_loader import load_plugins
from fairsqueeze.runner import Runner, resolve_device
from fairsqueeze.store import Store

load_plugins()

TINY_PARAMS: dict[str, dict] = {
    "fairalm": {"epochs": 1, "batch_size": 64, "inner_steps": 2},
    "unconstrained": {"epochs": 1, "batch_size": 64, "inner_steps": 2},
    "l2_penalty": {"epochs": 1, "batch_size": 64, "inner_steps": 2},
    "bifp": {"sparsity": 0.5, "epochs": 1, "batch_size": 64, "lr": 0.05},
}


def run_method(tmp, name, db):
    suite = tiny_suite([{"name": name, "params": TINY_PARAMS.get(name, {})}], epochs=1)
    runner = Runner(Store(f"sqlite:///{tmp}/{db}.db"), tmp / "data", resolve_device("cpu"))
    report = runner.run(suite)
    return suite, runner, report


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("name", METHODS.names())
def test_method_conforms(isolated, name):
    suite, runner, report = run_method(isolated, name, "a")
    assert report.failed == [], runner.store.runs_frame()["error"].tolist()
    spec = suite.runs()[0]
    ckpt = checkpoint_path(spec.dense_key)
    before = digest(ckpt)

    # a valid outcome: finite metrics on both splits, a footprint, predictions for every row
    metrics = runner.store.metrics_frame()
    assert set(metrics["split"]) == {"val", "test"}
    acc = metrics.query("name == 'accuracy'")["value"]
    assert acc.between(0, 1).all()
    fp = runner.store.footprint_frame().set_index("name")["value"]
    assert fp["params"] > 0 and fp["stored_params"] <= fp["params"] and fp["compression_ratio"] > 0

    # the dense checkpoint is untouched by the method (run it again on the cached reference)
    _, runner2, report2 = run_method(isolated, name, "b")
    assert report2.failed == []
    assert digest(ckpt) == before
    saved = torch.load(ckpt, weights_only=True)["state_dict"]
    assert all(torch.isfinite(v).all() for v in saved.values())

    # deterministic: the same seed gives identical metrics
    m1 = runner.store.metrics_frame().set_index(["split", "name"])["value"]
    m2 = runner2.store.metrics_frame().set_index(["split", "name"])["value"]
    assert m1.sort_index().equals(m2.sort_index())
