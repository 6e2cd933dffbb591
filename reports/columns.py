"""Which columns a comparison table shows, in which group, with which definition.

Binary tasks show the gaps users know from Fairlearn (TPR gap, FPR gap, equalized-odds
difference, demographic-parity difference): the class-mean EOpp0/EOpp1/EOdd are three
copies of one number when K = 2. Multi-class tasks show EOpp0/EOpp1/EOdd in the table
form, with the equation (sum) form as a detail column one click away.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from fairsqueeze.measure.metrics import GROUP_KEY, metric_def

UTILITY = "accuracy"  # the utility axis of every plot and of the leaderboard
EODDS = "eodds_diff"  # derived per run from stored metrics: max(deo, fpr_diff)
WORST_CHANGE = "worst_group_change"
# per-seed change against the dense run of the same seed (``dense_key``): the paired view
DELTA_UTILITY = "delta_accuracy"
DELTA_GAP = "delta_gap"  # of the headline gap of the row's task


@dataclass(frozen=True)
class Column:
    key: str  # the key in the run frame
    label: str  # the header
    group: str  # utility / fairness / cost / change
    description: str
    higher_is_better: bool | None
    detail: str = ""  # CSS class of a column hidden until its toggle is clicked
    digits: int = 3


# Definitions of the columns that are not registry metrics.
DERIVED = {
    EODDS: ("Equalized-odds difference (Fairlearn): max of the TPR gap (deo) and the FPR gap (fpr_diff).", False),
    "compression_ratio": ("Dense stored parameters / stored parameters (the papers' convention).", True),
    "serialized_bytes": ("Bytes written when the model is serialized.", False),
    "latency_s": ("Measured inference latency in seconds (batch, median).", False),
    "apply_s": ("Wall time of the method itself (dense training excluded), seconds.", False),
    "forward_passes": ("Forward passes over data the method reports, summed over their kinds (the run lists each).", False),
    "backward_passes": ("Backward passes over data the method reports, summed over their kinds (the run lists each).", False),
    "steps": ("Optimizer steps the method took.", False),
    "train_s": ("Seconds the method spent training, by its trainer's clock.", False),
    WORST_CHANGE: ("Lowest per-group accuracy change against the dense model of the same seed.", True),
}


def is_binary(num_classes: int) -> bool:
    return int(num_classes) <= 2


def headline_gap(num_classes: int) -> str:
    """The unfairness axis: equalized-odds difference (binary) or EOdd table form."""
    return EODDS if is_binary(num_classes) else "eodd"


def _metric(key: str, label: str, group: str, detail: str = "") -> Column:
    d = metric_def(key)
    return Column(key, label, group, d.description, d.higher_is_better, detail)


def _derived(key: str, label: str, group: str, digits: int = 3) -> Column:
    description, better = DERIVED[key]
    return Column(key, label, group, description, better, digits=digits)


def groups_in(keys, base: str) -> list[int]:
    return sorted(int(m.group(2)) for k in keys if (m := GROUP_KEY.match(k)) and m.group(1) == base)


def comparison_columns(metric_keys, num_classes: int) -> list[Column]:
    """Every column of a comparison table, for the metric keys a store holds."""
    keys = set(metric_keys)
    # cost first, next to the method's name: the compression is what a row is compared at
    cols: list[Column] = [
        _derived("compression_ratio", "ratio", "cost", 2),
        _derived("serialized_bytes", "bytes", "cost", 0),
        _derived("latency_s", "latency s", "cost", 4),
        _derived("apply_s", "method s", "cost", 2),
        _derived("forward_passes", "fwd passes", "cost", 1),
        _derived("backward_passes", "bwd passes", "cost", 1),
        _derived("steps", "steps", "cost", 0),
        _derived("train_s", "train s", "cost", 2),
    ]
    for base, short in (("precision", "P"), ("recall", "R"), ("f1", "F1")):
        cols += [_metric(f"{base}[g={g}]", f"{short}[{g}]", "utility", "detail-groups") for g in groups_in(keys, base)]
        cols += [_metric(f"{base}_avg", f"{short} avg", "utility"), _metric(f"{base}_diff", f"{short} diff", "utility")]
    cols.append(_metric("accuracy", "accuracy", "utility"))
    if is_binary(num_classes):
        cols += [
            _metric("deo", "TPR gap", "fairness"),
            _metric("fpr_diff", "FPR gap", "fairness"),
            _derived(EODDS, "EOdds diff", "fairness"),
            _metric("dp_diff", "DP diff", "fairness"),
        ]
    else:
        cols += [_metric(k, k, "fairness") for k in ("eopp0", "eopp1", "eodd")]
        cols += [_metric(f"{k}_sum", f"{k}_sum", "fairness", "detail-sum") for k in ("eopp0", "eopp1", "eodd")]
    for g in groups_in(keys, "accuracy"):
        cols.append(Column(f"change_acc[g={g}]", f"Δacc[{g}]", "change",
                           f"Accuracy change of group {g} against the dense model of the same seed.", True))
    cols.append(_derived(WORST_CHANGE, "worst Δacc", "change"))
    return [c for c in cols if c.key in keys or c.key in DERIVED or c.group == "change"]


def add_derived(frame: pd.DataFrame) -> pd.DataFrame:
    """Per-run columns computed from stored values: the equalized-odds difference, the
    method's time and cost, and the per-group accuracy change against the dense run of
    the same (task, model, seed) in the same frame."""
    frame = frame.copy()
    if "deo" in frame and "fpr_diff" in frame:
        frame[EODDS] = frame[["deo", "fpr_diff"]].max(axis=1, skipna=False)
    frame["apply_s"] = frame["timings"].map(lambda t: (t or {}).get("apply_s", np.nan))
    costs = [run_cost(info) for info in frame["info"]]
    for i, key in enumerate(("forward_passes", "backward_passes", "steps", "train_s")):
        frame[key] = [c[i] for c in costs]
    acc = [f"accuracy[g={g}]" for g in groups_in(frame.columns, "accuracy")]
    dense = frame[frame["method"] == "dense"].drop_duplicates("dense_key").set_index("dense_key")[acc]
    base = dense.reindex(frame["dense_key"]).to_numpy()
    change = frame[acc].to_numpy(dtype=float) - base
    for i, key in enumerate(acc):
        frame[key.replace("accuracy", "change_acc")] = change[:, i]
    frame[WORST_CHANGE] = np.nan if not acc else np.nanmin(np.where(np.isnan(change), np.inf, change), axis=1)
    frame.loc[np.isinf(frame[WORST_CHANGE]), WORST_CHANGE] = np.nan
    frame["headline_gap"] = _headline_values(frame)
    for delta, key in ((DELTA_UTILITY, UTILITY), (DELTA_GAP, "headline_gap")):
        frame[delta] = against_dense(frame, key)
    return frame.drop(columns="headline_gap")


def _headline_values(frame: pd.DataFrame) -> np.ndarray:
    """Each row's headline gap (``headline_gap`` of its task's number of classes)."""
    binary = frame["num_classes"].map(lambda k: pd.notna(k) and is_binary(k)).to_numpy(bool)
    eodds = frame[EODDS].to_numpy(float) if EODDS in frame else np.full(len(frame), np.nan)
    eodd = frame["eodd"].to_numpy(float) if "eodd" in frame else np.full(len(frame), np.nan)
    return np.where(binary, eodds, eodd)


def against_dense(frame: pd.DataFrame, key: str) -> np.ndarray:
    """``frame[key]`` minus the value of the dense run of the same (task, model, seed) in the
    frame (``dense_key``); NaN where that dense run is absent."""
    dense = frame[frame["method"] == "dense"].drop_duplicates("dense_key").set_index("dense_key")[key]
    return frame[key].to_numpy(float) - dense.reindex(frame["dense_key"]).to_numpy(float)


def run_cost(info) -> tuple[float, float, float, float]:
    """(forward passes, backward passes, optimizer steps, training seconds) of a run's stored
    cost, each summed over its kinds; NaN where the method reported none. Stores written before
    the cost was typed kept all four in one ``passes`` dict: they are told apart by name."""
    info = info or {}
    if isinstance(info.get("cost"), dict):
        cost = info["cost"]
        passes, steps, seconds = cost.get("passes") or {}, [cost.get("steps")], [cost.get("seconds")]
    else:
        passes = info.get("passes") or {}
        steps = [v for k, v in passes.items() if k.endswith("steps")]
        seconds = [v for k, v in passes.items() if k.endswith("seconds")]

    def total(values) -> float:
        values = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        return float(sum(values)) if values and any(values) else np.nan

    return (total(v for k, v in passes.items() if k.endswith("forward")),
            total(v for k, v in passes.items() if k.endswith("backward")), total(steps), total(seconds))
