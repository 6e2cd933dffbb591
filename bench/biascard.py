"""The bias card of a task: how unequal are its groups, and does the dense model show it?

Computed once per dense reference from the training split (group sizes, base rates) and
the dense model's *validation* predictions (per-group accuracy, TPR, FPR), so that deciding
whether a task is informative never touches the test split.

A task is flagged ``informative`` when the dense model's groups differ by at least
``ACCURACY_GAP`` in accuracy or, for binary tasks, by at least ``RATE_GAP`` in TPR or FPR:
below that, a fairness-aware method has nothing measurable to repair.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from .metrics import per_group_table
from .tasks import TaskData

ACCURACY_GAP = 0.02
RATE_GAP = 0.05


def _base_rates(y: np.ndarray, s: np.ndarray, num_classes: int) -> dict[int, float | list[float]]:
    """Binary: P(y=1 | g). Multiclass: the label distribution of each group."""
    rates: dict[int, Any] = {}
    for g in sorted(int(v) for v in np.unique(s) if v >= 0):
        labels = y[s == g]
        hist = np.bincount(labels, minlength=num_classes) / max(len(labels), 1)
        rates[g] = float(hist[1]) if num_classes == 2 else [round(float(v), 4) for v in hist]
    return rates


def bias_card(task: TaskData, dense_val_pred: np.ndarray) -> dict[str, Any]:
    table = per_group_table(task.val.y, dense_val_pred, task.val.s, num_classes=task.num_classes)
    groups = [int(g) for g in table.index]
    gaps = {"accuracy_gap": float(table["accuracy"].max() - table["accuracy"].min()) if len(groups) > 1 else float("nan")}
    if "tpr" in table:
        gaps["tpr_gap"] = float(table["tpr"].max() - table["tpr"].min())
        gaps["fpr_gap"] = float(table["fpr"].max() - table["fpr"].min())
    informative = gaps["accuracy_gap"] >= ACCURACY_GAP or any(
        gaps.get(k, 0) >= RATE_GAP for k in ("tpr_gap", "fpr_gap")
    )
    per_group = {
        g: {
            "name": task.group_names.get(g, str(g)),
            "train_support": int((task.train.s == g).sum()),
            "val_support": int(table.loc[g, "support"]),
            "accuracy": float(table.loc[g, "accuracy"]),
            **({"tpr": float(table.loc[g, "tpr"]), "fpr": float(table.loc[g, "fpr"])} if "tpr" in table else {}),
        }
        for g in groups
    }
    return {
        "groups": per_group,
        "base_rates": _base_rates(task.train.y, task.train.s, task.num_classes),
        "unknown_group_rows": int((task.train.s < 0).sum()),
        **gaps,
        "informative": bool(informative),
        "rule": f"accuracy gap >= {ACCURACY_GAP} or binary TPR/FPR gap >= {RATE_GAP} (dense model, validation)",
    }


def format_bias_card(card: dict[str, Any]) -> str:
    rows = []
    for g, info in card["groups"].items():
        rate = card["base_rates"].get(g, card["base_rates"].get(str(g)))
        row = {"group": f"{g} ({info['name']})", "train": info["train_support"], "val": info["val_support"]}
        if isinstance(rate, float):
            row["base rate"] = rate
        row.update({k: info[k] for k in ("accuracy", "tpr", "fpr") if k in info})
        rows.append(row)
    table = pd.DataFrame(rows).set_index("group").to_string(float_format=lambda v: f"{v:.3f}")
    gaps = ", ".join(f"{k} {card[k]:.3f}" for k in ("accuracy_gap", "tpr_gap", "fpr_gap") if k in card)
    verdict = "informative" if card["informative"] else "NOT informative"
    return f"{table}\n{gaps} -> {verdict} ({card['rule']})"
