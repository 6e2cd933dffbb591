"""Broken plugins are named and skipped, runs are reproducible, a failing model fails its run
only, and a suite name stands for one definition. Bad input has its own catalogue
(test_bad_inputs.py)."""
import logging

import pandas as pd
import pytest

from fairsqueeze.cli.plugins import load_entry_points

from fairsqueeze.cli.main import main
from fairsqueeze.core.registry import METHODS


def run_cli(capsys, *args) -> tuple[int, str]:
    code = main(["run", *args, "--quiet"])
    return code, capsys.readouterr().err.strip()


def test_a_plugin_that_fails_to_import_is_named_and_the_builtins_still_work(tmp_path, monkeypatch, caplog):
    (tmp_path / "broken_plugin.py").write_text("raise ImportError('needs a library that is not installed')\n")
    dist = tmp_path / "broken_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[fairsqueeze.methods]\nbroken = broken_plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with METHODS.restored(), caplog.at_level(logging.WARNING, logger="fairsqueeze"):
        load_entry_points()
        names = METHODS.names()
    assert "dense" in names and "truncated_svd" in names
    (record,) = [r for r in caplog.records if "broken" in r.getMessage()]
    assert "'broken' (broken_plugin) failed to import" in record.getMessage()
    assert "needs a library that is not installed" in record.getMessage()


def default_slice() -> dict:
    """The default suite's fastest slice: digits with the MLP, every method entry, one seed."""
    import yaml

    from fairsqueeze.spec.suite import resolve_suite_path

    data = yaml.safe_load(resolve_suite_path("default").read_text())
    data["seeds"] = [0]
    data["tasks"] = [t for t in data["tasks"] if (t if isinstance(t, str) else t["name"]) == "digits"]
    data["models"] = [m for m in data["models"] if (m if isinstance(m, str) else m["name"]) == "mlp"]
    # a post-processed entry needs a binary task; digits has 10 classes
    data["methods"] = [m for m in data["methods"] if not (isinstance(m, dict) and m.get("post"))]
    for method in data["methods"]:
        if isinstance(method, dict):
            method.pop("models", None)
            method.pop("tasks", None)
    return data


def test_the_same_suite_twice_gives_identical_stored_metrics(tmp_path, monkeypatch):
    from fairsqueeze.reports.results import metric_table, suite_runs
    from fairsqueeze.engine.runner import Runner, resolve_device
    from fairsqueeze.store.database import Store
    from fairsqueeze.spec.suite import parse_suite

    monkeypatch.setenv("FAIRSQUEEZE_QUIET", "1")
    tables = []
    for name in ("a", "b"):  # separate caches: the dense models are trained twice as well
        monkeypatch.setenv("FAIRSQUEEZE_CACHE", str(tmp_path / f"cache-{name}"))
        store = Store(f"sqlite:///{tmp_path}/{name}.db")
        report = Runner(store, tmp_path / "data", resolve_device("cpu")).run(parse_suite(default_slice()))
        assert report.failed == []
        members = suite_runs(store).set_index("run_key")
        both = [metric_table(store, members.index, split).add_prefix(f"{split}.") for split in ("val", "test")]
        tables.append(members[["label"]].join(both[0]).join(both[1]).set_index("label").sort_index())
    assert len(tables[0]) >= 5
    pd.testing.assert_frame_equal(tables[0], tables[1], check_exact=True)  # bit for bit


def test_a_model_that_outputs_nan_fails_its_run_and_the_suite_goes_on(isolated, register_plugin):
    from dataclasses import dataclass

    import torch

    from tiny import tiny_suite
    from fairsqueeze.methods import Method, Outcome
    from fairsqueeze.engine.runner import Runner, resolve_device
    from fairsqueeze.store.database import Store

    class Poison(Method):
        """Puts a NaN into the first weight."""

        @dataclass
        class Params:
            pass

        def apply(self, ctx):
            with torch.no_grad():
                next(ctx.model.parameters())[0, 0] = float("nan")
            return Outcome(model=ctx.model)

    register_plugin("poison", Poison)
    runner = Runner(Store(f"sqlite:///{isolated}/n.db"), isolated / "data", resolve_device("cpu"))
    report = runner.run(tiny_suite(["poison", "dense"]))
    assert report.done == 1 and len(report.failed) == 1
    runs = runner.store.runs_frame().set_index("method")
    assert "NonFiniteOutput: the model produced NaN or infinite outputs" in runs.loc["poison", "error"]
    assert "Traceback" in runs.loc["poison", "error"] and runs.loc["dense", "status"] == "done"


