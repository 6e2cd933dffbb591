"""Every registered method, plugins included: a valid outcome on a tiny task whose test split
is sealed while the method runs, the shared in-memory dense model untouched, deterministic.

A new plugin gets these checks for free. Methods whose default parameters do not fit the
tiny model (an MLP with layers fc1 32 -> fc2 16 -> fc3) list overrides in ``TINY_PARAMS``.
"""
from dataclasses import dataclass

import pytest
import torch

from tiny import tiny_suite
from fairsqueeze.hashing import array_hash
from fairsqueeze.methods import METHODS, Method, Outcome
from fairsqueeze.registry_loader import load_plugins
from fairsqueeze.runner import Runner, resolve_device
from fairsqueeze.store import Store

load_plugins()

LOW_RANK = {"k": 8}
TINY_PARAMS: dict[str, dict] = {
    "truncated_svd": LOW_RANK,
    "slr_w": LOW_RANK,
    "slr_a": LOW_RANK,
    "fairlrf": LOW_RANK,
    "lora_erm": {"epochs": 1, "auditor_epochs": 1, "rank": 2},
    "lora_unlearn": {"epochs": 1, "auditor_epochs": 1, "rank": 2},
    "lora_orthogonal": {"epochs": 1, "auditor_epochs": 1, "rank": 2},
    "lora_adversarial": {"epochs": 1, "rounds": 1, "auditor_epochs": 1, "rank": 2},
    "fairquantize": {"target": 0.1, "epochs": 1, "batch_size": 32, "scoring_size": 64, "curvature_batch_size": 32},
    "fairalm": {"epochs": 1, "batch_size": 64, "inner_steps": 2},
    "unconstrained": {"epochs": 1, "batch_size": 64, "inner_steps": 2},
    "l2_penalty": {"epochs": 1, "batch_size": 64, "inner_steps": 2},
    "bifp": {"sparsity": 0.5, "epochs": 1, "batch_size": 64, "lr": 0.05},
}


def state_digest(model: torch.nn.Module) -> str:
    return array_hash(*(v.detach().cpu().numpy() for v in model.state_dict().values()))


def check_conformance(tmp, name: str, params: dict, monkeypatch) -> None:
    """Run ``name`` twice into two databases; assert the contract (AssertionError otherwise)."""
    import fairsqueeze.execute as execute

    seen = []
    original = execute.execute_run

    def watched(spec, task, reference, *rest):
        before = state_digest(reference.model)
        result = original(spec, task, reference, *rest)
        seen.append((before, state_digest(reference.model)))
        return result

    monkeypatch.setattr(execute, "execute_run", watched)
    reports, stores = [], []
    for db in ("a", "b"):
        suite = tiny_suite([{"name": name, "params": params}], epochs=1)
        store = Store(f"sqlite:///{tmp}/{name}-{db}.db")
        reports.append(Runner(store, tmp / "data", resolve_device("cpu")).run(suite))
        stores.append(store)
    runs = stores[0].runs_frame()
    assert reports[0].failed == [] and reports[1].failed == [], runs["error"].tolist()
    # the in-memory dense model shared by the runs of a group is untouched by the method
    assert seen and all(before == after for before, after in seen), "the method changed the shared dense model"

    # a valid outcome: finite metrics on both splits, a footprint, predictions for every row
    metrics = stores[0].metrics_frame()
    assert set(metrics["split"]) == {"val", "test"}
    assert metrics.query("name == 'accuracy'")["value"].between(0, 1).all()
    fp = stores[0].footprint_frame().set_index("name")["value"]
    assert fp["params"] > 0 and fp["stored_params"] <= fp["params"] and fp["compression_ratio"] > 0
    key = runs["key"].item()
    for split in ("val", "test"):
        assert len(stores[0].predictions(key, split)["y_pred"]) > 0

    # deterministic: the same seed gives identical metrics
    m1, m2 = (s.metrics_frame().set_index(["split", "name"])["value"].sort_index() for s in stores)
    assert m1.equals(m2)


@pytest.mark.parametrize("name", METHODS.names())
def test_method_conforms(isolated, monkeypatch, name):
    check_conformance(isolated, name, TINY_PARAMS.get(name, {}), monkeypatch)


class _Planted(Method):
    @dataclass
    class Params:
        pass


class ReadsTestByRebuilding(_Planted):
    """Rebuilds its task from the registry and reads the test labels."""

    def apply(self, ctx):
        from fairsqueeze.tasks import build_task

        task = build_task("digits", None, target="parity")
        _ = task.test.y
        return Outcome(model=ctx.model)


class ReadsTestAndHidesIt(_Planted):
    """Tries the test split, swallows the error and returns the model unchanged."""

    def apply(self, ctx):
        from fairsqueeze.tasks import build_task

        try:
            build_task("digits", None, target="parity").test.x[:1]
        except Exception:
            pass
        return Outcome(model=ctx.model)


class ReachesThroughPrepare(_Planted):
    """Looks for the full task behind the view's prepare function."""

    def apply(self, ctx):
        return Outcome(model=ctx.model, info={"n": len(ctx.task.prepare.__self__.test)})


class ChangesTheSharedModel(_Planted):
    """Finds the dense model through the garbage collector and edits it in place."""

    def apply(self, ctx):
        import gc

        for obj in gc.get_objects():
            if type(obj).__name__ == "DenseReference":
                with torch.no_grad():
                    next(obj.model.parameters()).add_(1.0)
        return Outcome(model=ctx.model)


@pytest.mark.parametrize("plugin", [ReadsTestByRebuilding, ReadsTestAndHidesIt, ReachesThroughPrepare,
                                    ChangesTheSharedModel])
def test_conformance_catches_a_cheating_plugin(isolated, monkeypatch, plugin):
    name = plugin.__name__.lower()
    monkeypatch.setitem(METHODS._items, name, plugin)
    plugin.registered_name = name
    with pytest.raises(AssertionError):
        check_conformance(isolated, name, {}, monkeypatch)
