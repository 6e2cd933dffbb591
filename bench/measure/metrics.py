"""Evaluation metrics: per-group utility, fairness gaps and group support.

Every number the suite reports is a *named definition* in :data:`METRICS`, because
fairness libraries use the same names for different quantities (see
``docs/methods.md`` §1.6). :func:`compute_metrics` returns all of them as one
flat ``dict[str, float]``; :func:`metric_def` maps any returned key to its definition.

Inputs and conventions
----------------------
* ``y`` true labels and ``y_pred`` predicted labels, ints in ``0..K-1``; ``s`` group ids,
  ints ``>= 0``, where ``-1`` means "group unknown".
* Evaluated rows: rows whose group is in ``groups`` (default: every id ``>= 0`` found in
  ``s``). Rows with ``s = -1`` (or a group outside ``groups``) are left out of every group
  metric and of K; only the overall ``accuracy`` and ``support`` count them.
* ``K = num_classes`` when given, else ``max(max y, max y_pred) + 1`` over evaluated rows.
* Binary task: ``K <= 2``, and class 1 is the positive class.
* ``Δ = group 1 − group 0``. Group 0 is the unprivileged group (docs/methods.md §1.1).
* Aggregates over groups: ``*_avg`` is the plain mean of the group values (each group
  weighs 1, as in the FairLRF tables' "Avg." row; it is *not* the pooled metric);
  ``*_diff`` is ``max − min`` over groups, i.e. ``|m1 − m0|`` for two groups.

Empty cells
-----------
A rate whose denominator is an empty cell (a group with no rows; ``tpr`` for a group with
no positives, ...) is NaN and an :class:`EmptyCellWarning` is emitted: reporting 0 would
read as "perfectly fair" or "perfectly wrong". Any aggregate over a NaN is NaN. Two
exceptions come from the reference code that produced the published tables:

1. Per-group macro precision/recall/F1 follow scikit-learn's ``average="macro",
   zero_division=0`` on that group's rows: a label present in the group's ``y ∪ y_pred``
   whose precision (or recall) has a zero denominator contributes 0 to the macro mean.
   A group with no rows is still NaN.
2. The class-wise rates of the EOpp/EOdd family: a zero denominator gives **0 by
   definition** (``empty="zero"``, the default; the FairQuantize code does this). So a class
   absent from one group's rows has TPR 0 there and adds ``|TPR|`` of the other group to
   EOpp1. With ``empty="nan"`` such a rate is undefined instead, and every class with an
   undefined rate in either group is left out of that metric's sum or mean (one warning).

Keys (``{g}`` stands for a group id, e.g. ``precision[g=0]``)
-------------------------------------------------------------
================  =========  ======  ==========================================================
key               kind       better  definition
================  =========  ======  ==========================================================
support           support    –       all rows, unknown-group rows included
support_excluded  support    –       rows left out of group metrics (s = -1 or not in groups)
accuracy          utility    high    accuracy over all rows
support[g]        support    –       rows of group g
accuracy[g]       utility    high    accuracy on group g
precision[g]      utility    high    macro precision on group g (exception 1)
recall[g]         utility    high    macro recall on group g (exception 1)
f1[g]             utility    high    macro F1 on group g (exception 1)
tpr[g]            utility    high    binary: P(ŷ=1 | y=1, g); NaN for multiclass
fpr[g]            utility    low     binary: P(ŷ=1 | y=0, g); NaN for multiclass
<m>_avg           utility    high    mean over groups of <m>[g], m in accuracy/precision/recall/f1
<m>_diff          fairness   low     max − min over groups of <m>[g]
dp_diff           fairness   low     binary: max − min of P(ŷ=1 | g) (Fairlearn's definition);
                                     NaN for multiclass (one key, one scale: use dp_l1 there)
dp_l1             fairness   low     L1 demographic-parity distance Σ_k |P(ŷ=k|g0) − P(ŷ=k|g1)|
                                     (2 × total variation; max over group pairs); binary: 2×
eopp0             fairness   low     (1/K) Σ_k |ΔTNR_k|        one-vs-rest, table form
eopp1             fairness   low     (1/K) Σ_k |ΔTPR_k|        ("EOpp" of the FairLRF tables)
eodd              fairness   low     (1/(2K)) Σ_k |ΔTPR_k + ΔFPR_k|   abs outside the sum
eopp0_sum         fairness   low     Σ_k |ΔTNR_k|              FairLRF paper Eq. 1–2 form
eopp1_sum         fairness   low     Σ_k |ΔTPR_k|
eodd_sum          fairness   low     Σ_k |ΔTPR_k + ΔFPR_k|
deo               fairness   low     FairALM DEO: binary, max − min of tpr[g]; NaN multiclass
ddp_fairalm       fairness   low     FairALM "DDP" as coded: max − min of accuracy[g]
                                     (accuracy parity, not positive-rate parity)
fpr_diff          fairness   low     binary: max − min of fpr[g] (FPR parity); NaN multiclass
================  =========  ======  ==========================================================

The eopp/eodd family is defined for exactly the groups {0, 1} (exception 2 applies to
it); for any other group set those keys are NaN with a :class:`GroupSetWarning`. Every
gap needs at least two groups and is NaN otherwise; a listed group with no rows makes
every gap NaN, the eopp family included (exception 2 covers classes missing from a group,
not a missing group). Note that ``eodd`` takes the absolute value *after* adding ΔTPR and
ΔFPR, so gaps of opposite sign cancel (as in the published code); ``eopp1`` and ``deo``
do not cancel.
"""
from __future__ import annotations

