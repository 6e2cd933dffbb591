"""Hypervolume of a (utility ↑, unfairness ↓) front against a fixed per-task reference.

The reference point is fixed by the task alone, never by the runs being ranked (a point
taken from the runs would reward the worst run for being bad):

* utility reference = chance accuracy of a uniform guess, ``1 / K`` for K classes;
* unfairness reference = 1, the largest value every headline gap can take (the
  equalized-odds difference, a difference of rates; the table-form EOdd, bounded by 1).

The value is normalised by the area of the reference box ``(1 - 1/K) × 1``, so 1 is a
perfect model (accuracy 1, gap 0) and 0 is a model no better than chance or maximally
unfair. A point outside the box adds nothing.
"""
from __future__ import annotations

import numpy as np

MAX_GAP = 1.0


def reference_point(num_classes: int) -> tuple[float, float]:
    """(utility, unfairness) reference of a task with ``num_classes`` classes."""
    return 1.0 / max(int(num_classes), 2), MAX_GAP


def pareto_front(points: np.ndarray) -> np.ndarray:
    """Indices of the non-dominated points of (unfairness ↓, utility ↑) rows, fairest first."""
    order = np.lexsort((-points[:, 1], points[:, 0]))
    front, best = [], -np.inf
    for i in order:
        if points[i, 1] > best:
            front.append(i)
            best = points[i, 1]
    return np.array(front, dtype=int)


def hypervolume(utility, gap, num_classes: int) -> float:
    """Normalised area dominated by the points (utility_i, gap_i) inside the reference box.
    NaN points are ignored; no finite point gives 0."""
    u_ref, g_ref = reference_point(num_classes)
    u = np.asarray(utility, dtype=float)
    g = np.asarray(gap, dtype=float)
    ok = np.isfinite(u) & np.isfinite(g) & (u > u_ref) & (g < g_ref)
    u, g = u[ok], g[ok]
    area, best_u = 0.0, u_ref
    # sweep the front from the fairest point to the least fair: each adds the utility it gains
    for i in pareto_front(np.c_[g, u]):
        area += (u[i] - best_u) * (g_ref - g[i])
        best_u = u[i]
    return float(area / ((1.0 - u_ref) * g_ref))
