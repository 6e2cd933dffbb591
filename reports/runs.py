"""Per-run detail records: configuration, resolved parameters, hashes, footprint, timings
and per-group confusion matrices, all read from the store."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix

from fairsqueeze.metrics import per_group_table

from .data import Results

MAX_CONFUSION_CLASSES = 10  # larger matrices are left out of the page (the per-group table stays)
HASH_COLUMNS = ("run_key", "dense_key", "task_key", "split_hash", "data_hash")


@dataclass
class RunDetail:
    run_key: str
    title: str
    status: str
    record: dict[str, Any]  # suite, label, task, model, method, seed, ...
    params: dict[str, Any]
    hashes: dict[str, str]
    footprint: dict[str, float]
    timings: dict[str, Any]
    info: dict[str, Any]
    flags: list[str]
    error: str | None
    groups: pd.DataFrame | None = None  # per_group_table of the stored predictions
    confusions: dict[str, pd.DataFrame] = field(default_factory=dict)  # group name -> matrix


def _clean(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def run_details(results: Results, with_predictions: bool = True) -> list[RunDetail]:
    """One detail record per distinct run of ``results`` (a run shared by several suite
    entries appears once)."""
    details = []
    fp = results.footprint
    for _, r in results.runs.drop_duplicates("run_key").iterrows():
        key = r["run_key"]
        foot = {k: _clean(v) for k, v in fp.loc[key].items()} if key in fp.index else {}
        detail = RunDetail(
            run_key=key,
            title=f"{r['task_label']} · {r['model']} · {r['label']} · seed {r['seed']}",
            status=r["status"],
            record={k: _clean(r.get(k)) for k in ("suite", "label", "entry_label", "task_label", "target", "sensitive",
                                                  "num_classes", "model", "method", "family", "seed", "sweep")},
            params=dict(r.get("params") or {}),
            hashes={k: str(r[k]) for k in HASH_COLUMNS if k in r and isinstance(r[k], str)},
            footprint=foot,
            timings=dict(r.get("timings") or {}),
            info=dict(r.get("info") or {}),
            flags=list(r.get("flags") or []),
            error=r.get("error") if isinstance(r.get("error"), str) else None,
        )
        if with_predictions and r["status"] == "done" and results.predictions is not None:
            _add_groups(detail, results, int(r["num_classes"]), results.tasks.get(r["task_key"], {}))
        details.append(detail)
    return details


def _add_groups(detail: RunDetail, results: Results, num_classes: int, summary: dict) -> None:
    try:
        p = results.predictions(detail.run_key, results.split)
    except KeyError:
        return
    names = {str(k): v for k, v in (summary.get("group_names") or {}).items()}
    detail.groups = per_group_table(p["y"], p["y_pred"], p["s"], num_classes=num_classes)
    if num_classes > MAX_CONFUSION_CLASSES:
        return
    labels = np.arange(num_classes)
    for g in detail.groups.index:
        rows = p["s"] == g
        cm = confusion_matrix(p["y"][rows], p["y_pred"][rows], labels=labels)
        name = f"group {g}" + (f" ({names[str(g)]})" if str(g) in names else "")
        detail.confusions[name] = pd.DataFrame(cm, index=[f"y={k}" for k in labels], columns=[f"ŷ={k}" for k in labels])
