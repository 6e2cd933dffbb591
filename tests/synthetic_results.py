"""Synthetic stored results in the shape the store returns (``fairsqueeze.reports.results``
contract): predictions are drawn per run, and every metric is computed from them with
``fairsqueeze.measure.metrics.compute_metrics``, so the numbers obey their definitions."""
from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from fairsqueeze.measure.metrics import compute_metrics
from fairsqueeze.reports.data import Results

# (method, entry label, params, sweep, flip probability per group, compression ratio);
# flips None: constant predictions; "near_constant": class 0 but for a few random rows
ENTRIES = [
    ("dense", "dense", {}, {}, (0.25, 0.10), 1.0),
    ("truncated_svd", "svd", {"layer": "fc2", "k": 4}, {"k": 4}, (0.30, 0.12), 2.0),
    ("truncated_svd", "svd", {"layer": "fc2", "k": 16}, {"k": 16}, (0.27, 0.11), 1.4),
    ("fairlrf", "fairlrf", {"layer": "fc2", "k": 16, "sparsity_rate": 0.2}, {"sparsity_rate": 0.2}, (0.18, 0.12), 1.3),
    ("fairlrf", "fairlrf", {"layer": "fc2", "k": 16, "sparsity_rate": 0.6}, {"sparsity_rate": 0.6}, (0.14, 0.13), 1.6),
    ("slr_w", "slr_w", {"layer": "fc2", "k": 16}, {}, (0.28, 0.12), 1.5),
    ("collapse", "collapse", {}, {}, None, 3.0),  # predicts one class: degenerate
]


def _key(*parts) -> str:
    return hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()[:16]


def make_results(tasks=(("digits: parity / planted", 2),), models=("mlp",), seeds=(0, 1, 2), rows=400,
                 entries=ENTRIES, suite="synthetic", failed=True, seed=0) -> Results:
    rng = np.random.default_rng(seed)
    runs, metrics, footprint, preds, dense = [], {}, {}, {}, []
    summaries = {}
    for t, (task_label, k) in enumerate(tasks):
        task_key = _key("task", t, task_label)
        summaries[task_key] = {"group_names": {"0": "minority <b>", "1": "majority"}, "num_classes": k}
        y = rng.integers(0, k, rows)
        s = (rng.random(rows) < 0.5).astype(int)
        for model in models:
            for sd in seeds:
                dense_key = _key("dense", task_key, model, sd)
                dense.append({"key": dense_key, "task_key": task_key, "task": task_label, "model": model, "seed": sd,
                              "history": [], "bias_card": None})
                for e, (method, entry_label, params, sweep, flips, ratio) in enumerate(entries):
                    key = _key(task_key, model, method, params, sd)
                    if flips is None:
                        y_pred = np.zeros(rows, dtype=int)
                    elif flips == "near_constant":  # class 0 but for a few random rows: near chance, not constant
                        y_pred = np.where(rng.random(rows) < 0.04, rng.integers(0, k, rows), 0)
                    else:
                        flip = rng.random(rows) < np.where(s == 0, flips[0], flips[1])
                        y_pred = np.where(flip, (y + rng.integers(1, k, rows)) % k, y)
                    label = entry_label + ("(" + ",".join(f"{p}={v}" for p, v in sweep.items()) + ")" if sweep else "")
                    runs.append({
                        "suite": suite, "label": label, "entry": e, "entry_label": entry_label, "sweep": sweep,
                        "run_key": key, "task": task_label.split(":")[0], "task_key": task_key, "task_label": task_label,
                        "target": "t", "sensitive": "s", "num_classes": k, "model": model, "method": method,
                        "family": "low-rank" if method != "dense" else "dense", "params": params, "seed": sd,
                        "status": "done", "error": None, "flags": ["degenerate"] if flips is None else [],
                        "info": {"cost": {"passes": {"forward": 1.0, "backward": 2.0}, "steps": 0, "seconds": 0.0},
                                 # what the engine records; FairLRF protects the lower-TPR group, as its claims ask
                                 "protect": {"rule": "tpr" if method == "fairlrf" else "accuracy", "group": 0,
                                             "group_name": "minority <b>"}},
                        "timings": {"apply_s": 0.5 + e},
                        "dense_key": dense_key,
                    })
                    metrics[key] = compute_metrics(y, y_pred, s, num_classes=k)
                    footprint[key] = {"compression_ratio": ratio, "stored_bytes": 4000 / ratio,
                                      "serialized_bytes": 4400 / ratio, "latency_s": 0.001, "params": 1000 / ratio}
                    preds[key] = {"index": np.arange(rows), "y": y, "y_pred": y_pred, "s": s}
    if failed:
        runs.append({**runs[-1], "run_key": _key("failed"), "label": "broken<script>", "entry_label": "broken<script>",
                     "method": "truncated_svd", "status": "failed", "error": "RuntimeError: <b>boom</b>", "sweep": {},
                     "entry": len(entries)})

    def predictions(key, split):
        if key not in preds:
            raise KeyError(key)
        return preds[key]

    return Results(
        runs=pd.DataFrame(runs),
        metrics=pd.DataFrame.from_dict(metrics, orient="index"),
        footprint=pd.DataFrame.from_dict(footprint, orient="index"),
        tasks=summaries,
        dense=pd.DataFrame(dense),
        predictions=predictions,
    )