import math
import re
import sys
import warnings
from dataclasses import dataclass
from itertools import combinations
from typing import Literal, Sequence

import numpy as np
import pandas as pd

EmptyMode = Literal["zero", "nan"]
KINDS = ("utility", "fairness", "support")


class EmptyCellWarning(UserWarning):
    """A rate's denominator is an empty cell; the rate is reported as NaN."""


class GroupSetWarning(UserWarning):
    """A metric needs a group set that the data does not have; it is reported as NaN."""


@dataclass(frozen=True)
class MetricDef:
    """One named metric definition; ``higher_is_better`` is None for counts."""

    name: str
    description: str
    higher_is_better: bool | None
    kind: str

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"metric {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")


METRICS: dict[str, MetricDef] = {}


def _define(name: str, kind: str, higher_is_better: bool | None, description: str) -> None:
    METRICS[name] = MetricDef(name, description, higher_is_better, kind)


_define("support", "support", None, "Number of rows, unknown-group rows included.")
_define("support_excluded", "support", None,
        "Rows left out of group metrics: s = -1, or a group not in `groups`.")
_define("accuracy", "utility", True, "Accuracy over all rows, unknown-group rows included.")
_define("support[g]", "support", None, "Number of rows of group g.")
_define("accuracy[g]", "utility", True, "Accuracy on the rows of group g.")
_define("precision[g]", "utility", True,
        "Macro precision on group g's rows, over the labels in that group's y ∪ y_pred; "
        "a label never predicted counts 0 (sklearn average='macro', zero_division=0).")
_define("recall[g]", "utility", True,
        "Macro recall on group g's rows, over the labels in that group's y ∪ y_pred; "
        "a label absent from y counts 0 (sklearn average='macro', zero_division=0).")
_define("f1[g]", "utility", True,
        "Macro F1 on group g's rows: mean over the labels in y ∪ y_pred of 2TP/(2TP+FP+FN).")
_define("tpr[g]", "utility", True, "Binary tasks: P(y_pred=1 | y=1, group g); NaN for multiclass.")
_define("fpr[g]", "utility", False, "Binary tasks: P(y_pred=1 | y=0, group g); NaN for multiclass.")
for _base in ("accuracy", "precision", "recall", "f1"):
    _define(f"{_base}_avg", "utility", True,
            f"Mean of {_base}[g] over groups, each group weighing 1 (not the pooled metric).")
    _define(f"{_base}_diff", "fairness", False,
            f"max - min of {_base}[g] over groups (|m1 - m0| for two groups).")
