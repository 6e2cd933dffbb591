"""Which group a fairness method protects: the group the dense model serves worse on
validation, by a named rule.

The rule has to match the claim's metric: on adult the dense model is less *accurate* on men
but has the lower *TPR* on women, so a method that protects the less accurate group cannot
be expected to close an equal-opportunity gap. ``accuracy`` is the rule the FairLRF,
FairPrune and FairQuantize papers state; ``tpr`` fits equal-opportunity claims.
"""
from __future__ import annotations

import warnings

import numpy as np

from fairsqueeze.measure.metrics import EmptyCellWarning, compute_metrics, group_key

# rule -> the per-group metric key whose lowest value names the protected group. For a
# multiclass task ``tpr`` reads the macro recall (the mean of the class-wise TPRs).
PROTECT_RULES = {"accuracy": "accuracy", "tpr": "tpr"}
DEFAULT_RULE = "accuracy"


def group_scores(y: np.ndarray, y_pred: np.ndarray, s: np.ndarray, rule: str, num_classes: int | None = None) -> dict[int, float]:
    """Each known group's value of the rule's metric on the given predictions."""
    if rule not in PROTECT_RULES:
        raise ValueError(f"unknown protect rule {rule!r} (known: {', '.join(PROTECT_RULES)})")
    groups = sorted(int(g) for g in np.unique(s[s >= 0]))
    with warnings.catch_warnings():  # an empty cell is NaN here; the run's own metrics warn about it
        warnings.simplefilter("ignore", EmptyCellWarning)
        metrics = compute_metrics(y, y_pred, s, num_classes=num_classes)
    key = PROTECT_RULES[rule]
    if key == "tpr" and np.isnan(metrics.get(group_key("tpr", groups[0]), np.nan)):
        key = "recall"  # multiclass: TPR is per class, use their mean
    return {g: float(metrics[group_key(key, g)]) for g in groups}


def worse_group(y: np.ndarray, y_pred: np.ndarray, s: np.ndarray, rule: str = DEFAULT_RULE,
                num_classes: int | None = None) -> int:
    """The group with the lowest value of the rule's metric (ties: the lowest group id). A group
    where the metric is undefined (no positives for TPR) is passed over; where it is undefined
    for every group, the accuracy rule decides."""
    scores = {g: v for g, v in group_scores(y, y_pred, s, rule, num_classes).items() if not np.isnan(v)}
    if not scores:
        return worse_group(y, y_pred, s, DEFAULT_RULE, num_classes)
    return min(scores, key=lambda g: (scores[g], g))