def write_store(results: Results, store, suite: str = "synthetic") -> None:
    """Write synthetic results into a real store with bulk inserts (one transaction per
    table), in the rows the runner writes: tasks, runs, membership, metrics, footprint,
    predictions."""
    import json

    from fairsqueeze.store import database as schema

    done = results.runs.drop_duplicates("run_key")
    with store.engine.begin() as conn:
        conn.execute(schema.tasks.insert(), [
            {"key": k, "name": k, "summary": json.dumps({**v, "label": lbl, "target": "t", "sensitive": "s"})}
            for k, v, lbl in ((k, v, done.loc[done["task_key"] == k, "task_label"].iloc[0]) for k, v in results.tasks.items())
        ])
        conn.execute(schema.runs.insert(), [
            {"key": r["run_key"], "task": r["task"], "task_key": r["task_key"], "task_label": r["task_label"],
             "model": r["model"], "method": r["method"], "params": json.dumps(r["params"]), "seed": int(r["seed"]),
             "config": "{}", "split_hash": "s" * 16, "data_hash": "d" * 16, "dense_hash": r["dense_key"],
             "status": r["status"], "flags": json.dumps(r["flags"]), "error": r["error"],
             "timings": json.dumps(r["timings"]), "info": json.dumps(r["info"])}
            for r in done.to_dict("records")
        ])
        conn.execute(schema.members.insert(), [
            {"suite": suite, "task_key": r["task_key"], "model": r["model"], "label": r["label"], "seed": int(r["seed"]),
             "run_key": r["run_key"], "entry": int(r["entry"]), "entry_label": r["entry_label"],
             "sweep": json.dumps(r["sweep"])}
            for r in results.runs.to_dict("records")
        ])
        conn.execute(schema.metrics.insert(), [
            {"run_key": key, "split": "test", "name": name, "value": schema._num(v)}
            for key, row in results.metrics.iterrows() for name, v in row.items()
        ])
        conn.execute(schema.footprint.insert(), [
            {"run_key": key, "name": name, "value": float(v)} for key, row in results.footprint.iterrows() for name, v in row.items()
        ])
        conn.execute(schema.predictions.insert(), [
            {"run_key": key, "split": "test", "data": schema._pack(results.predictions(key, "test"))}
            for key in results.metrics.index
        ])
        conn.execute(schema.dense.insert(), [
            {**{k: r[k] for k in ("key", "task_key", "task", "model")}, "seed": int(r["seed"]), "history": "[]",
             "bias_card": None} for r in results.dense.to_dict("records")
        ])
