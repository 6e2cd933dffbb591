"""The store's integrity: runs are computations shared by suites through membership, bound to
the data they were computed on; tables are per task identity; collapsed and no-effect
outcomes are flagged; old databases are refused."""
import logging
import os
import sqlite3
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import yaml

from test_datasets_tabular import adult_rows
from test_paper_suites import CHEAP, write_fitzpatrick
from tiny import tiny_suite
from fairsqueeze.cli.main import main
from fairsqueeze.core.errors import FairsqueezeError
from fairsqueeze.methods import Method, Outcome
from fairsqueeze.engine.reference import checkpoint_path, dense_reference
from fairsqueeze.reports.results import results_tables, suite_runs
from fairsqueeze.engine.runner import Runner, plan_suite, resolve_device
from fairsqueeze.store.database import Store, StoreError
from fairsqueeze.spec.suite import parse_suite, resolve_suite_path
from fairsqueeze.datasets.base import Split, TaskData, build_task, check_task

DATA = os.environ.get("FAIRSQUEEZE_DATA", "data")


def runner_for(tmp, root=None, db="r"):
    return Runner(Store(f"sqlite:///{tmp}/{db}.db"), root or tmp / "data", resolve_device("cpu"))


def narrow(name: str) -> dict:
    """A paper suite on the narrow VGG-11 at 32 px: same entries and sweeps, ranks that fit."""
    data = yaml.safe_load(resolve_suite_path(name).read_text())
    data["seeds"], data["train"] = [0], {**data["train"], "epochs": 1, "batch_size": 16}
    data["models"] = [{"name": "vgg11_narrow", "options": {"dropout": 0.0}}]
    for task in data["tasks"]:
        task["options"] = {**task["options"], "size": 32, "resize": 36}
    for method in data["methods"]:
        if isinstance(method, dict):
            params = {**method.get("params", {}), **CHEAP.get(method["name"], {})}
            if "k" in params:
                params["k"] = 3  # fc3 has rank 3 on the three-class fixture
            method["params"] = params
            if "k" in method.get("sweep", {}):
                method["sweep"]["k"] = [128, 64, 3]
    return data


def test_an_overlapping_suite_shows_every_row_and_computes_nothing_twice(isolated):
    root = write_fitzpatrick(isolated / "data")
    runner = runner_for(isolated, root)
    ablation = parse_suite(narrow("fairlrf_ablation"))
    report = runner.run(ablation)
    planned = ablation.runs()
    assert len(planned) == 1 + 3 + 8 + 4 + 5 + 3
    # the centre point (sr 0.4, rr 0, beta 5/9, fc2) sits in four sweeps: one computation
    members = suite_runs(runner.store, "fairlrf_ablation")
    assert len(members) == len(planned) and (members["status"] == "done").all()
    assert report.done == len(planned) - 3 == members["run_key"].nunique()
    centre = members[members["run_key"].duplicated(keep=False)]
    assert sorted(centre["label"]) == ["fairlrf-beta(beta=5/9)", "fairlrf-layer(layer=fc2)",
                                       "fairlrf-rr(keep_rate=0.0)", "fairlrf-sr(sparsity_rate=0.4)"]
    (table,) = results_tables(runner.store, suite="fairlrf_ablation").values()
    assert len(table) == len(planned)  # every planned row, the centre point under each label

    # Table 2 shares the dense model, the SVD and the FairLRF centre point with the ablation
    table2 = parse_suite(narrow("fairlrf_table2"))
    report2 = runner.run(table2)
    assert (report2.done, report2.skipped) == (4, 3)  # only SLR-w, SLR-a, FairPrune and FairQuantize are new
    (t2,) = results_tables(runner.store, suite="fairlrf_table2").values()
    assert list(t2.index.get_level_values("label")) == ["dense", "truncated SVD (k=64)", "SLR-w (0.5, 0.5)",
                                                        "SLR-a (0.5, 0.5)", "FairLRF (0.4, 0.0, 5/9)",
                                                        "FairPrune (35 %, 1/3)", "FairQuantize (20 %, 5/9)"]
    assert not t2.filter(like="Δacc").isna().any().any()  # the dense row is there: changes are defined
    # ... and the ablation's table still has every row
    assert len(results_tables(runner.store, suite="fairlrf_ablation").popitem()[1]) == len(planned)
    assert runner.run(table2).done == 0 and runner.run(ablation).done == 0


