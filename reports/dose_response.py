"""A claim against the compression ratio: its dose–response curve and a test for a trend.

The dose of a pair is how much its fair run compressed the dense model (``verdicts``: the
larger of the stored-size ratio and the ratio of nonzero weights, so that pruning, whose zeros
are stored dense, and quantization, which keeps every weight in fewer bits, both have one). A
claim made "at equal compression" is one point of a curve; the papers plot, and users ask, how
the effect moves as the model is cut harder. With the cell as the unit, as for the verdict
itself (``evidence``):

- :func:`curves`: per cell and configuration, the dose and the mean Δ over seeds with its 95 %
  Student-t interval (seeds as the units): one line with its band per cell.
- :func:`trend`: per (cell, seed), the least-squares slope of Δ on the position of log(dose)
  within the cell's range of doses (0 at its lightest compression, 1 at its heaviest), so a
  slope is the change of Δ from the lightest to the heaviest compression the cell ran; per cell
  the mean slope over seeds; across cells the same random-effects pooling as the effect. (Per
  doubling of the ratio would blow up where a method's ratios lie close together, as
  quantization's 1.08 and 1.17 do.) A cell or seed with fewer than two distinct doses has no
  slope.
- :func:`reading`: the slope read like an effect, with δ across the range as the smallest
  trend of interest: "rises" / "falls" (its interval excludes 0 at the level given), "flat"
  (TOST inside ±δ), else "unclear".

Holm over the rows that have a trend is a family of its own (``verdicts.evaluate``): the
trend is a second question about each claim, not a member of the claims' family.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from . import evidence

CURVE_COLUMNS = ["cell", "config", "dose", "seeds", "effect", "low", "high"]
SLOPE_COLUMNS = ["cell", "seed", "slope", "doses"]
DOSE_DIGITS = 6  # doses equal to this many significant digits are one dose


def _doses(pairs: pd.DataFrame) -> np.ndarray:
    return np.array([float(f"{d:.{DOSE_DIGITS}g}") for d in pairs["dose"].to_numpy(float)])


def curves(pairs: pd.DataFrame, value: str = "diff") -> pd.DataFrame:
    """Per cell and fair configuration: its dose, the seeds' mean Δ and its 95 % interval."""
    from scipy import stats
    pairs = pairs[np.isfinite(pairs["dose"].to_numpy(float))] if len(pairs) else pairs
    if pairs.empty:
        return pd.DataFrame(columns=CURVE_COLUMNS)
    rows = []
    for (cell, config), group in pairs.groupby(["cell", "config"], sort=True):
        x = group.groupby("seed")[value].mean().to_numpy(float)
        n = len(x)
        half = float(stats.t.ppf(0.5 + evidence.LEVEL / 2, n - 1)) * x.std(ddof=1) / math.sqrt(n) if n >= 2 else math.nan
        rows.append({"cell": cell, "config": config, "dose": float(group["dose"].mean()), "seeds": n,
                     "effect": float(x.mean()), "low": float(x.mean()) - half, "high": float(x.mean()) + half})
    return pd.DataFrame(rows, columns=CURVE_COLUMNS).sort_values(["cell", "dose"], kind="stable", ignore_index=True)


def slopes(pairs: pd.DataFrame, value: str = "diff") -> pd.DataFrame:
    """Per (cell, seed) with at least two distinct doses: the least-squares slope of ``value``
    on the position of log(dose) in the cell's range (0 lightest, 1 heaviest) over that seed's
    pairs, and how many distinct doses it had."""
    if pairs.empty:
        return pd.DataFrame(columns=SLOPE_COLUMNS)
    pairs = pairs.assign(_dose=_doses(pairs))
    pairs = pairs[np.isfinite(pairs["_dose"]) & (pairs["_dose"] > 0) & np.isfinite(pairs[value].to_numpy(float))]
    log_dose = np.log(pairs["_dose"].to_numpy(float))
    by_cell = pd.Series(log_dose, index=pairs.index).groupby(pairs["cell"])
    low, span = by_cell.transform("min"), by_cell.transform("max") - by_cell.transform("min")
    pairs = pairs.assign(_x=((log_dose - low) / span.where(span > 0)).to_numpy(float))
    rows = []
    for (cell, seed), group in pairs.groupby(["cell", "seed"], sort=True):
        x = group["_x"].to_numpy(float)
        if len(np.unique(x[np.isfinite(x)])) < 2:
            continue
        y = group[value].to_numpy(float)
        slope = float(np.sum((x - x.mean()) * (y - y.mean())) / np.sum((x - x.mean()) ** 2))
        rows.append({"cell": cell, "seed": seed, "slope": slope, "doses": len(np.unique(x))})
    return pd.DataFrame(rows, columns=SLOPE_COLUMNS)


def trend(pairs: pd.DataFrame, se_floor: float = 0.0, value: str = "diff") -> tuple[evidence.Pooled | None, int]:
    """The pooled change of Δ from the lightest to the heaviest compression of each cell (None
    where no cell has two seeds with a slope), and the most distinct doses a cell had."""
    found = slopes(pairs, value)
    if found.empty:
        return None, (1 if len(pairs) else 0)
    cells = evidence.cell_effects(found, "slope")
    finite = np.isfinite(cells["se"].to_numpy(float))
    single = None
    if finite.sum() == 1:
        cell = cells.loc[finite, "cell"].iloc[0]
        single = found.loc[found["cell"] == cell, "slope"].to_numpy(float)
    doses = int(found["doses"].max())
    if not finite.any():
        return None, doses
    if finite.sum() == 1 and (len(single) < 2 or np.ptp(single) == 0):
        return None, doses
    return evidence.pool(cells, single, se_floor), doses


def reading(est: evidence.Pooled | None, delta: float, level: float) -> tuple[str, float, float]:
    """(reading, low, high): the slope's interval at ``level`` and what it says."""
    if est is None or not math.isfinite(est.p):
        return "", math.nan, math.nan
    low, high = est.interval(level)
    if evidence.equivalent(est, delta, level):
        return "flat", low, high
    if low > 0:
        return "rises", low, high
    if high < 0:
        return "falls", low, high
    return "unclear", low, high
