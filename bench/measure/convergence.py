"""Is a dense reference worth compressing? The ``underfit`` flag and its evidence.

A reference is ``underfit`` when its training record shows it was still improving when the
epoch budget ran out (the best validation epoch is the last one and early stopping never
fired), or when its validation accuracy is within ``MAJORITY_MARGIN`` of the majority-class
rate (it has learnt little more than the base rate; a method that retrains it would "beat" it
by training it further). Only validation enters the rule; the test split never decides it.
"""
from __future__ import annotations

from typing import Any

import numpy as np

MAJORITY_MARGIN = 0.02


def majority_rate(train_y: np.ndarray, val_y: np.ndarray) -> float:
    """Validation accuracy of always predicting the most frequent training label."""
    labels = np.asarray(train_y)
    labels = labels[labels >= 0]
    if len(labels) == 0 or len(val_y) == 0:
        return float("nan")
    return float(np.mean(np.asarray(val_y) == np.bincount(labels).argmax()))


def underfit_flag(record: dict[str, Any], majority: float) -> dict[str, Any]:
    """The flag and its evidence from a training record (``EarlyStopping.record``).

    ``record`` holds ``epochs_used``, ``best_epoch`` (1-based), ``stopped_early`` and the
    per-epoch ``val_accuracy``; ``val_accuracy`` of the returned evidence is the accuracy of the
    weights kept (the best epoch when they were restored, the last one otherwise)."""
    epochs, best = int(record["epochs_used"]), int(record["best_epoch"])
    kept = best if record.get("restored") else epochs
    accuracy = float(record["val_accuracy"][kept - 1]) if epochs else float("nan")
    still_improving = epochs > 0 and not record["stopped_early"] and best == epochs
    near_majority = not accuracy - majority > MAJORITY_MARGIN  # NaN counts as near
    reasons = []
    if still_improving:
        reasons.append(f"validation loss still falling at the last of {epochs} epoch(s)")
    if near_majority:
        reasons.append(f"validation accuracy {accuracy:.3f} within {MAJORITY_MARGIN} of the majority-class rate {majority:.3f}")
    return {"underfit": bool(reasons), "reasons": reasons, "epochs_used": epochs, "best_epoch": best,
            "stopped_early": bool(record["stopped_early"]), "still_improving": still_improving,
            "val_accuracy": accuracy, "majority_rate": majority, "margin": MAJORITY_MARGIN}
