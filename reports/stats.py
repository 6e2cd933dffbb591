"""Seed statistics: means with 95 % intervals and paired differences against the dense model.

- :func:`estimate`: mean ± Student-t half-width over seeds. With fewer than
  ``MIN_INTERVAL_N`` (3) values there is no interval (t_{0.975,1} = 12.7 says nothing): the
  estimate keeps its per-seed values and :meth:`Estimate.display` shows them instead.
- :func:`clip_interval` / :meth:`Estimate.display`: an interval is clipped to its metric's
  range (:func:`metric_bounds`) and the clipping is marked.
- :func:`paired_deltas`: every method cell against the dense model of the same seed
  (Δ = method − dense per seed, then the interval of the mean Δ): seeds move the dense
  model far more than the method, and pairing removes that.

The verdicts' statistics, with the (task, model) cell as the unit, are ``evidence``'s.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import pandas as pd

LEVEL = 0.95
MIN_INTERVAL_N = 3  # fewer seeds than this: per-seed values, never a t-interval
CLIP_MARK = "⊢"  # marks an interval end clipped to the metric's range


@dataclass(frozen=True)
class Estimate:
    """Mean over seeds, half-width of its 95 % Student-t interval (NaN below
    ``MIN_INTERVAL_N`` values), the number of seeds that had a value, and those values."""

    mean: float
    half_width: float
    n: int
    values: tuple[float, ...] = field(default=(), compare=False)

    def __str__(self) -> str:
        return self.display()

    def display(self, digits: int = 3, bounds: tuple[float, float] | None = None) -> str:
        """``mean ± half`` (n ≥ 3; ``[low, high]`` with the clipped end marked when the
        interval leaves ``bounds``), the per-seed values ``a | b`` below that, ``–`` when empty."""
        if self.n == 0:
            return "–"
        if self.n < MIN_INTERVAL_N or math.isnan(self.half_width):
            return " | ".join(f"{v:.{digits}f}" for v in self.values) if self.values else f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} {self.interval_text(digits, bounds)}"

    def interval_text(self, digits: int = 3, bounds: tuple[float, float] | None = None) -> str:
        """What follows the mean: ``± half``, or ``[low, high]`` with a clipped end marked."""
        low, high, clipped = clip_interval(self.mean, self.half_width, bounds)
        if not clipped:
            return f"± {self.half_width:.{digits}f}"
        lo = f"{CLIP_MARK if clipped in ('low', 'both') else ''}{low:.{digits}f}"
        hi = f"{high:.{digits}f}{CLIP_MARK if clipped in ('high', 'both') else ''}"
        return f"[{lo}, {hi}]"


def clip_interval(mean: float, half: float, bounds: tuple[float, float] | None) -> tuple[float, float, str]:
    """(low, high, which end was clipped: '', 'low', 'high' or 'both')."""
    low, high = mean - half, mean + half
    if bounds is None or not math.isfinite(half):
        return low, high, ""
    clipped = ("low" if low < bounds[0] else "") + ("high" if high > bounds[1] else "")
    return max(low, bounds[0]), min(high, bounds[1]), {"lowhigh": "both"}.get(clipped, clipped)


@functools.lru_cache(maxsize=None)  # asked once per table cell
def metric_bounds(key: str, num_classes: int = 2) -> tuple[float, float] | None:
    """The range a metric's value lies in: [0, 1] for rates and gaps, [0, K] or [0, 2K] for
    the sum forms, [0, 2] for the L1 parity distance; None for counts and costs."""
    from fairsqueeze.measure.metrics import metric_def

    try:
        kind = metric_def(key).kind
    except KeyError:
        return (0.0, 1.0) if key == "eodds_diff" else None
    if kind == "support":
        return None
    if key in ("eopp0_sum", "eopp1_sum"):
        return 0.0, float(num_classes)
    if key == "eodd_sum":
        return 0.0, 2.0 * num_classes
    return (0.0, 2.0) if key == "dp_l1" else (0.0, 1.0)


def estimate(values) -> Estimate:
    """Mean ± t_{0.975, n-1} · sd / √n over the finite values (NaN stays out of n)."""
    # plain Python: a handful of seeds, asked tens of thousands of times by a large report
    x = [float(v) for v in values if math.isfinite(v)]
    n = len(x)
    if n == 0:
        return Estimate(math.nan, math.nan, 0)
    mean = sum(x) / n
    half = _t(n - 1) * math.sqrt(sum((v - mean) ** 2 for v in x) / (n - 1) / n) if n >= MIN_INTERVAL_N else math.nan
    return Estimate(mean, half, n, tuple(x))


@lru_cache(maxsize=None)
def _t(dof: int) -> float:
    from scipy import stats
    return float(stats.t.ppf(0.5 + LEVEL / 2, dof))


def estimates(frame, by: str, columns: list[str]) -> dict[str, dict[str, Estimate]]:
    """:func:`estimate` of every column for each value of ``by``: ``{group: {column: Estimate}}``."""
    values = {col: frame[col].to_numpy(float) for col in columns}
    out = {}
    for label, idx in frame.groupby(by, sort=False).indices.items():
        out[label] = {col: estimate(values[col][idx]) for col in columns}
    return out


def paired_deltas(frame: pd.DataFrame, metrics: list[str], cell: tuple[str, ...] = ("task_key", "model"),
                  label: str = "label", reference: str = "dense") -> pd.DataFrame:
    """Each (cell, label) against the ``reference`` method's run of the same cell and seed.

    ``frame``: one row per run with ``seed``, ``method``, the ``cell`` and ``label`` columns
    and the metric columns. Returns one row per (cell, label, metric) with ``delta`` (mean of
    method − reference over the seeds both have), its paired 95 % ``half_width`` (NaN below
    ``MIN_INTERVAL_N`` pairs), ``low``/``high``, ``n`` and ``per_seed`` ({seed: Δ})."""
    keys = list(cell)
    columns = keys + [label, "method", "metric", "delta", "half_width", "low", "high", "n", "per_seed", "estimate"]
    metrics = [m for m in metrics if m in frame]
    is_ref = frame["method"] == reference
    dense = frame.loc[is_ref, keys + ["seed"] + metrics].drop_duplicates(keys + ["seed"])
    runs = frame.loc[~is_ref, keys + [label, "method", "seed"] + metrics].drop_duplicates(keys + [label, "seed"])
    if runs.empty or not metrics:
        return pd.DataFrame(columns=columns)
    # one merge pairs every run with its seed's reference; a seed without one gets NaN
    paired = runs.merge(dense, on=keys + ["seed"], how="left", suffixes=("", "\0ref"))
    diffs = pd.DataFrame({m: paired[m].to_numpy(float) - paired[m + "\0ref"].to_numpy(float) for m in metrics})
    seeds = paired["seed"].to_numpy()
    rows = []
    for group, idx in paired.groupby(keys + [label], sort=True).indices.items():
        head = {**dict(zip(keys, group[:-1])), label: group[-1], "method": paired["method"].iat[idx[0]]}
        for metric in metrics:
            d = diffs[metric].to_numpy()[idx]
            finite = np.isfinite(d)
            per_seed = {int(s): float(v) for s, v in zip(seeds[idx][finite], d[finite])}
            est = estimate(d[finite])
            rows.append({**head, "metric": metric, "delta": est.mean, "half_width": est.half_width,
                         "low": est.mean - est.half_width, "high": est.mean + est.half_width,
                         "n": est.n, "per_seed": per_seed, "estimate": est})
    return pd.DataFrame(rows, columns=columns)