def write_adult(root, rows):
    folder = root / "adult"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adult.data").write_text("\n".join(adult_rows(rows)) + "\n")
    (folder / "adult.test").write_text("|1x3 Cross validator\n" + "\n".join(adult_rows(12, 500, ".")) + "\n")
    return root


ADULT_SUITE = {
    "name": "adult-tiny",
    "seeds": [0],
    "train": {"epochs": 1, "batch_size": 16},
    "tasks": [{"name": "adult", "options": {"sensitive": "sex"}}],
    "models": [{"name": "mlp", "options": {"hidden": [8, 4]}}],
    "methods": ["dense", {"name": "truncated_svd", "params": {"layer": "fc2", "k": 2}}],
}


def test_changed_data_files_retrain_and_never_mix_with_old_results(isolated, caplog):
    root = write_adult(isolated / "data", 40)
    runner = runner_for(isolated, root)
    suite = parse_suite(ADULT_SUITE)
    assert runner.run(suite).done == 2
    old = set(suite_runs(runner.store)["run_key"])
    old_dense = set(suite_runs(runner.store)["dense_key"])

    write_adult(root, 60)  # new rows: a different split and feature statistics
    report = runner.run(suite)
    assert report.done == 2 and report.skipped == 0  # nothing reused
    members = suite_runs(runner.store)
    assert not set(members["run_key"]) & old and not set(members["dense_key"]) & old_dense
    assert len(runner.store.runs_frame()) == 4  # the old computations stay, unlisted
    task = build_task("adult", root, sensitive="sex")
    assert set(members["split_hash"]) == {task.split_hash}
    (table,) = results_tables(runner.store).values()
    assert len(table) == 2 and (table["seeds"] == 1).all()

    # a checkpoint that claims other data is never loaded, and says so
    key = members["dense_key"].iloc[0]
    path = checkpoint_path(key)
    saved = torch.load(path, weights_only=True)
    torch.save({**saved, "data_hash": "stale"}, path)
    spec = plan_suite(suite, root).runs[0]
    with caplog.at_level(logging.WARNING, logger="fairsqueeze"):
        _, info = dense_reference(spec, task, torch.device("cpu"))
    assert info["cached"] is False and "trained on other data" in caplog.text
    path.write_bytes(path.read_bytes()[:100])  # truncated: retrained, not loaded
    assert dense_reference(spec, task, torch.device("cpu"))[1]["cached"] is False
    assert dense_reference(spec, task, torch.device("cpu"))[1]["cached"] is True


def test_two_attribute_pairs_of_one_dataset_get_two_tables(isolated, capsys):
    suite = tiny_suite(["dense"])
    suite.tasks = suite.tasks + parse_suite({"tasks": [{"name": "digits", "options": {"target": "digit"}}],
                                             "models": ["mlp"], "methods": ["dense"]}).tasks
    runner = runner_for(isolated)
    runner.run(suite)
    tables = results_tables(runner.store, suite="tiny")
    assert sorted(tables) == ["digits: digit / planted", "digits: parity / planted"]
    accuracy = {title: t["accuracy"].item() for title, t in tables.items()}
    assert accuracy["digits: digit / planted"] != accuracy["digits: parity / planted"]
    assert main(["show", "--db", runner.store.url, "--suite", "tiny"]) == 0
    out = capsys.readouterr().out
    assert out.count("-- bias card: digits: digit / planted") == 1
    assert out.count("-- bias card: digits: parity / planted") == 1


@pytest.mark.skipif(not os.path.isdir(os.path.join(DATA, "celeba")), reason="celeba not under the data root")
def test_celeba_attribute_pairs_are_separate_tables(isolated):
    pairs = [("Blond_Hair", "Male"), ("Attractive", "Male"), ("Wavy_Hair", "Young")]
    suite = parse_suite({
        "seeds": [0], "train": {"epochs": 1, "batch_size": 32},
        "tasks": [{"name": "celeba", "options": {"target": t, "sensitive": s, "size": 32, "limit": 60}} for t, s in pairs],
        "models": [{"name": "vgg11_narrow"}], "methods": ["dense"],
    })
    runner = runner_for(isolated, DATA)
    runner.run(suite)
    tables = results_tables(runner.store)
    assert sorted(tables) == sorted(f"celeba: {t} / {s} (limit=60, size=32)" for t, s in pairs)
    assert len(runner.store.dense_frame()) == 3


