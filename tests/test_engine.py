"""The engine end to end: plan -> dense cache -> methods -> predictions -> metrics -> store."""
from dataclasses import dataclass

import numpy as np
import pytest

from tiny import tiny_suite
from fairsqueeze.cli.main import main
from fairsqueeze.methods import Method, Outcome
from fairsqueeze.measure.metrics import compute_metrics
from fairsqueeze.engine.reference import checkpoint_path
from fairsqueeze.reports.results import results_tables
from fairsqueeze.engine.runner import Runner, resolve_device
from fairsqueeze.store.database import Store


def runner_for(tmp, **kw):
    return Runner(Store(f"sqlite:///{tmp}/r.db"), tmp / "data", resolve_device("cpu"), **kw)


def test_suite_runs_stores_and_resumes(isolated):
    suite = tiny_suite(["dense", {"name": "truncated_svd", "params": {"layer": "fc2", "k": 2}}])
    runner = runner_for(isolated)
    first = runner.run(suite)
    assert (first.done, first.skipped, first.failed) == (2, 0, [])
    again = runner.run(suite)
    assert (again.done, again.skipped) == (0, 2)

    runs = runner.store.runs_frame()
    assert set(runs["status"]) == {"done"}
    assert runs["split_hash"].nunique() == 1 and runs["dense_hash"].nunique() == 1
    # metrics are a pure function of the stored predictions
    key = runs.loc[runs["method"] == "truncated_svd", "key"].item()
    stored = runner.store.metrics_frame("test").query("run_key == @key").set_index("name")["value"]
    p = runner.store.predictions(key, "test")
    recomputed = compute_metrics(p["y"], p["y_pred"], p["s"], num_classes=2)
    assert stored["accuracy"] == pytest.approx(recomputed["accuracy"])
    assert stored["eopp1"] == pytest.approx(recomputed["eopp1"])
    fp = runner.store.footprint_frame().query("run_key == @key").set_index("name")["value"]
    assert fp["compression_ratio"] > 1.0  # fc2 (32x16) became 32x2 + 2 + 2x16
    assert fp["params"] < runner.store.footprint_frame().query("run_key != @key").set_index("name")["value"]["params"]

    table = results_tables(runner.store)["digits: parity / planted"]
    dense_row = table.xs("dense", level="label").iloc[0]
    svd_row = table.xs("truncated_svd(k=2,layer=fc2)", level="label").iloc[0]
    assert dense_row["Δacc[g=0]"] == 0 and dense_row["Δacc[g=1]"] == 0
    dense_key = runs.loc[runs["method"] == "dense", "key"].item()
    dense_acc = runner.store.metrics_frame("test").query("run_key == @dense_key").set_index("name")["value"]
    assert svd_row["Δacc[g=1]"] == pytest.approx(stored["accuracy[g=1]"] - dense_acc["accuracy[g=1]"])
    assert svd_row["compression_ratio"] == pytest.approx(fp["compression_ratio"])


def test_dense_reference_is_trained_once_and_reused(isolated):
    runner = runner_for(isolated)
    suite = tiny_suite(["dense"])
    runner.run(suite)
    path = checkpoint_path(runner.store.runs_frame()["dense_hash"].item())
    stamp = path.stat().st_mtime_ns
    runner.run(tiny_suite([{"name": "truncated_svd", "params": {"layer": "fc1", "k": 4}}]))
    assert path.stat().st_mtime_ns == stamp
    timings = runner.store.runs_frame().sort_values("started_at")["timings"].tolist()
    assert timings[-1]["dense_cached"] == 1.0


def test_failed_runs_are_recorded_and_retried(isolated, register_plugin):
    calls = {"n": 0}

    class Flaky(Method):
        """Fails on its first call only."""

        @dataclass
        class Params:
            pass

        def apply(self, ctx):
            calls["n"] += 1
            if calls["n"] == 1:
                raise RuntimeError("boom")
            return Outcome(model=ctx.model)

    register_plugin("flaky", Flaky)
    runner = runner_for(isolated)
    suite = tiny_suite(["flaky"])
    report = runner.run(suite)
    assert len(report.failed) == 1
    row = runner.store.runs_frame().iloc[0]
    assert row["status"] == "failed" and "RuntimeError: boom" in row["error"]
    assert runner.store.metrics_frame().empty  # nothing half-written
    report = runner.run(suite)
    assert report.done == 1 and runner.store.runs_frame().iloc[0]["status"] == "done"


