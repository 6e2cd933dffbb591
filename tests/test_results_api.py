"""``fairsqueeze.open_results``: the reading API gives the numbers the pages and their exports show."""
import hashlib
import warnings

import numpy as np
import pandas as pd
import pytest

from synthetic_results import make_results, write_store
import fairsqueeze
from fairsqueeze.reports import export
from fairsqueeze.reports.tables import comparisons
from fairsqueeze.store.database import Store


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    folder = tmp_path_factory.mktemp("api")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        made = make_results(tasks=(("digits: parity / planted", 2), ("faces: age / race", 5)), seeds=(0, 1))
    write_store(made, Store(f"sqlite:///{folder}/r.db"))
    return folder / "r.db"


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_tidy_metrics_equal_the_exported_tables(stored, tmp_path):
    before = digest(stored)
    res = fairsqueeze.open_results(f"sqlite:///{stored}")
    tidy = res.metrics("synthetic")
    assert {"task_label", "model", "method", "family", "params", "seed", "flags", "metric", "group", "value"} <= set(tidy)
    overall = tidy[(tidy["group"] == "all") & (tidy["metric"] == "accuracy")]
    by_group = tidy[(tidy["group"] == 1) & (tidy["metric"] == "accuracy")]
    assert len(overall) == len(by_group) == res.runs("synthetic")["status"].eq("done").sum()
    for comp in comparisons(res.results("synthetic").done()):
        csv = pd.read_csv(next(p for p in export.write_comparison(comp, tmp_path) if p.suffix == ".csv"))
        mine = overall[(overall["task_key"] == comp.task_key) & (overall["model"] == comp.model)]
        means = mine.groupby("label")["value"].mean()
        assert means.reindex(csv["label"]).to_numpy() == pytest.approx(csv["accuracy"].to_numpy())
    wide = res.metrics("synthetic", tidy=False)
    assert len(wide) == len(overall) and "eodds_diff" in wide and "compression_ratio" in wide
    assert digest(stored) == before  # read-only


def test_paired_is_the_difference_against_dense_of_the_same_seed(stored):
    res = fairsqueeze.open_results(f"sqlite:///{stored}")
    paired = res.paired("synthetic")
    assert "dense" not in set(paired["method"]) and (paired["delta"] == paired["value"] - paired["dense"]).all()
    tidy = res.metrics("synthetic")
    acc = tidy[(tidy["metric"] == "accuracy") & (tidy["group"] == "all")]
    dense = acc[acc["method"] == "dense"].set_index(["task_key", "model", "seed"])["value"]
    svd = paired[(paired["label"] == "svd(k=4)") & (paired["metric"] == "accuracy") & (paired["group"] == "all")]
    for _, r in svd.iterrows():  # by hand: the dense value of the same task, model and seed
        assert r["delta"] == pytest.approx(r["value"] - dense[(r["task_key"], r["model"], r["seed"])])
    # the same numbers as the report's overview (mean over seeds of the per-seed change)
    comp = comparisons(res.results("synthetic").done())[0]
    row = next(r for r in comp.rows if r.label == "svd(k=4)")
    mine = svd[svd["task_key"] == comp.task_key]["delta"]
    assert row.values["delta_accuracy"].mean == pytest.approx(mine.mean())


def test_runs_carry_the_reading_side_flags_and_a_missing_database_is_one_clear_error(stored, tmp_path):
    res = fairsqueeze.open_results(f"sqlite:///{stored}")
    runs = res.runs()
    assert set(runs["status"]) == {"done", "failed"}
    collapse = runs[runs["method"] == "collapse"]
    assert collapse["flags"].map(lambda f: "degenerate" in f).all()
    from fairsqueeze.core.errors import FairsqueezeError

    with pytest.raises(FairsqueezeError, match="no database"):
        fairsqueeze.open_results(f"sqlite:///{tmp_path}/none.db")
    assert not (tmp_path / "none.db").exists()


def test_the_pairs_behind_a_verdict_are_the_exported_csv(stored, tmp_path):
    from fairsqueeze.core.errors import FairsqueezeError
    from fairsqueeze.reports.html import build_report

    res = fairsqueeze.open_results(f"sqlite:///{stored}")
    pairs = res.pairs("fairlrf-vs-truncated-svd", "synthetic")
    # fairlrf at ratio 1.6 between svd's 1.4 and 2.0 on both tasks' seeds; its runs are stored runs
    assert len(pairs) >= 2 and set(pairs["fair_run"]) <= set(res.runs("synthetic")["run_key"])
    assert all(set(t.split()) <= set(res.runs("synthetic")["run_key"]) for t in pairs["twin_runs"])
    assert (pairs["diff"] == pairs["fair"] - pairs["twin"]).all()
    build_report(res.results("synthetic"), "synthetic", tmp_path)
    exported = pd.read_csv(tmp_path / "tables" / "pairs" / "fairlrf-vs-truncated-svd.csv")
    assert exported["fair"].to_numpy() == pytest.approx(pairs["fair"].to_numpy())
    # a claim split by metric is found by either row id; an unknown one is one clear error
    assert res.pairs("fairalm-vs-unconstrained:deo", "synthetic").empty
    with pytest.raises(FairsqueezeError, match="no verdict row 'nope'"):
        res.pairs("nope", "synthetic")
