"""Significance of the ranking, with SciPy.

* Friedman test over (task, model) cells as blocks and methods as treatments, on each
  method's mean hypervolume per cell; only cells where every compared method has a value
  enter (a complete block design), and only with at least ``MIN_CELLS`` of them.
* Nemenyi critical difference for the critical-difference diagram:
  ``CD = q_α / √2 · √(k (k + 1) / (6 N))`` with ``q_α`` the studentized-range quantile
  for k methods and infinite degrees of freedom (Demšar 2006).
* Each fairness-aware method against its fairness-unaware twin: a two-sided Wilcoxon
  signed-rank test on paired hypervolumes, one pair per (task, model, seed) where both
  have results in the same budget tier (seeds share the dense reference, so they pair).
  A pair that never shares a tier (e.g. FairQuantize beside int8 PTQ, each at its own ratio)
  is still shown, across tiers, with a note saying that it is not like for like.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy import stats  # noqa: E402

from fairsqueeze.reports.tiers import tier_rank  # noqa: E402
from fairsqueeze.reports.verdicts import load_claims, twin_map  # noqa: E402

ALPHA = 0.05
MIN_CELLS = 5  # below this, a Friedman test over cells has almost no power (N = 2 gave χ² = 0, p = 1)
# fairness-aware method -> the fairness-unaware methods it claims to improve on: the claims file's
# pairs of two different methods (a pair within one method, such as BiFP with and without its
# penalty, has one hypervolume and is left to the verdicts)
TWINS = twin_map(load_claims())


@dataclass
class Friedman:
    metric: str
    tier: str
    methods: list[str]
    cells: int
    statistic: float = math.nan
    p_value: float = math.nan
    mean_ranks: dict[str, float] = field(default_factory=dict)
    critical_difference: float = math.nan
    note: str = ""


def friedman(frame: pd.DataFrame, metric: str, tier: str) -> Friedman:
    """``frame``: the per-cell scores (``ranking.scores_frame``)."""
    sub = frame[(frame["metric"] == metric) & (frame["tier"] == tier)]
    wide = sub.pivot_table(index="cell", columns="method", values="mean")
    # keep the methods present in most cells, then the cells complete for all of them
    counts = wide.notna().sum()
    methods = sorted(counts[counts == counts.max()].index) if len(counts) else []
    wide = wide[methods].dropna() if methods else wide
    result = Friedman(metric, tier, methods, len(wide))
    if len(wide) < MIN_CELLS:
        result.note = (f"{len(wide)} common (task, model) cell(s): a rank test needs ≥ {MIN_CELLS}, "
                       "so no Friedman test or critical-difference diagram")
        return result
    if len(methods) < 3:
        result.note = f"needs ≥ 3 methods on the common cells (has {len(methods)})"
        return result
    res = stats.friedmanchisquare(*(wide[m].to_numpy() for m in methods))
    result.statistic, result.p_value = float(res.statistic), float(res.pvalue)
    ranks = wide.rank(axis=1, ascending=False).mean()
    result.mean_ranks = {m: float(ranks[m]) for m in methods}
    k, n = len(methods), len(wide)
    q = stats.studentized_range.ppf(1 - ALPHA, k, np.inf) / math.sqrt(2)
    result.critical_difference = float(q * math.sqrt(k * (k + 1) / (6 * n)))
    return result


def cd_diagram(result: Friedman) -> str | None:
    """The critical-difference diagram as base64 PNG: methods at their mean ranks, a bar
    joining every group whose ranks lie within one CD of each other."""
    from fairsqueeze.reports.figures import to_png

    if not result.mean_ranks:
        return None
    ranks = sorted(result.mean_ranks.items(), key=lambda kv: kv[1])
    k = len(result.methods)
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.28 * k))
    ax.set_xlim(0.5, k + 0.5)
    ax.set_ylim(-(k + 1), 1.5)
    ax.axhline(0, color="black", lw=1)
    for r in range(1, k + 1):
        ax.plot([r, r], [0, 0.15], color="black", lw=1)
        ax.text(r, 0.35, str(r), ha="center", fontsize=8)
    for i, (method, rank) in enumerate(ranks):
        y = -(i + 1)
        ax.plot([rank, rank], [0, y], color="grey", lw=0.8)
        ax.plot(rank, 0, "o", color="black", ms=3)
        ax.text(k + 0.45, y, f"{method} ({rank:.2f})", ha="right", va="center", fontsize=8)
    cd = result.critical_difference
    ax.plot([1, 1 + cd], [1.1, 1.1], color="red", lw=2)
    ax.text(1 + cd / 2, 1.25, f"CD = {cd:.2f}", ha="center", color="red", fontsize=8)
    level, last_end = 0, -1
    for i, (_, low) in enumerate(ranks):  # one bar per maximal clique not already drawn
        j = max(idx for idx in range(i, k) if ranks[idx][1] - low < cd)
        if j > i and j > last_end:
            level += 1
            ax.plot([low - 0.03, ranks[j][1] + 0.03], [-0.25 * level, -0.25 * level], color="#2a7", lw=3, alpha=0.7)
            last_end = j
    ax.axis("off")
    ax.set_title(f"Nemenyi critical difference, {result.metric}, tier {result.tier} (α = {ALPHA}, N = {result.cells})", fontsize=9)
    return to_png(fig)


@dataclass
class TwinTest:
    metric: str
    tier: str
    fair: str
    twin: str
    pairs: int
    mean_difference: float  # fair − twin hypervolume
    p_value: float
    note: str = ""


def twin_tests(frame: pd.DataFrame) -> list[TwinTest]:
    """Every (fair method, twin) pair that has results in a common tier and cell."""
    per_seed = pd.DataFrame(
        [{"metric": r.metric, "tier": r.tier, "cell": r.cell, "method": r.method, "seed": s, "hv": v}
         for r in frame.itertuples() for s, v in r.per_seed.items()]
    )
    tests = []
    if per_seed.empty:
        return tests

    per_seed["order"] = per_seed["tier"].map(tier_rank)
    for (metric, _, tier), sub in per_seed.groupby(["metric", "order", "tier"], sort=True):
        wide = sub.pivot_table(index=["cell", "seed"], columns="method", values="hv")
        for fair, twins in TWINS.items():
            for twin in twins:
                if fair in wide and twin in wide and not (paired := wide[[fair, twin]].dropna()).empty:
                    tests.append(_wilcoxon(metric, tier, fair, twin, paired[fair], paired[twin]))
    # a pair with no tier in common: compared across tiers, with the tiers named
    for metric, sub in per_seed.groupby("metric", sort=True):
        for fair, twins in TWINS.items():
            for twin in twins:
                if any(t.metric == metric and t.fair == fair and t.twin == twin for t in tests):
                    continue
                sides = [sub[sub["method"] == m].groupby(["cell", "seed"])["hv"].mean() for m in (fair, twin)]
                both = pd.concat(sides, axis=1, keys=[fair, twin]).dropna()
                if both.empty:
                    continue
                tiers = [" / ".join(sorted(sub.loc[sub["method"] == m, "tier"].unique(), key=tier_rank)) for m in (fair, twin)]
                test = _wilcoxon(metric, f"{tiers[0]} vs {tiers[1]}", fair, twin, both[fair], both[twin])
                test.note = (f"across tiers ({fair} {tiers[0]}, {twin} {tiers[1]}): not like for like"
                             + (f"; {test.note}" if test.note else ""))
                tests.append(test)
    return tests


def _wilcoxon(metric: str, tier: str, fair: str, twin: str, a: pd.Series, b: pd.Series) -> TwinTest:
    diff = a - b
    test = TwinTest(metric, tier, fair, twin, len(diff), float(diff.mean()), math.nan)
    if (diff == 0).all():
        test.note = "identical hypervolumes"
    else:
        test.p_value = float(stats.wilcoxon(a, b).pvalue)
        if len(diff) < 6:
            test.note = "fewer than 6 pairs: p cannot fall below 0.05"
    return test
