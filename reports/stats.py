"""Seed statistics: a mean with its 95 % confidence interval."""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import stats

LEVEL = 0.95


@dataclass(frozen=True)
class Estimate:
    """Mean over seeds, half-width of its 95 % Student-t interval (NaN for one seed) and
    the number of seeds that had a value."""

    mean: float
    half_width: float
    n: int

    def __str__(self) -> str:
        if self.n == 0:
            return "–"
        if math.isnan(self.half_width):
            return f"{self.mean:.3f}"
        return f"{self.mean:.3f} ± {self.half_width:.3f}"


def estimate(values) -> Estimate:
    """Mean ± t_{0.975, n-1} · sd / √n over the finite values (NaN stays out of n)."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    n = len(x)
    if n == 0:
        return Estimate(math.nan, math.nan, 0)
    if n == 1:
        return Estimate(float(x[0]), math.nan, 1)
    half = _t(n - 1) * x.std(ddof=1) / math.sqrt(n)
    return Estimate(float(x.mean()), float(half), n)


@lru_cache(maxsize=None)
def _t(dof: int) -> float:
    return float(stats.t.ppf(0.5 + LEVEL / 2, dof))


def estimates(frame, by: str, columns: list[str]) -> dict[str, dict[str, Estimate]]:
    """:func:`estimate` of every column for each value of ``by``, in one grouped pass:
    ``{group: {column: Estimate}}``."""
    grouped = frame.groupby(by, sort=False)[columns]
    mean, std, count = grouped.mean(), grouped.std(ddof=1), grouped.count()
    out = {}
    for label in mean.index:
        m, sd, n = mean.loc[label].to_numpy(float), std.loc[label].to_numpy(float), count.loc[label].to_numpy(int)
        out[label] = {
            col: Estimate(math.nan if n[i] == 0 else float(m[i]),
                          _t(int(n[i]) - 1) * float(sd[i]) / math.sqrt(n[i]) if n[i] > 1 else math.nan, int(n[i]))
            for i, col in enumerate(columns)
        }
    return out
