"""Post-processing by per-group decision thresholds, chosen on validation.

The bar a practitioner sets before trusting a fair training or compression method ("Unprocessing",
Cruz & Hardt, ICLR 2024): take a model, score each row with its positive-class probability,
and give each group its own threshold so that a parity constraint holds on validation, with
the best validation accuracy among the thresholds that satisfy it. The engine applies it to
any method's binary model (a method entry's ``post``); the test split is only predicted with
the thresholds validation chose.

Constraints: ``tpr`` (equal true-positive rates: equal opportunity) and ``rate`` (equal
positive-prediction rates: demographic parity). Thresholds are deterministic, so parity holds
up to the granularity of each group's validation rows (Fairlearn's ThresholdOptimizer mixes two
thresholds at random to hit it exactly; its accuracy is the oracle in the tests).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CONSTRAINTS = ("tpr", "rate")
LEVELS = 201  # the common target rates tried: 0, 0.005, ..., 1
ABOVE_ANY = 2.0  # a threshold no probability reaches (finite, so it stores as JSON)


def _threshold_for_rate(scores: np.ndarray, rate: float) -> float:
    """The largest threshold t with mean(scores >= t) >= rate (rows predicted positive at t)."""
    if len(scores) == 0 or rate <= 0:
        return ABOVE_ANY
    ranked = np.sort(scores)[::-1]
    return float(ranked[min(len(ranked), int(np.ceil(rate * len(ranked) - 1e-9))) - 1])


@dataclass
class GroupThresholds:
    """Per-group thresholds on the positive-class score; rows of another group (s < 0 or unseen)
    keep the argmax rule (0.5)."""

    constraint: str
    thresholds: dict[int, float]

    def apply(self, scores: np.ndarray, s: np.ndarray) -> np.ndarray:
        cut = np.full(len(scores), 0.5)
        for g, t in self.thresholds.items():
            cut[s == g] = t
        return (scores >= cut).astype(np.int64)

    def info(self) -> dict:
        return {"constraint": self.constraint, "thresholds": {str(g): t for g, t in self.thresholds.items()}}


def fit_group_thresholds(scores: np.ndarray, y: np.ndarray, s: np.ndarray, constraint: str = "tpr") -> GroupThresholds:
    """Thresholds that equalise the constraint's rate across groups on these (validation) rows,
    at the common level with the highest accuracy."""
    if constraint not in CONSTRAINTS:
        raise ValueError(f"unknown constraint {constraint!r} (known: {', '.join(CONSTRAINTS)})")
    groups = sorted(int(g) for g in np.unique(s[s >= 0]))
    best, best_accuracy = None, -1.0
    for level in np.linspace(0, 1, LEVELS):
        chosen = {}
        for g in groups:
            rows = s == g
            # tpr: the level among the group's positives; rate: among all its rows
            pool = scores[rows & (y == 1)] if constraint == "tpr" else scores[rows]
            chosen[g] = _threshold_for_rate(pool, level)
        candidate = GroupThresholds(constraint, chosen)
        known = s >= 0
        accuracy = float(np.mean(candidate.apply(scores[known], s[known]) == y[known]))
        if accuracy > best_accuracy:
            best, best_accuracy = candidate, accuracy
    return best
