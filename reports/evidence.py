"""Evidence with the (task, model) cell as the unit, from statsmodels.

A claim generalises over cells, so a cell is one observation, not each of its pairs:

- :func:`cell_effects`: per cell, the pairs of one seed are averaged over their
  configurations (configurations of one seed share a dense model and correlate), then the
  mean over seeds with its standard error and Student-t interval.
- :func:`pool`: a random-effects estimate across cells
  (``statsmodels.stats.meta_analysis.combine_effects``, Paule–Mandel τ², which is never
  negative), its interval with Student t on k − 1 degrees of freedom, I², and the
  prediction interval for a new cell (Higgins, Thompson & Spiegelhalter 2009:
  μ ± t_{k−2} · √(τ² + SE²); k ≥ 3). One cell alone: its own seed t-test.
- :func:`holm_levels`: Holm's step-down over a fixed family
  (``statsmodels.stats.multitest.multipletests``) and, per member, the level its test was
  actually run at, so that its interval, equivalence test and detectable effect use it.
- :func:`equivalent`: TOST on the pooled estimate: both one-sided tests at level α, i.e.
  the 1 − 2α interval inside (−δ, +δ), and the prediction interval inside it as well.
- :func:`detectable` / :func:`units_needed`: the power of a t-test on the units of the test
  (cells, or seeds for one cell) from ``statsmodels.stats.power.TTestPower``.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

POWER = 0.8
LEVEL = 0.95  # the per-cell intervals shown beside the pooled one
# a cell whose seeds agree exactly gets this fraction of δ as its standard error rather than an
# infinite weight: a resolution far below any effect of interest
SE_FLOOR = 0.01

CELL_COLUMNS = ["cell", "seeds", "configs", "effect", "se", "low", "high"]


def cell_effects(pairs: pd.DataFrame, value: str = "diff") -> pd.DataFrame:
    """One row per cell of ``pairs`` (columns ``cell``, ``seed``, ``value``): the seeds'
    means over configurations, their mean, standard error (NaN below 2 seeds) and 95 %
    Student-t interval."""
    from scipy import stats
    if pairs.empty:
        return pd.DataFrame(columns=CELL_COLUMNS)
    per_seed = pairs.groupby(["cell", "seed"], sort=True)[value].mean()
    configs = pairs.groupby("cell", sort=True)["config"].nunique() if "config" in pairs else None
    rows = []
    for cell, seeds in per_seed.groupby(level="cell", sort=True):
        x = seeds.to_numpy(float)
        n = len(x)
        se = float(x.std(ddof=1) / math.sqrt(n)) if n >= 2 else math.nan
        half = float(stats.t.ppf(0.5 + LEVEL / 2, n - 1)) * se if n >= 2 else math.nan
        rows.append({"cell": cell, "seeds": n, "configs": int(configs[cell]) if configs is not None else 1,
                     "effect": float(x.mean()), "se": se, "low": float(x.mean()) - half,
                     "high": float(x.mean()) + half})
    return pd.DataFrame(rows, columns=CELL_COLUMNS)


@dataclass(frozen=True)
class Pooled:
    """The estimate a verdict reads. ``units``: cells (or the seeds of the single cell);
    ``df``: degrees of freedom of its t statistic; ``unit_sd``: the spread of one unit
    (SE · √units) that the power analysis uses."""

    effect: float
    se: float
    df: int
    units: int
    unit: str  # "cells" or "seeds"
    p: float
    tau2: float = math.nan
    i2: float = math.nan
    pred_low: float = math.nan
    pred_high: float = math.nan
    floored: int = 0  # cells whose seeds agreed exactly (standard error floored)

    @property
    def unit_sd(self) -> float:
        return self.se * math.sqrt(self.units)

    def interval(self, alpha: float) -> tuple[float, float]:
        """The two-sided 1 − α interval."""
        from scipy import stats
        half = float(stats.t.ppf(1 - alpha / 2, self.df)) * self.se
        return self.effect - half, self.effect + half


def pool(cells: pd.DataFrame, seed_values: np.ndarray | None = None, se_floor: float = 0.0) -> Pooled | None:
    """Random-effects pooling of the cells with a standard error (≥ 2 seeds). One such
    cell: its seeds (``seed_values``, the per-seed means) are the units. None when nothing
    can be tested (no cell with 2 seeds). ``se_floor``: the smallest standard error a cell
    is given (see ``SE_FLOOR``)."""
    from scipy import stats
    from statsmodels.stats.meta_analysis import combine_effects
    usable = cells[np.isfinite(cells["se"].to_numpy(float))]
    k = len(usable)
    if k == 0:
        return None
    if k == 1:
        x = np.asarray(seed_values, dtype=float)
        res = stats.ttest_1samp(x, 0.0)
        se = float(x.std(ddof=1) / math.sqrt(len(x)))
        return Pooled(float(x.mean()), se, len(x) - 1, len(x), "seeds", float(res.pvalue) if se > 0 else math.nan)
    se = np.maximum(usable["se"].to_numpy(float), se_floor)
    floored = int((usable["se"].to_numpy(float) < se_floor).sum())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # I² of cells that agree exactly: 1 − 1/0, clipped below
        res = combine_effects(usable["effect"].to_numpy(float), se ** 2, method_re="iterated", use_t=True)
    mu, sd = float(res.mean_effect_re), float(res.sd_eff_w_re)
    p = float(2 * stats.t.sf(abs(mu) / sd, k - 1)) if sd > 0 else math.nan
    tau2 = max(float(res.tau2), 0.0)
    pred = (math.nan, math.nan)
    if k >= 3:
        half = float(stats.t.ppf(0.975, k - 2)) * math.sqrt(tau2 + sd ** 2)
        pred = (mu - half, mu + half)
    return Pooled(mu, sd, k - 1, k, "cells", p, tau2, max(float(res.i2), 0.0), *pred, floored=floored)


def holm_levels(p_values, alpha: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Holm over the whole family (NaN p: a member that was not tested enters with p = 1).
    Returns (reject, adjusted p, level): ``level`` is the per-test level of each member's
    step, α / (m − i) for the i-th smallest p (from 0), and for every member after the
    first step that fails, that step's level — so a member's 1 − level interval excludes 0
    exactly when Holm rejects it."""
    from statsmodels.stats.multitest import multipletests
    p = np.nan_to_num(np.asarray(p_values, dtype=float), nan=1.0)
    m = len(p)
    if m == 0:
        return np.zeros(0, bool), np.zeros(0), np.zeros(0)
    reject, adjusted, _, _ = multipletests(p, alpha=alpha, method="holm")
    order = np.argsort(p, kind="stable")
    steps = alpha / (m - np.arange(m))
    failed = np.flatnonzero(~reject[order])
    stop = failed[0] if len(failed) else m
    level = np.empty(m)
    level[order] = steps[np.minimum(np.arange(m), stop)]
    return reject, adjusted, level


