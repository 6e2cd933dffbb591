"""The bias card of a task: how unequal are its groups, and does the dense model show it?

Computed once per dense reference from the training split (group sizes, base rates) and
the dense model's *validation* predictions (per-group accuracy, TPR, FPR), so that deciding
whether a task is informative never touches the test split. The card also carries the
reference's training evidence (epochs used, validation accuracy, majority-class rate and
the ``underfit`` flag of :mod:`fairsqueeze.measure.convergence`) and, for display only, its test
accuracy.

A task is flagged ``informative`` when the dense model's groups differ by at least
``ACCURACY_GAP`` in accuracy or, for binary tasks, by at least ``RATE_GAP`` in TPR or FPR:
below that, a fairness-aware method has nothing measurable to repair. A dense model with
constant predictions is never informative: its accuracy gap is only the difference of the
groups' base rates. A gap over a rate that is undefined for some group (TPR of a group
without positives) is undefined (NaN), never 0, and does not count towards the flag.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from fairsqueeze.measure.metrics import per_group_table

if TYPE_CHECKING:  # a type hint only: the bias card reads arrays, and the pages import this module
    from fairsqueeze.datasets.base import TaskData

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


def _gap(values: pd.Series) -> float:
    """max − min over the groups; NaN when fewer than two groups or any group's rate is undefined."""
    v = values.to_numpy(float)
    return float(v.max() - v.min()) if len(v) > 1 and np.isfinite(v).all() else math.nan


def bias_card(task: TaskData, dense_val_pred: np.ndarray, reference: dict | None = None,
              dense_test_pred: np.ndarray | None = None) -> dict[str, Any]:
    """``reference``: the underfit evidence of the dense model (``convergence.underfit_flag``);
    ``dense_test_pred``: its test predictions, only to show its test accuracy."""
    table = per_group_table(task.val.y, dense_val_pred, task.val.s, num_classes=task.num_classes)
    groups = [int(g) for g in table.index]
    gaps = {"accuracy_gap": _gap(table["accuracy"])}
    if "tpr" in table:
        gaps["tpr_gap"] = _gap(table["tpr"])
        gaps["fpr_gap"] = _gap(table["fpr"])
    constant = len(np.unique(dense_val_pred)) <= 1
    large = gaps["accuracy_gap"] >= ACCURACY_GAP or any(gaps.get(k, 0) >= RATE_GAP for k in ("tpr_gap", "fpr_gap"))
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
    dense = {"val_accuracy": float(np.mean(dense_val_pred == task.val.y)) if len(dense_val_pred) else math.nan,
             "constant": bool(constant)}
    if dense_test_pred is not None and len(dense_test_pred):
        dense["test_accuracy"] = float(np.mean(dense_test_pred == task.test.y))
    if reference:
        dense.update({k: reference[k] for k in ("epochs_used", "best_epoch", "stopped_early", "majority_rate")})
        dense.update(underfit=bool(reference["underfit"]), underfit_reasons=list(reference["reasons"]))
    return {
        "groups": per_group,
        "base_rates": _base_rates(task.train.y, task.train.s, task.num_classes),
        "unknown_group_rows": int((task.train.s < 0).sum()),
        **gaps,
        "dense": dense,
        "informative": bool(large and not constant),
        "rule": f"accuracy gap >= {ACCURACY_GAP} or binary TPR/FPR gap >= {RATE_GAP} (dense model, validation),"
                " never for a constant dense model",
    }


def is_underfit(card: dict[str, Any] | None) -> bool:
    """Whether a stored card says its dense reference is underfit."""
    return bool(card and card.get("dense", {}).get("underfit"))


def format_bias_card(card: dict[str, Any]) -> str:
    rows = []
    for g, info in card["groups"].items():
        rate = card["base_rates"].get(g, card["base_rates"].get(str(g)))
        row = {"group": f"{g} ({info['name']})", "train": info["train_support"], "val": info["val_support"]}
        if isinstance(rate, float):
            row["base rate"] = rate
        row.update({k: info[k] for k in ("accuracy", "tpr", "fpr") if k in info})
        rows.append(row)
    table = pd.DataFrame(rows).set_index("group").to_string(float_format=lambda v: f"{v:.3f}", na_rep="undefined")
    gaps = ", ".join(f"{k} {_fmt(card[k])}" for k in ("accuracy_gap", "tpr_gap", "fpr_gap") if k in card)
    if card["informative"]:
        verdict = "informative"
    elif card.get("dense", {}).get("constant"):
        verdict = "NOT informative: the dense model is constant, its gap is only the base rates'"
    else:
        verdict = "NOT informative"
    lines = [table, f"{gaps} -> {verdict} ({card['rule']})"]
    dense = card.get("dense")
    if dense:
        parts = [f"val accuracy {_fmt(dense['val_accuracy'])}"]
        if "test_accuracy" in dense:
            parts.append(f"test accuracy {_fmt(dense['test_accuracy'])}")
        if "majority_rate" in dense:
            parts.insert(0, f"{dense['epochs_used']} epoch(s), best {dense['best_epoch']}"
                            f"{' (stopped early)' if dense['stopped_early'] else ''}")
            parts.append(f"majority-class rate {_fmt(dense['majority_rate'])}")
        lines.insert(0, "dense model: " + ", ".join(parts))
        if dense.get("underfit"):
            lines.insert(0, "UNDERFIT reference: " + "; ".join(dense["underfit_reasons"]))
    return "\n".join(lines)


def _fmt(value: float) -> str:
    return "undefined" if value is None or not math.isfinite(value) else f"{value:.3f}"
