"""What compression did to each group, read from stored predictions against the dense model
of the same seed (the run with the same dense reference): never recomputed from a model.

- ``worst_group_accuracy``: the lowest per-group accuracy;
- ``accuracy_change[g]``: the group's accuracy minus the dense model's on the same rows (the
  per-group change that "Balancing Act" (ICLR 2024) bounds);
- ``flip_rate[g]``: the share of the group's rows whose prediction differs from the dense
  model's (Hooker et al.'s compression-identified exemplars, per group).

Rows of unknown group (s < 0) are left out, as in every group metric.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from fairsqueeze.measure.metrics import group_key


def groups_of(s: np.ndarray) -> list[int]:
    return sorted(int(g) for g in np.unique(s[s >= 0]))


def group_accuracy(y: np.ndarray, y_pred: np.ndarray, s: np.ndarray) -> dict[int, float]:
    return {g: float(np.mean(y[s == g] == y_pred[s == g])) for g in groups_of(s)}


def worst_group_accuracy(y: np.ndarray, y_pred: np.ndarray, s: np.ndarray) -> float:
    return min(group_accuracy(y, y_pred, s).values())


def aligned(run: dict[str, np.ndarray], dense: dict[str, np.ndarray]) -> None:
    """Refuse predictions of different rows: a change is only meaningful on the same examples."""
    if not np.array_equal(run["index"], dense["index"]) or not np.array_equal(run["s"], dense["s"]):
        raise ValueError("the run's and the dense model's predictions are not on the same rows")


def accuracy_change(run: dict[str, np.ndarray], dense: dict[str, np.ndarray]) -> dict[int, float]:
    """Per group: the run's accuracy minus the dense model's."""
    aligned(run, dense)
    after = group_accuracy(run["y"], run["y_pred"], run["s"])
    before = group_accuracy(dense["y"], dense["y_pred"], dense["s"])
    return {g: after[g] - before[g] for g in after}


def flip_rate(run: dict[str, np.ndarray], dense: dict[str, np.ndarray]) -> dict[int, float]:
    """Per group: the share of rows whose prediction the compression changed."""
    aligned(run, dense)
    s = run["s"]
    changed = run["y_pred"] != dense["y_pred"]
    return {g: float(changed[s == g].mean()) for g in groups_of(s)}


def against_dense(run: dict[str, np.ndarray], dense: dict[str, np.ndarray]) -> dict[str, float]:
    """The three quantities of one run as flat metric-style keys (``flip_rate[g=0]``, ...)."""
    out = {"worst_group_accuracy": worst_group_accuracy(run["y"], run["y_pred"], run["s"])}
    out.update({group_key("accuracy_change", g): v for g, v in accuracy_change(run, dense).items()})
    out.update({group_key("flip_rate", g): v for g, v in flip_rate(run, dense).items()})
    return out


def against_dense_table(results) -> pd.DataFrame:
    """One row per finished run of ``results`` (a :class:`fairsqueeze.reports.data.Results`)
    that has a finished dense run with the same dense reference: run_key, task_key, model,
    label, seed and the keys of :func:`against_dense` on ``results.split``."""
    done = results.runs[results.runs["status"] == "done"].drop_duplicates("run_key")
    dense = done[done["method"] == "dense"].drop_duplicates("dense_key").set_index("dense_key")["run_key"]
    rows = done[(done["method"] != "dense") & done["dense_key"].isin(dense.index)]
    keys = list(rows["run_key"]) + list(dense.loc[rows["dense_key"].unique()])
    if results.predictions_many is not None:
        preds = results.predictions_many(keys, results.split)
    else:
        preds = {k: results.predictions(k, results.split) for k in keys}
    out = []
    for row in rows.itertuples(index=False):
        values = against_dense(preds[row.run_key], preds[dense[row.dense_key]])
        out.append({"run_key": row.run_key, "task_key": row.task_key, "model": row.model, "label": row.label,
                    "seed": row.seed, **values})
    return pd.DataFrame(out)