del _base
_define("dp_diff", "fairness", False,
        "Demographic-parity difference, binary tasks: max - min over groups of P(y_pred=1 | g) "
        "(Fairlearn's definition); NaN for multiclass (see dp_l1).")
_define("dp_l1", "fairness", False,
        "L1 demographic-parity distance: sum_k |P(y_pred=k | g0) - P(y_pred=k | g1)| "
        "(twice the total variation), max over group pairs; equals 2 * dp_diff when binary.")
_define("eopp0", "fairness", False,
        "(1/K) sum_k |dTNR_k|, one-vs-rest per class, d = group1 - group0 (table form).")
_define("eopp1", "fairness", False,
        "(1/K) sum_k |dTPR_k| (table form; the 'EOpp' column of the FairLRF tables).")
_define("eodd", "fairness", False,
        "(1/(2K)) sum_k |dTPR_k + dFPR_k| (table form); gaps of opposite sign cancel.")
_define("eopp0_sum", "fairness", False, "sum_k |dTNR_k| (FairLRF paper equation form).")
_define("eopp1_sum", "fairness", False, "sum_k |dTPR_k| (FairLRF paper equation form).")
_define("eodd_sum", "fairness", False, "sum_k |dTPR_k + dFPR_k| (FairLRF paper equation form).")
_define("deo", "fairness", False,
        "FairALM DEO, binary tasks: max - min of tpr[g] (|TPR_g0 - TPR_g1|); NaN for multiclass.")
_define("ddp_fairalm", "fairness", False,
        "FairALM 'DDP' as its code computes it: max - min of accuracy[g] (accuracy parity).")
_define("fpr_diff", "fairness", False,
        "FPR parity, binary tasks: max - min of fpr[g]; NaN for multiclass.")

EOPP_KEYS = ("eopp0", "eopp1", "eodd", "eopp0_sum", "eopp1_sum", "eodd_sum")
# a per-group key, "f1[g=0]": the metric's name and the group (the one parser of these keys)
GROUP_KEY = re.compile(r"^(\w+)\[g=(-?\d+)\]$")


def group_key(name: str, group: int) -> str:
    """The flat key of a per-group metric, e.g. ``group_key("f1", 0) == "f1[g=0]"``."""
    return f"{name}[g={group}]"


def metric_def(key: str) -> MetricDef:
    """The definition behind any key that :func:`compute_metrics` returns."""
    match = GROUP_KEY.match(key)
    name = f"{match[1]}[g]" if match else key
    try:
        return METRICS[name]
    except KeyError:
        raise KeyError(f"no metric definition for {key!r}") from None


# ---------------------------------------------------------------- input handling


