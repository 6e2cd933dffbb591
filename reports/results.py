"""Results read from the store (never recomputed from models), selected through suite membership.

- :func:`suite_runs`: one row per (suite, entry label) -> run, with the run's identity and state;
- :func:`metric_table` / :func:`footprint_table`: wide tables indexed by run key;
- :func:`results_tables`: seed means per task identity (dataset + options), rows (model, label).
"""
from __future__ import annotations


import numpy as np
import pandas as pd
from fairsqueeze.measure.metrics import GROUP_KEY
from fairsqueeze.store.reader import Store

PER_GROUP = ("precision", "recall", "f1")
HEADLINE = ("eopp0", "eopp1", "eodd", "dp_diff", "fpr_diff", "accuracy")

RUN_COLUMNS = ["run_key", "task", "task_key", "task_label", "method", "family", "method_order", "params", "status",
               "error", "flags", "info", "timings", "dense_key", "split_hash", "data_hash"]
OTHER_FAMILY = "other"  # the family of a run stored before families were recorded


def suite_runs(store: Store, suite: str | None = None) -> pd.DataFrame:
    """Every membership of ``suite`` (all suites when None) joined with its run row.

    Columns: suite, label, entry, entry_label, sweep, model, seed, run_key, task, task_key,
    task_label, target, sensitive, num_classes, method, family, params, status, error, flags,
    info, timings, dense_key, split_hash, data_hash. A member whose run was never started has
    status "pending".
    """
    members = store.members_frame(suite)
    runs = store.runs_frame(keys=members["run_key"].unique()).rename(columns={"key": "run_key",
                                                                            "dense_hash": "dense_key"})
    runs = runs.drop(columns=["model", "seed"])
    frame = members.merge(runs[[c for c in RUN_COLUMNS if c in runs]], on="run_key", how="left", suffixes=("", "_run"))
    frame = frame.drop(columns=[c for c in frame if c.endswith("_run")])
    frame["status"] = frame["status"].fillna("pending")
    frame["flags"] = frame["flags"].map(lambda v: v if isinstance(v, list) else [])
    summaries = store.task_summaries()
    for column in ("target", "sensitive", "num_classes"):
        frame[column] = frame["task_key"].map(lambda k, c=column: summaries.get(k, {}).get(c))
    frame["task_label"] = frame["task_label"].fillna(frame["task_key"].map(lambda k: summaries.get(k, {}).get("label")))
    # stored with the run, so a page renders where the plugin is not installed
    if "family" not in frame:
        frame["family"] = None
    frame["family"] = frame["family"].where(frame["family"].notna(), OTHER_FAMILY)
    if "method_order" not in frame:
        frame["method_order"] = np.nan
    return frame.sort_values(["suite", "task_label", "model", "entry", "label", "seed"], kind="stable").reset_index(drop=True)


def metric_table(store: Store, run_keys, split: str = "test") -> pd.DataFrame:
    """Index run key, one column per metric key, on ``split``."""
    metrics = store.metrics_frame(split, keys=list(run_keys))
    return metrics.pivot_table(index="run_key", columns="name", values="value", aggfunc="first", dropna=False)


def footprint_table(store: Store, run_keys) -> pd.DataFrame:
    """Index run key, one column per footprint key (compression_ratio, stored_bytes, latency_s, ...)."""
    fp = store.footprint_frame(keys=list(run_keys))
    return fp.pivot_table(index="run_key", columns="name", values="value", aggfunc="first", dropna=False)


def _columns(names: list[str]) -> list[str]:
    """Order: per-group P/R/F1 then their avg and diff, fairness, accuracy."""
    cols = []
    for base in PER_GROUP:
        groups = sorted(int(m.group(2)) for n in names if (m := GROUP_KEY.match(n)) and m.group(1) == base)
        cols += [f"{base}[g={g}]" for g in groups] + [f"{base}_avg", f"{base}_diff"]
    return [c for c in cols + list(HEADLINE) if c in names]


def results_tables(store: Store, split: str = "test", suite: str | None = None) -> dict[str, pd.DataFrame]:
    """One table per task identity (titled by its label), rows (model, label): seed-averaged
    metrics, compression ratio, per-group accuracy change against the dense row, the
    unprivileged group a method used (``c0``) and the runs' flags."""
    members = suite_runs(store, suite)
    done = members[members["status"] == "done"].drop_duplicates(["task_key", "model", "label", "seed"])
    if done.empty:
        return {}
    wide = metric_table(store, done["run_key"].unique(), split)
    fp = footprint_table(store, done["run_key"].unique())
    cr = fp["compression_ratio"] if "compression_ratio" in fp else pd.Series(dtype=float, name="compression_ratio")
    frame = done.set_index("run_key", drop=False)[["task_key", "task_label", "model", "method", "label", "seed",
                                                   "flags", "info"]]
    frame = frame.join(wide, on="run_key").join(cr.rename("compression_ratio"), on="run_key")
    tables = {}
    for _, rows in frame.groupby("task_key", sort=False):
        cols = _columns(list(wide.columns)) + ["compression_ratio"]
        keys = ["model", "label"]
        agg = rows.groupby(keys, sort=False)[cols].mean()
        agg.insert(0, "seeds", rows.groupby(keys, sort=False)["seed"].nunique())
        agg = agg.join(_change_vs_dense(rows, list(wide.columns)))
        agg["c0"] = rows.groupby(keys, sort=False)["info"].agg(_unprivileged)
        agg["flags"] = rows.groupby(keys, sort=False)["flags"].agg(lambda f: ",".join(sorted(set().union(*f))))
        tables[rows["task_label"].iloc[0]] = agg
    return dict(sorted(tables.items()))


def _unprivileged(infos: pd.Series) -> str:
    groups = sorted({str(i.get("unprivileged_group")) for i in infos if isinstance(i, dict) and "unprivileged_group" in i})
    return "/".join(groups)


def _change_vs_dense(rows: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    """Per-group accuracy change of every row against the dense reference of its model
    (seed-averaged; NaN where the suite has no dense run for that model)."""
    acc = sorted(n for n in names if (m := GROUP_KEY.match(n)) and m.group(1) == "accuracy")
    means = rows.groupby(["model", "label"], sort=False)[acc].mean()
    dense = rows[rows["method"] == "dense"].groupby("model")[acc].mean()
    change = means - dense.reindex(means.index.get_level_values("model")).to_numpy()
    change.columns = [f"Δacc[g={GROUP_KEY.match(c).group(2)}]" for c in acc]
    return change


def format_table(table: pd.DataFrame) -> str:
    shown = table.copy()
    shown.columns = [c.replace("[g=", "[").replace("precision", "P").replace("recall", "R").replace("f1", "F1") for c in shown.columns]
    with pd.option_context("display.width", 250, "display.max_columns", None, "display.max_colwidth", 40):
        return shown.to_string(float_format=lambda v: "nan" if np.isnan(v) else f"{v:.3f}")
