"""Worst-group accuracy, per-group accuracy change and flip rate against the dense model."""
import numpy as np
import pytest

from tiny import tiny_suite
from fairsqueeze.datasets.base import data_root
from fairsqueeze.engine.runner import Runner, resolve_device
from fairsqueeze.reports.against_dense import accuracy_change, against_dense, against_dense_table, flip_rate
from fairsqueeze.reports.data import load
from fairsqueeze.store.database import Store

# 8 rows, groups 0 (rows 0-3) and 1 (rows 4-7), and one row of unknown group (-1) at the end.
Y = np.array([1, 0, 1, 0, 1, 1, 0, 0, 1])
S = np.array([0, 0, 0, 0, 1, 1, 1, 1, -1])
DENSE = np.array([1, 0, 0, 0, 1, 1, 0, 1, 0])  # group 0: 3/4 right; group 1: 3/4 right
RUN = np.array([1, 1, 1, 0, 0, 0, 0, 1, 1])  # group 0: 3/4 right (rows 1, 2 flipped); group 1: 1/4 right (rows 4, 5 flipped)


def preds(y_pred):
    return {"index": np.arange(9), "y": Y, "y_pred": y_pred, "s": S}


def test_the_three_quantities_by_hand():
    values = against_dense(preds(RUN), preds(DENSE))
    assert values["worst_group_accuracy"] == 0.25
    assert accuracy_change(preds(RUN), preds(DENSE)) == {0: 0.0, 1: 0.25 - 0.75}
    # group 0 kept its accuracy yet half its predictions changed: the flip rate sees what accuracy hides
    assert flip_rate(preds(RUN), preds(DENSE)) == {0: 0.5, 1: 0.5}
    assert values["flip_rate[g=0]"] == 0.5 and values["accuracy_change[g=1]"] == -0.5
    assert flip_rate(preds(DENSE), preds(DENSE)) == {0: 0.0, 1: 0.0}


def test_predictions_of_other_rows_are_refused():
    other = preds(RUN) | {"index": np.arange(1, 10)}
    with pytest.raises(ValueError, match="same rows"):
        flip_rate(other, preds(DENSE))


def test_the_table_pairs_each_run_with_its_seeds_dense_model(isolated):
    suite = tiny_suite(["dense", {"name": "magnitude_prune", "params": {"ratio": 0.6}}], seeds=(0, 1), epochs=1)
    store = Store(f"sqlite:///{isolated}/r.db")
    Runner(store, data_root(), resolve_device("cpu")).run(suite)
    table = against_dense_table(load(store, suite.name)).set_index("seed")
    runs = store.runs_frame().set_index(["method", "seed"])
    assert sorted(table.index) == [0, 1]
    for seed in (0, 1):
        run = store.predictions(runs.loc[("magnitude_prune", seed), "key"], "test")
        dense = store.predictions(runs.loc[("dense", seed), "key"], "test")
        changed = run["y_pred"] != dense["y_pred"]
        for g in (0, 1):
            rows = run["s"] == g
            assert table.loc[seed, f"flip_rate[g={g}]"] == pytest.approx(changed[rows].mean())
            change = (run["y"] == run["y_pred"])[rows].mean() - (dense["y"] == dense["y_pred"])[rows].mean()
            assert table.loc[seed, f"accuracy_change[g={g}]"] == pytest.approx(change)


def test_the_python_api_reads_the_same_table(isolated):
    from fairsqueeze.reports.api import open_results

    suite = tiny_suite(["dense", {"name": "magnitude_prune", "params": {"ratio": 0.6}}], epochs=1)
    url = f"sqlite:///{isolated}/r.db"
    Runner(Store(url), data_root(), resolve_device("cpu")).run(suite)
    table = open_results(url).against_dense(suite.name)
    assert len(table) == 1 and table.iloc[0]["label"].startswith("magnitude_prune")
    assert 0 <= table.iloc[0]["flip_rate[g=0]"] <= 1
