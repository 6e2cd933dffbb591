"""Bad input gets one clear line, a non-zero exit and nothing written; broken plugins are named
and skipped."""
import logging

import pandas as pd
import pytest

from fairsqueeze.cli import main
from fairsqueeze.methods import METHODS


def suite_file(tmp_path, task: str, options: str = "{size: 32}") -> str:
    path = tmp_path / "s.yaml"
    path.write_text(f"seeds: [0]\ntrain: {{epochs: 1}}\ntasks: [{{name: {task}, options: {options}}}]\n"
                    "models: [vgg11_narrow]\nmethods: [dense]\n")
    return str(path)


def run_cli(capsys, *args) -> tuple[int, str]:
    code = main(["run", *args, "--quiet"])
    return code, capsys.readouterr().err.strip()


@pytest.mark.parametrize("task, folder, message", [
    ("utkface", "utkface/UTKFace", "no UTKFace images"),
    ("celeba", "celeba/img_align_celeba", "none of the 2 images listed in list_attr_celeba.txt is in"),
])
def test_an_empty_image_folder_is_one_line(isolated, capsys, task, folder, message):
    root = isolated / "data"
    (root / folder).mkdir(parents=True)
    if task == "celeba":
        names = " ".join(f"A{i}" for i in range(40))
        rows = "\n".join(f"{i:06d}.jpg " + " ".join(["1", "-1"] * 20) for i in (1, 2))
        (root / "celeba/list_attr_celeba.txt").write_text(f"2\n{names}\n{rows}\n")
        (root / "celeba/list_eval_partition.txt").write_text("000001.jpg 0\n000002.jpg 1\n")
    db = isolated / "x.db"
    code, err = run_cli(capsys, suite_file(isolated, task, "{size: 32, target: A0, sensitive: A1}" if task == "celeba"
                                            else "{size: 32}"), "--data-root", str(root), "--db", f"sqlite:///{db}")
    assert code == 2 and err.count("\n") == 0 and message in err, err
    assert not db.exists()


def test_a_database_path_that_is_a_folder_or_unwritable_is_one_line(isolated, capsys):
    suite = suite_file(isolated, "digits", "{size: 32, channels: 3}")
    folder = isolated / "adir"
    folder.mkdir()
    code, err = run_cli(capsys, suite, "--db", f"sqlite:///{folder}")
    assert code == 2 and err.count("\n") == 0 and f"{folder} is a directory" in err
    blocker = isolated / "file"
    blocker.write_text("")
    code, err = run_cli(capsys, suite, "--db", f"sqlite:///{blocker}/sub/x.db")
    assert code == 2 and err.count("\n") == 0 and "cannot create the database" in err and str(blocker) in err


def test_a_missing_file_or_a_root_one_level_too_deep_writes_no_database(isolated, capsys, tmp_path):
    db = isolated / "x.db"
    code, err = run_cli(capsys, suite_file(isolated, "adult", "{}"), "--data-root", str(tmp_path / "nowhere"),
                        "--db", f"sqlite:///{db}")
    assert code == 2 and "adult" in err and not db.exists()


def test_a_plugin_that_fails_to_import_is_named_and_the_builtins_still_work(tmp_path, monkeypatch, caplog):
    (tmp_path / "broken_plugin.py").write_text("raise ImportError('needs a library that is not installed')\n")
    dist = tmp_path / "broken_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[fairsqueeze.methods]\nbroken = broken_plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(METHODS, "_items", dict(METHODS._items))
    monkeypatch.setattr(METHODS, "_entry_points_loaded", False)
    with caplog.at_level(logging.WARNING, logger="fairsqueeze"):
        names = METHODS.names()
    assert "dense" in names and "truncated_svd" in names
    (record,) = [r for r in caplog.records if "broken" in r.getMessage()]
    assert "'broken' (broken_plugin) failed to import" in record.getMessage()
    assert "needs a library that is not installed" in record.getMessage()


def default_slice() -> dict:
    """The default suite's fastest slice: digits with the MLP, every method entry, one seed."""
    import yaml

    from fairsqueeze.suite import resolve_suite_path

    data = yaml.safe_load(resolve_suite_path("default").read_text())
    data["seeds"] = [0]
    data["tasks"] = [t for t in data["tasks"] if (t if isinstance(t, str) else t["name"]) == "digits"]
    data["models"] = [m for m in data["models"] if (m if isinstance(m, str) else m["name"]) == "mlp"]
    for method in data["methods"]:
        if isinstance(method, dict):
            method.pop("models", None)
            method.pop("tasks", None)
    return data


def test_the_same_suite_twice_gives_identical_stored_metrics(tmp_path, monkeypatch):
    from fairsqueeze.reports.results import metric_table, suite_runs
    from fairsqueeze.runner import Runner, resolve_device
    from fairsqueeze.store import Store
    from fairsqueeze.suite import parse_suite

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


def test_a_model_that_outputs_nan_fails_its_run_and_the_suite_goes_on(isolated, monkeypatch):
    from dataclasses import dataclass

    import torch

    from tiny import tiny_suite
    from fairsqueeze.methods import Method, Outcome
    from fairsqueeze.runner import Runner, resolve_device
    from fairsqueeze.store import Store

    class Poison(Method):
        """Puts a NaN into the first weight."""

        @dataclass
        class Params:
            pass

        def apply(self, ctx):
            with torch.no_grad():
                next(ctx.model.parameters())[0, 0] = float("nan")
            return Outcome(model=ctx.model)

    monkeypatch.setitem(METHODS._items, "poison", Poison)
    Poison.registered_name = "poison"
    runner = Runner(Store(f"sqlite:///{isolated}/n.db"), isolated / "data", resolve_device("cpu"))
    report = runner.run(tiny_suite(["poison", "dense"]))
    assert report.done == 1 and len(report.failed) == 1
    runs = runner.store.runs_frame().set_index("method")
    assert "NonFiniteOutput: the model produced NaN or infinite outputs" in runs.loc["poison", "error"]
    assert "Traceback" in runs.loc["poison", "error"] and runs.loc["dense", "status"] == "done"


@pytest.mark.parametrize("entry, message", [
    ("{name: fairlrf, params: {sparsity_rate: 1.5}}", "sparsity_rate and keep_rate must lie in"),
    ("{name: fairlrf, params: {beta: -0.5}}", "beta must be >= 0"),
    ("{name: fairlrf, params: {beta: 'five ninths'}}", "expected a number or a fraction"),
    ("{name: slr_w, params: {k: 0}}", "k must be >= 1"),
    ("{name: truncated_svd, params: {layer: fc9}}", "no layer 'fc9'"),
    ("{name: truncated_svd, params: {k: 40}}", "k=40 exceeds the rank of fc2"),
])
def test_parameters_out_of_range_are_one_line_before_anything_runs(isolated, capsys, entry, message):
    path = isolated / "s.yaml"
    path.write_text(f"seeds: [0]\ntasks: [digits]\nmodels: [{{name: mlp, options: {{hidden: [32, 16]}}}}]\n"
                    f"methods: [{entry}]\n")
    code, err = run_cli(capsys, str(path), "--db", f"sqlite:///{isolated}/x.db")
    assert code == 2 and err.count("\n") == 0 and message in err, err
    assert not (isolated / "x.db").exists()


def test_an_unreachable_postgresql_server_is_one_line_naming_host_and_port(capsys):
    code = main(["show", "--db", "postgresql://fairsqueeze@127.0.0.1:9/results"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0
    assert '"127.0.0.1", port 9 failed' in err
