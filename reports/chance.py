"""The near-chance flag, derived when results are read.

A model whose accuracy is within a few points of always predicting the majority class,
overall or on one group, has learnt next to nothing there, even when its predictions are
not constant (which the engine's ``degenerate`` flag catches): its small gaps are not
fairness. It is treated like a degenerate run: never bold, never on a front, never "best".

A check only applies where the dense model of the same seed clears it, and a model is near
chance there only if it also keeps less than a quarter of the dense model's gain over the
majority rate: on a group whose labels are nearly all one class (adult's women: 89 %), a
good model is itself only a few points above the rate, and a small loss is not a collapse.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .columns import groups_in

FLAG = "near_chance"
MARGIN = 0.03  # accuracy at most this far above the majority rate is near chance ...
KEEP = 0.25  # ... when it also keeps at most this share of the dense model's gain over the rate


def majority_rates(y, s) -> dict:
    """Share of the most frequent label, overall and per group (s < 0: unknown group)."""
    y, s = np.asarray(y).astype(int), np.asarray(s).astype(int)
    rates = {"overall": float(np.bincount(y).max() / len(y)) if len(y) else np.nan}
    for g in np.unique(s[s >= 0]):
        labels = y[s == g]
        rates[int(g)] = float(np.bincount(labels).max() / len(labels))
    return rates


def near_chance(frame: pd.DataFrame, rates: dict[str, dict], margin: float = MARGIN) -> pd.Series:
    """Per row of a finished-run frame (``Results.done()`` columns): is its accuracy, overall
    or on a group, within ``margin`` of the task's majority rate and below a quarter of the
    gain of the dense run of the same seed (``dense_key``), where that dense run is not
    within ``margin``? ``rates``: task key -> :func:`majority_rates`."""
    near = np.zeros(len(frame), dtype=bool)
    if frame.empty:
        return pd.Series(near, index=frame.index)
    dense = frame[frame["method"] == "dense"].drop_duplicates("dense_key").set_index("dense_key")
    checks = [("accuracy", "overall")] + [(f"accuracy[g={g}]", g) for g in groups_in(frame.columns, "accuracy")]
    for column, group in checks:
        if column not in frame:
            continue
        rate = frame["task_key"].map(lambda k, g=group: (rates.get(k) or {}).get(g, np.nan)).to_numpy(float)
        accuracy = frame[column].to_numpy(float)
        reference = dense[column].reindex(frame["dense_key"]).to_numpy(float) if column in dense else np.full(len(frame), np.nan)
        gain, dense_gain = accuracy - rate, reference - rate
        informative = ~(dense_gain <= margin)  # no dense run (NaN) -> the check applies
        kept = gain > KEEP * dense_gain  # False where the dense gain is unknown
        near |= informative & (gain <= margin) & ~kept
    near &= (frame["method"] != "dense").to_numpy()
    return pd.Series(near, index=frame.index)


def with_flag(frame: pd.DataFrame, rates: dict[str, dict]) -> pd.DataFrame:
    """``frame`` with ``near_chance`` added to the flags of the rows it applies to (a
    degenerate run, already flagged for constant predictions, is left as it is)."""
    degenerate = frame["flags"].map(lambda f: "degenerate" in (f or ())).to_numpy(bool)
    flagged = near_chance(frame, rates) & ~degenerate
    if not flagged.any():
        return frame
    frame = frame.copy()
    frame["flags"] = [list(f or []) + [FLAG] if hit and FLAG not in (f or []) else f
                      for f, hit in zip(frame["flags"], flagged)]
    return frame
