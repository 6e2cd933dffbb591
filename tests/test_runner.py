"""bench/runner.py and bench/jobs.py: fixed runs computed in several processes, written by one."""
import pandas as pd
import pytest

from tiny import tiny_suite
from fairsqueeze.engine.jobs import interleaved
from fairsqueeze.engine.plan import plan_suite
from fairsqueeze.engine.runner import Runner, resolve_device
from fairsqueeze.store.database import Store
from fairsqueeze.datasets.base import data_root

METHODS = [
    "dense",
    {"name": "truncated_svd", "label": "svd", "params": {"layer": "fc2"}, "sweep": {"k": [2, 4]}},
    {"name": "fairprune", "params": {"ratio": 0.4, "scoring_size": 16}},
    {"name": "fairquantize", "params": {"target": 0.1, "epochs": 1, "batch_size": 16, "scoring_size": 32,
                                        "curvature_batch_size": 32}},
]


def stored(store: Store) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every stored metric and the predictions' labels, by run key."""
    metrics = store.metrics_frame().set_index(["run_key", "split", "name"])["value"].sort_index()
    runs = store.runs_frame()
    preds = {(k, s): tuple(store.predictions(k, s)["y_pred"]) for k in runs["key"] for s in ("val", "test")}
    return metrics, pd.Series(preds).sort_index()


def test_two_jobs_store_what_one_job_stores(isolated, monkeypatch):
    """Two spawned processes compute, this one writes: the metrics and predictions are those of
    --jobs 1, and every run is stored once."""
    suite = tiny_suite(METHODS, seeds=(0, 1), epochs=1)
    plan = plan_suite(suite, data_root())
    results = {}
    for jobs in (1, 2):
        monkeypatch.setenv("FAIRSQUEEZE_CACHE", str(isolated / f"cache{jobs}"))  # each trains its references
        store = Store(f"sqlite:///{isolated}/j{jobs}.db")
        report = Runner(store, data_root(), resolve_device("cpu")).run(plan, jobs=jobs)
        assert report.failed == [] and report.done == len(plan.runs)
        runs = store.runs_frame()
        assert runs["key"].is_unique and set(runs["status"]) == {"done"}
        assert len(store.dense_frame()) == 2  # one row per dense reference, written by this process
        results[jobs] = stored(store)
    pd.testing.assert_series_equal(results[1][0], results[2][0])
    pd.testing.assert_series_equal(results[1][1], results[2][1])


def test_runs_alternate_between_dense_references():
    plan = plan_suite(tiny_suite(["dense", {"name": "truncated_svd", "params": {"layer": "fc2", "k": 2}}],
                                 seeds=(0, 1, 2)), data_root())
    order = [spec.seed for spec in interleaved(plan.runs)]
    assert order == [0, 1, 2, 0, 1, 2]


def test_a_bad_jobs_value_is_one_line(capsys):
    from fairsqueeze.cli.main import main

    assert main(["run", "default", "--jobs", "0"]) == 2
    err = capsys.readouterr().err
    assert "positive number of processes" in err and len(err.strip().splitlines()) == 1  # no usage lines


def test_run_reports_its_wall_time_and_phases(isolated, capsys):
    """``fairsqueeze run --timings PATH``: the JSON has every phase; the process seconds of
    the phases fit in the wall time, the runs are those done, and the summary says the same."""
    import json

    import yaml

    from fairsqueeze.cli.main import main
    from fairsqueeze.testing import tiny_suite_definition

    (isolated / "s.yaml").write_text(yaml.safe_dump(tiny_suite_definition(METHODS[:2], epochs=1)))
    out = isolated / "timings.json"
    assert main(["run", str(isolated / "s.yaml"), "--db", f"sqlite:///{isolated}/t.db", "--jobs", "1",
                 "--device", "cpu", "--timings", str(out)]) == 0
    t = json.loads(out.read_text())
    assert t["runs"] == 3 and t["jobs"] == 1  # dense and svd at k = 2 and 4
    assert t["dense_s"] > 0 and t["method_s"] > 0 and t["evaluation_s"] > 0
    assert t["dense_s"] + t["method_s"] + t["evaluation_s"] + t["outside_s"] == pytest.approx(t["wall_s"])
    assert f"{t['wall_s']:.0f} s of wall time with 1 job(s)" in capsys.readouterr().out