def _as_int_array(name: str, values) -> np.ndarray:
    """1-D int64 copy of ``values``; floats are accepted only when integral."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.dtype == bool or np.issubdtype(arr.dtype, np.integer):
        return arr.astype(np.int64)
    if np.issubdtype(arr.dtype, np.floating) and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
        return arr.astype(np.int64)
    raise ValueError(f"{name} must hold integers, got dtype {arr.dtype}")


@dataclass(frozen=True)
class _Evaluation:
    """Validated inputs reduced to what every metric needs: per-group confusion counts."""

    groups: tuple[int, ...]
    num_classes: int
    confusion: dict[int, np.ndarray]  # group -> K x K counts, rows = true, cols = predicted
    n_rows: int
    n_correct: int
    n_excluded: int

    @property
    def binary(self) -> bool:
        return self.num_classes <= 2


def _resolve_groups(s: np.ndarray, groups: Sequence[int] | None) -> tuple[int, ...]:
    if groups is None:
        return tuple(int(g) for g in np.unique(s[s >= 0]))
    resolved = tuple(sorted({int(g) for g in groups}))
    if any(g < 0 for g in resolved):
        raise ValueError(f"groups must be non-negative ids, got {list(groups)}")
    return resolved


def _resolve_num_classes(y: np.ndarray, y_pred: np.ndarray, keep: np.ndarray,
                         num_classes: int | None) -> int:
    if num_classes is None:
        # K comes from the evaluated rows only, so unknown-group rows cannot change 1/K
        return int(max(y[keep].max(), y_pred[keep].max())) + 1 if keep.any() else 1
    observed = int(max(y.max(), y_pred.max())) + 1 if len(y) else 0
    if num_classes < 1 or num_classes < observed:
        raise ValueError(f"num_classes={num_classes}, but the labels go up to {observed - 1}")
    return int(num_classes)


def _confusion(y: np.ndarray, y_pred: np.ndarray, k: int) -> np.ndarray:
    return np.bincount(y * k + y_pred, minlength=k * k).reshape(k, k)


def _evaluate(y, y_pred, s, num_classes: int | None, groups: Sequence[int] | None) -> _Evaluation:
    y, y_pred, s = (_as_int_array(n, v) for n, v in (("y", y), ("y_pred", y_pred), ("s", s)))
    if not len(y) == len(y_pred) == len(s):
        raise ValueError(f"y, y_pred, s differ in length: {len(y)}, {len(y_pred)}, {len(s)}")
    if len(y) and min(y.min(), y_pred.min()) < 0:
        raise ValueError("labels must be non-negative")
    if len(s) and s.min() < -1:
        raise ValueError("group ids must be >= 0, or -1 for an unknown group")
    chosen = _resolve_groups(s, groups)
    keep = np.isin(s, chosen)
    k = _resolve_num_classes(y, y_pred, keep, num_classes)
    confusion = {g: _confusion(y[s == g], y_pred[s == g], k) for g in chosen}
    return _Evaluation(chosen, k, confusion, len(y), int((y == y_pred).sum()), int((~keep).sum()))


# ---------------------------------------------------------------- rates


def _divide(num: np.ndarray, den: np.ndarray, fill: float) -> np.ndarray:
    """num / den elementwise, ``fill`` where den == 0."""
    num, den = np.asarray(num, float), np.asarray(den, float)
    return np.divide(num, den, out=np.full(np.broadcast(num, den).shape, fill), where=den != 0)


def _warn(message: str, category: type[Warning] = EmptyCellWarning) -> None:
    """Warn at the user's call site: the first frame outside this module."""
    frame, level = sys._getframe(0), 1
    while frame is not None and frame.f_globals.get("__name__") == __name__:
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)


def _macro_prf(cm: np.ndarray) -> tuple[float, float, float]:
    """sklearn-style macro precision, recall, F1 over labels present in y ∪ y_pred."""
    tp, n_true, n_pred = np.diag(cm), cm.sum(axis=1), cm.sum(axis=0)
    present = (n_true + n_pred) > 0
    if not present.any():
        return math.nan, math.nan, math.nan
    precision = _divide(tp, n_pred, 0.0)[present].mean()
    recall = _divide(tp, n_true, 0.0)[present].mean()
    f1 = _divide(2 * tp, n_true + n_pred, 0.0)[present].mean()
    return float(precision), float(recall), float(f1)