SUITE_V1 = ("name: study\nseeds: [0]\ntrain: {epochs: 1}\ntasks: [{name: digits, options: {target: parity}}]\n"
            "models: [{name: mlp, options: {hidden: [32, 16]}}]\n"
            "methods: [dense, {name: truncated_svd, params: {layer: fc2, k: 4}}]\n")
SUITE_V2 = SUITE_V1.replace("k: 4}", "k: 8}")


def test_a_changed_suite_is_refused_naming_the_key_and_redefine_keeps_the_old_runs_as_a_version(isolated, capsys):
    from fairsqueeze.store.database import Store

    v1, v2 = isolated / "v1.yaml", isolated / "v2.yaml"
    v1.write_text(SUITE_V1)
    v2.write_text(SUITE_V2)
    db = f"sqlite:///{isolated}/r.db"
    assert run_cli(capsys, str(v1), "--db", db)[0] == 0
    assert run_cli(capsys, str(v1), "--db", db)[0] == 0  # the same definition again: accepted, nothing to do
    before = Store(db).members_frame("study")

    code, err = run_cli(capsys, str(v2), "--db", db)
    assert code == 2 and err.count("\n") == 0 and "methods[1].params.k is 8 here, 4 stored" in err and "--redefine" in err
    pd.testing.assert_frame_equal(Store(db).members_frame("study"), before)  # nothing recorded

    code, _ = run_cli(capsys, str(v2), "--db", db, "--redefine")
    store = Store(db)
    assert code == 0 and set(store.suites_frame()["name"]) == {"study", "study@v1"}
    current, previous = store.members_frame("study"), store.members_frame("study@v1")
    assert set(current["label"]) == {"dense", "truncated_svd(k=8,layer=fc2)"}
    pd.testing.assert_frame_equal(previous.drop(columns="suite"), before.drop(columns="suite"))
    runs = store.runs_frame(keys=previous["run_key"])
    assert len(runs) == 2 and (runs["status"] == "done").all()  # the first version's results are still there

    code, err = run_cli(capsys, str(v1), "--db", db)  # the old file is now the changed one
    assert code == 2 and "methods[1].params.k is 4 here, 8 stored" in err
    assert run_cli(capsys, str(v1), "--db", db, "--redefine")[0] == 0
    assert set(Store(db).suites_frame()["name"]) == {"study", "study@v1", "study@v2"}


def test_the_first_definition_is_recorded_before_any_run_so_a_second_worker_is_refused(tmp_path):
    from fairsqueeze.engine.runner import suite_definition
    from fairsqueeze.store.database import Store, StoreError
    from fairsqueeze.spec.suite import parse_suite

    import yaml

    first, second = (suite_definition(parse_suite(yaml.safe_load(t))) for t in (SUITE_V1, SUITE_V2))
    store = Store(f"sqlite:///{tmp_path}/w.db")
    assert store.check_definition("study", first) is None
    assert store.members_frame("study").empty  # no run yet, but the definition is claimed
    with pytest.raises(StoreError, match=r"methods\[1\]\.params\.k is 8 here, 4 stored"):
        store.check_definition("study", second)
    assert store.check_definition("study", first) is None
    tuned = yaml.safe_load(SUITE_V1)
    tuned["methods"][1]["tune"] = {"trials": 2}
    budget = yaml.safe_load(SUITE_V1)
    budget["methods"][1]["tune"] = {"trials": 3}
    store.check_definition("tuned", suite_definition(parse_suite(tuned)))
    with pytest.raises(StoreError, match=r"methods\[1\]\.tune\.trials is 3 here, 2 stored"):
        store.check_definition("tuned", suite_definition(parse_suite(budget)))


