"""Results tables read from the store (never recomputed from models)."""
from __future__ import annotations

import re

import numpy as np
import pandas as pd

from .store import Store

PER_GROUP = ("precision", "recall", "f1")
HEADLINE = ("eopp0", "eopp1", "eodd", "dp_diff", "fpr_diff", "accuracy")
_GROUP = re.compile(r"^(\w+)\[g=(-?\d+)\]$")


def _columns(names: list[str]) -> list[str]:
    """Order: per-group P/R/F1 then their avg and diff, fairness, accuracy."""
    cols = []
    for base in PER_GROUP:
        groups = sorted(int(m.group(2)) for n in names if (m := _GROUP.match(n)) and m.group(1) == base)
        cols += [f"{base}[g={g}]" for g in groups] + [f"{base}_avg", f"{base}_diff"]
    return [c for c in cols + list(HEADLINE) if c in names]


def results_tables(store: Store, split: str = "test", suite: str | None = None) -> dict[str, pd.DataFrame]:
    """One table per task: rows (model, method, label), seed-averaged metrics + compression ratio."""
    runs = store.runs_frame(status="done")
    if suite:
        runs = runs[runs["suite"] == suite]
    if runs.empty:
        return {}
    metrics = store.metrics_frame(split)
    metrics = metrics[metrics["run_key"].isin(runs["key"])]
    wide = metrics.pivot_table(index="run_key", columns="name", values="value", aggfunc="first", dropna=False)
    fp = store.footprint_frame()
    cr = fp[fp["name"] == "compression_ratio"].set_index("run_key")["value"].rename("compression_ratio")
    frame = runs.set_index("key")[["task", "model", "method", "label", "seed"]].join(wide).join(cr)
    tables = {}
    for task, rows in frame.groupby("task", sort=True):
        cols = _columns(list(wide.columns)) + ["compression_ratio"]
        agg = rows.groupby(["model", "label"], sort=False)[cols].mean()
        agg.insert(0, "seeds", rows.groupby(["model", "label"], sort=False)["seed"].nunique())
        tables[task] = agg.join(_change_vs_dense(rows, list(wide.columns)))
    return tables


def _change_vs_dense(rows: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    """Per-group accuracy change of every row against the dense reference of its model
    (seed-averaged; NaN where the suite has no dense run for that model)."""
    acc = sorted(n for n in names if (m := _GROUP.match(n)) and m.group(1) == "accuracy")
    means = rows.groupby(["model", "label"], sort=False)[acc].mean()
    dense = rows[rows["method"] == "dense"].groupby("model")[acc].mean()
    change = means - dense.reindex(means.index.get_level_values("model")).to_numpy()
    change.columns = [f"Δacc[g={_GROUP.match(c).group(2)}]" for c in acc]
    return change


def format_table(table: pd.DataFrame) -> str:
    shown = table.copy()
    shown.columns = [c.replace("[g=", "[").replace("precision", "P").replace("recall", "R").replace("f1", "F1") for c in shown.columns]
    with pd.option_context("display.width", 250, "display.max_columns", None, "display.max_colwidth", 40):
        return shown.to_string(float_format=lambda v: "nan" if np.isnan(v) else f"{v:.3f}")