def _one_vs_rest_rates(cm: np.ndarray, fill: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class TPR, TNR, FPR from one group's confusion matrix; ``fill`` on 0/0."""
    tp = np.diag(cm)
    fn = cm.sum(axis=1) - tp
    fp = cm.sum(axis=0) - tp
    tn = cm.sum() - tp - fn - fp
    return _divide(tp, tp + fn, fill), _divide(tn, tn + fp, fill), _divide(fp, fp + tn, fill)


def _as_binary(cm: np.ndarray) -> np.ndarray:
    """A binary task's confusion matrix as 2 x 2 (K = 1 when only class 0 occurs)."""
    return np.pad(cm, ((0, 2 - len(cm)), (0, 2 - len(cm))))


def _group_row(group: int, cm: np.ndarray, binary: bool) -> dict[str, float]:
    """Per-group support and rates; warns once for each empty cell."""
    n = int(cm.sum())
    if n == 0:
        _warn(f"group {group} has no rows: its rates are NaN")
    precision, recall, f1 = _macro_prf(cm)
    row = {"support": float(n), "accuracy": float(_divide(np.trace(cm), n, math.nan)),
           "precision": precision, "recall": recall, "f1": f1}
    if binary:
        row.update(_binary_rates(group, _as_binary(cm), warn=n > 0))
    return row


def _binary_rates(group: int, cm: np.ndarray, warn: bool) -> dict[str, float]:
    negatives, positives = cm.sum(axis=1)
    if warn and positives == 0:
        _warn(f"group {group} has no rows with y = 1: tpr[g={group}] is NaN")
    if warn and negatives == 0:
        _warn(f"group {group} has no rows with y = 0: fpr[g={group}] is NaN")
    return {"tpr": float(_divide(cm[1, 1], positives, math.nan)),
            "fpr": float(_divide(cm[0, 1], negatives, math.nan))}


# ---------------------------------------------------------------- aggregates and gaps


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else math.nan


def _spread(values: Sequence[float]) -> float:
    """max − min over groups; NaN with fewer than two groups (a gap needs two)."""
    return float(np.max(values) - np.min(values)) if len(values) >= 2 else math.nan


def _prediction_distribution(cm: np.ndarray) -> np.ndarray:
    return _divide(cm.sum(axis=0), cm.sum(), math.nan)


def _dp_l1(confusions: Sequence[np.ndarray]) -> float:
    """Largest L1 distance between two groups' predicted-label distributions."""
    dists = [_prediction_distribution(cm) for cm in confusions]
    pairs = [float(np.abs(a - b).sum()) for a, b in combinations(dists, 2)]
    return max(pairs) if pairs else math.nan


def _class_gaps(cm0: np.ndarray, cm1: np.ndarray, empty: EmptyMode) -> dict[str, np.ndarray]:
    """Per-class |Δ| terms of EOpp0, EOpp1, EOdd (Δ = group 1 − group 0)."""
    fill = 0.0 if empty == "zero" else math.nan
    tpr0, tnr0, fpr0 = _one_vs_rest_rates(cm0, fill)
    tpr1, tnr1, fpr1 = _one_vs_rest_rates(cm1, fill)
    return {"eopp0": np.abs(tnr1 - tnr0), "eopp1": np.abs(tpr1 - tpr0),
            "eodd": np.abs((tpr1 - tpr0) + (fpr1 - fpr0))}


def _equal_opportunity(cm0: np.ndarray, cm1: np.ndarray, empty: EmptyMode) -> dict[str, float]:
    if empty not in ("zero", "nan"):
        raise ValueError(f'empty must be "zero" or "nan", got {empty!r}')
    empty_groups = [g for g, cm in enumerate((cm0, cm1)) if cm.sum() == 0]
    if empty_groups:
        # the 0/0 -> 0 rule is for classes missing from a group, not for a missing group
        _warn(f"group {empty_groups[0]} has no rows: eopp/eodd are NaN")
        return dict.fromkeys(EOPP_KEYS, math.nan)
    gaps = _class_gaps(cm0, cm1, empty)
    undefined = sum(int(np.isnan(terms).sum()) for terms in gaps.values())
    if undefined:
        _warn(f"{undefined} class-wise EOpp/EOdd terms have an empty denominator "
                    'and are left out (empty="nan")')
    out: dict[str, float] = {}
    for name, terms in gaps.items():
        defined = terms[~np.isnan(terms)]
        # eodd carries the extra 1/2 of the published code (mean of TPR and FPR gaps)
        scale = 2.0 if name == "eodd" else 1.0
        out[name] = float(defined.mean() / scale) if len(defined) else math.nan
        out[f"{name}_sum"] = float(defined.sum()) if len(defined) else math.nan
    return {key: out[key] for key in EOPP_KEYS}


def _eopp_for(ev: _Evaluation, empty: EmptyMode) -> dict[str, float]:
    if ev.groups != (0, 1):
        if len(ev.groups) >= 2:  # fewer than two groups is warned about by the caller
            _warn(f"eopp/eodd are defined for groups (0, 1) only, got {ev.groups}: "
                  "reported as NaN", GroupSetWarning)
        return dict.fromkeys(EOPP_KEYS, math.nan)
    return _equal_opportunity(ev.confusion[0], ev.confusion[1], empty)


def _fairness_gaps(ev: _Evaluation, rows: dict[int, dict[str, float]], empty: EmptyMode) -> dict[str, float]:
    if len(ev.groups) < 2:
        _warn(f"fairness gaps need two groups, got {ev.groups}: reported as NaN", GroupSetWarning)
    confusions = [ev.confusion[g] for g in ev.groups]
    column = lambda name: [rows[g][name] for g in ev.groups]  # noqa: E731
    dp_l1 = _dp_l1(confusions)
    dp_diff = math.nan
    if ev.binary:
        positive_rates = [_prediction_distribution(_as_binary(cm))[1] for cm in confusions]
        dp_diff = _spread(positive_rates)
    out = {"dp_diff": dp_diff, "dp_l1": dp_l1, **_eopp_for(ev, empty)}
    out["deo"] = _spread(column("tpr")) if ev.binary else math.nan
    out["ddp_fairalm"] = _spread(column("accuracy"))
    out["fpr_diff"] = _spread(column("fpr")) if ev.binary else math.nan
    return out


# ---------------------------------------------------------------- public entry points


def compute_metrics(y, y_pred, s, num_classes: int | None = None, *,
                    groups: Sequence[int] | None = None, empty: EmptyMode = "zero") -> dict[str, float]:
    """Every metric in :data:`METRICS` as a flat ``{key: value}`` dict (see module docs).

    ``groups`` fixes the group ids to evaluate (a listed group with no rows gives NaN
    rates); by default they are the ids >= 0 present in ``s``. ``empty`` switches the
    zero-denominator rule of the eopp/eodd family only.
    """
    ev = _evaluate(y, y_pred, s, num_classes, groups)
    if empty not in ("zero", "nan"):
        raise ValueError(f'empty must be "zero" or "nan", got {empty!r}')
    if ev.n_rows == 0:
        _warn("no rows: accuracy is NaN")
    out = {"support": float(ev.n_rows), "support_excluded": float(ev.n_excluded),
           "accuracy": float(_divide(ev.n_correct, ev.n_rows, math.nan))}
    rows = {g: _group_row(g, ev.confusion[g], ev.binary) for g in ev.groups}
    for g, row in rows.items():
        out[group_key("support", g)] = row["support"]
        for name in ("accuracy", "precision", "recall", "f1", "tpr", "fpr"):
            out[group_key(name, g)] = row.get(name, math.nan)
    for name in ("accuracy", "precision", "recall", "f1"):
        values = [rows[g][name] for g in ev.groups]
        out[f"{name}_avg"] = _mean(values)
        out[f"{name}_diff"] = _spread(values)
    out.update(_fairness_gaps(ev, rows, empty))
    return out


def equal_opportunity(y, y_pred, s, num_classes: int | None = None, *,
                      empty: EmptyMode = "zero") -> dict[str, float]:
    """Only the eopp/eodd family (six keys) for groups 0 and 1; see the module docs."""
    ev = _evaluate(y, y_pred, s, num_classes, groups=(0, 1))
    return _equal_opportunity(ev.confusion[0], ev.confusion[1], empty)


def per_group_table(y, y_pred, s, num_classes: int | None = None, *,
                    groups: Sequence[int] | None = None) -> pd.DataFrame:
    """One row per group: support, accuracy, macro precision/recall/F1, tpr/fpr (binary
    tasks only) and the per-class support ``support[y=k]`` of the group's true labels."""
    ev = _evaluate(y, y_pred, s, num_classes, groups)
    records = []
    for g in ev.groups:
        cm = ev.confusion[g]
        record = _group_row(g, cm, ev.binary)
        record.update({f"support[y={k}]": int(n) for k, n in enumerate(cm.sum(axis=1))})
        records.append(record)
    table = pd.DataFrame.from_records(records, index=pd.Index(ev.groups, name="group"))
    return table.astype({"support": int}) if len(table) else table