def equivalent(est: Pooled, delta: float, alpha: float) -> bool:
    """TOST on the pooled estimate at level α each side (the 1 − 2α interval inside
    (−δ, +δ)) and, where there is one, the prediction interval inside it too: cells that
    disagree by ±δ around a mean of 0 are not "no effect"."""
    low, high = est.interval(2 * alpha)
    spread_ok = not math.isfinite(est.pred_low) or (-delta < est.pred_low and est.pred_high < delta)
    return -delta < low and high < delta and spread_ok


def tost_p(est: Pooled, delta: float) -> float:
    """The TOST p-value: the larger of the two one-sided p-values against ±δ."""
    from scipy import stats
    if est.se == 0:
        return 0.0 if abs(est.effect) < delta else 1.0
    lower = stats.t.sf((est.effect + delta) / est.se, est.df)
    upper = stats.t.cdf((est.effect - delta) / est.se, est.df)
    return float(max(lower, upper))


def power(d: float, n: int, alpha: float) -> float:
    """Power of a two-sided one-sample t-test on ``n`` units at standardised effect ``d``
    (``TTestPower``). Where statsmodels' noncentral t gives NaN (few units at a small α:
    its lower tail), the upper tail alone, which is all of the power there."""
    from scipy import stats
    from statsmodels.stats.power import TTestPower
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = float(TTestPower().power(effect_size=d, nobs=n, alpha=alpha))
        if not math.isfinite(p):
            p = float(stats.nct.sf(stats.t.ppf(1 - alpha / 2, n - 1), n - 1, d * math.sqrt(n)))
    return p


def detectable(est: Pooled, alpha: float, target: float = POWER) -> float:
    """Smallest |effect| a two-sided t-test on ``est.units`` units detects at level α with
    the given power, in the metric's units; NaN without spread. Solved on :func:`power` by
    bisection (statsmodels' own solver returns a wrong root silently where its power is NaN)."""
    from scipy import optimize
    if not (est.se > 0 and est.units >= 2):
        return math.nan
    high = 1.0
    while power(high, est.units, alpha) < target:
        high *= 2
    d = optimize.brentq(lambda x: power(x, est.units, alpha) - target, 0.0, high, xtol=1e-10)
    return float(d) * est.unit_sd


def units_needed(est: Pooled, delta: float, alpha: float, target: float = POWER, cap: int = 10_000) -> int | None:
    """How many units (cells, or seeds) of the present spread a test needs to detect δ at
    level α with the given power; None without spread or beyond ``cap``."""
    if not (est.se > 0 and delta > 0):
        return None
    d = delta / est.unit_sd
    if power(d, cap, alpha) < target:
        return None
    lo, hi = 2, cap  # power grows with n: the smallest n that reaches it
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if power(d, mid, alpha) < target else (lo, mid)
    return lo