def test_methods_never_see_the_test_split(isolated, register_plugin):
    seen = {}

    class Probe(Method):
        """Records what the context exposes."""

        @dataclass
        class Params:
            pass

        def apply(self, ctx):
            seen["has_test"] = hasattr(ctx.task, "test")
            seen["train_rows"] = set(ctx.task.train.index.tolist())
            seen["scoring_rows"] = set().union(*(set(s.index.tolist()) for s in ctx.scoring_sets().values()))
            return Outcome(model=ctx.model)

    register_plugin("probe", Probe)
    runner = runner_for(isolated)
    runner.run(tiny_suite(["probe"]))
    test_rows = set(runner.store.predictions(runner.store.runs_frame().iloc[0]["key"], "test")["index"].tolist())
    assert seen["has_test"] is False
    assert not (seen["train_rows"] & test_rows)
    assert seen["scoring_rows"] <= seen["train_rows"]


def test_cli_errors_are_one_line_and_nonzero(isolated, capsys, tmp_path):
    db = f"sqlite:///{tmp_path}/cli.db"
    bad = tmp_path / "bad.yaml"
    bad.write_text("tasks: [digits]\nmodels: [mlp]\nmethods: [nosuch]\n")
    assert main(["run", str(bad), "--db", db, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown method 'nosuch'" in err
    assert not (tmp_path / "cli.db").exists()  # validation happens before the store is opened

    missing = tmp_path / "missing.yaml"
    missing.write_text("tasks: [adult]\nmodels: [mlp]\nmethods: [dense]\n")
    assert main(["run", str(missing), "--db", db, "--data-root", str(tmp_path / "nodata"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "adult" in err and str(tmp_path / "nodata") in err
    assert Store(db).runs_frame().empty

    assert main(["run", "no-such-suite", "--db", db]) == 2
    assert "suite not found" in capsys.readouterr().err


def test_cli_skip_missing_data_runs_the_rest(isolated, capsys, tmp_path):
    suite = tmp_path / "s.yaml"
    suite.write_text(
        "seeds: [0]\ntrain: {epochs: 1}\ntasks: [adult, {name: digits, options: {target: parity}}]\n"
        "models: [{name: mlp, options: {hidden: [8, 4]}}]\nmethods: [dense]\n"
    )
    db = f"sqlite:///{tmp_path}/s.db"
    code = main(["run", str(suite), "--db", db, "--data-root", str(tmp_path / "nodata"), "--skip-missing-data"])
    out = capsys.readouterr().out
    assert code == 0 and "== digits: parity / planted (test" in out and "accuracy" in out
    assert main(["show", "--db", db]) == 0
    assert "== digits: parity / planted (test" in capsys.readouterr().out


def test_cli_lists_registries(capsys):
    for what, expected in [("tasks", "digits"), ("models", "vgg11_paper"), ("methods", "truncated_svd"), ("suites", "default")]:
        assert main(["list", what]) == 0
        assert expected in capsys.readouterr().out


def test_device_choice():
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(Exception, match="expected auto, cpu or cuda"):
        resolve_device("tpu")


def test_a_failing_dense_reference_fails_its_runs_only(isolated, monkeypatch):
    import fairsqueeze.engine.execute as execute_module

    def broken(spec, task, device):
        raise MemoryError("out of memory")

    monkeypatch.setattr(execute_module, "dense_reference", broken)
    runner = runner_for(isolated)
    report = runner.run(tiny_suite(["dense", {"name": "truncated_svd", "params": {"layer": "fc2", "k": 2}}]))
    assert len(report.failed) == 2 and report.done == 0
    runs = runner.store.runs_frame()
    assert set(runs["status"]) == {"failed"}
    assert runs["error"].str.contains("dense reference failed: MemoryError").all()