@dataclass
class _NoParams:
    pass


class Collapse(Method):
    """Makes the model predict class 0 for every input."""

    Params = _NoParams

    def apply(self, ctx):
        last = [m for m in ctx.model.modules() if isinstance(m, torch.nn.Linear)][-1]
        with torch.no_grad():
            last.weight.zero_()
            last.bias.copy_(torch.tensor([5.0, -5.0]))
        return Outcome(model=ctx.model)


class Nothing(Method):
    """Returns the dense model unchanged."""

    Params = _NoParams

    def apply(self, ctx):
        return Outcome(model=ctx.model)


def test_collapsed_and_no_effect_runs_are_flagged(isolated, register_plugin, capsys):
    for name, cls in (("collapse", Collapse), ("nothing", Nothing)):
        register_plugin(name, cls)
    runner = runner_for(isolated)
    report = runner.run(tiny_suite(["dense", "collapse", "nothing"]))
    members = suite_runs(runner.store).set_index("label")
    assert members.loc["collapse", "flags"] == ["degenerate"]
    assert "constant predictions on val (always 0)" in members.loc["collapse", "info"]["flag_details"]["degenerate"]
    assert members.loc["nothing", "flags"] == ["no_effect"]
    assert members.loc["dense", "flags"] == []  # the reference itself is never "no effect"
    assert sorted(report.flagged.values()) == [["degenerate"], ["no_effect"]]
    (table,) = results_tables(runner.store).values()
    assert table.xs("collapse", level="label")["flags"].item() == "degenerate"
    # the collapsed model's gaps are 0: the flag is what keeps it from reading as "fair"
    assert table.xs("collapse", level="label")["eodd"].item() == 0


def test_a_database_of_the_old_schema_is_refused_with_one_line(tmp_path, capsys):
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE runs (key TEXT PRIMARY KEY, suite TEXT, label TEXT, status TEXT)")
        conn.execute("INSERT INTO runs VALUES ('k', 'default', 'dense', 'done')")
    with pytest.raises(StoreError, match="uses schema 1.*move it aside"):
        Store(f"sqlite:///{path}")
    suite = tmp_path / "s.yaml"
    suite.write_text("seeds: [0]\ntrain: {epochs: 1}\ntasks: [digits]\nmodels: [mlp]\nmethods: [dense]\n")
    assert main(["run", str(suite), "--db", f"sqlite:///{path}", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "schema" in err
    with sqlite3.connect(path) as conn:  # untouched
        assert conn.execute("SELECT count(*) FROM runs").fetchone() == (1,)


def test_a_rank_above_the_layer_is_refused_before_anything_is_written(tmp_path, capsys):
    suite = tmp_path / "s.yaml"
    suite.write_text("seeds: [0]\ntasks: [digits]\nmodels: [{name: mlp, options: {hidden: [32, 16]}}]\n"
                     "methods: [{name: truncated_svd, params: {layer: fc2, k: 300}}]\n")
    assert main(["run", str(suite), "--db", f"sqlite:///{tmp_path}/x.db", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "k=300 exceeds the rank of fc2 (16x32: at most 16)" in err
    assert not (tmp_path / "x.db").exists()


def toy_task(s_train, s_val, s_test):
    def split(s):
        s = np.asarray(s)
        return Split(np.zeros((len(s), 2), np.float32), np.arange(len(s)) % 2, s, np.arange(len(s)))

    return TaskData("toy", split(s_train), split(s_val), split(s_test), 2, (2,), "y", "sex", {0: "f", 1: "m"})


def test_tasks_that_cannot_give_results_are_refused():
    check_task(toy_task([0, 1, 0, 1], [0, 1], [0, 1]), "toy")
    with pytest.raises(FairsqueezeError, match="the val split has no rows"):
        check_task(toy_task([0, 1], [], [0, 1]), "toy")
    with pytest.raises(FairsqueezeError, match=r"'sex' has fewer than two groups in the test split \(rows per group: m: 3\)"):
        check_task(toy_task([0, 1], [0, 1], [1, 1, 1]), "toy")


def test_the_view_holds_no_way_back_to_the_test_split():
    task = toy_task([0, 1], [0, 1], [0, 1])
    view = task.view()
    assert not hasattr(view, "test") and not hasattr(view.prepare, "__self__")
    assert all(getattr(view, name) is not task for name in vars(view))
