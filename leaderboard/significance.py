"""Significance of the ranking, with SciPy, scikit-posthocs and statsmodels.

* Friedman test over (task, model) cells as blocks and methods as treatments, on each
  method's mean hypervolume per cell; only cells where every compared method has a value
  enter (a complete block design), and only with at least ``MIN_CELLS`` of them.
* Nemenyi's post-hoc test (``scikit_posthocs.posthoc_nemenyi_friedman``) and its critical
  difference ``CD = q_α / √2 · √(k (k + 1) / (6 N))`` (``q_α``: the studentized-range
  quantile for k methods, infinite degrees of freedom; Demšar 2006), drawn by
  ``scikit_posthocs.critical_difference_diagram``.
* Each fairness-aware method against its fairness-unaware twin: a two-sided Wilcoxon
  signed-rank test on paired hypervolumes, one pair per (task, model, seed) where both
  have results in the same budget tier (seeds share the dense reference, so they pair);
  the family of these tests is Holm-corrected (``statsmodels`` ``multipletests``).
  A pair that never shares a tier (e.g. FairQuantize beside int8 PTQ, each at its own ratio)
  is still shown, across tiers, with a note saying that it is not like for like.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from fairsqueeze.reports.tiers import tier_rank

ALPHA = 0.05
MIN_CELLS = 5  # below this, a Friedman test over cells has almost no power (N = 2 gave χ² = 0, p = 1)


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
    nemenyi: pd.DataFrame | None = field(default=None, repr=False)  # pairwise p-values, methods x methods


def friedman(frame: pd.DataFrame, metric: str, tier: str) -> Friedman:
    """``frame``: the per-cell scores (``ranking.scores_frame``)."""
    import scikit_posthocs as sp
    from scipy import stats
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
    result.nemenyi = sp.posthoc_nemenyi_friedman(wide[methods].to_numpy())
    result.nemenyi.index = result.nemenyi.columns = methods
    return result


def cd_diagram(result: Friedman) -> str | None:
    """The critical-difference diagram as base64 PNG (scikit-posthocs): methods at their
    mean ranks, a bar joining the methods Nemenyi's test cannot tell apart."""
    import scikit_posthocs as sp

    from fairsqueeze.reports.figures import pyplot, to_png

    if not result.mean_ranks or result.nemenyi is None:
        return None
    k = len(result.methods)
    fig, ax = pyplot().subplots(figsize=(7, 1.2 + 0.28 * k))
    sp.critical_difference_diagram(pd.Series(result.mean_ranks), result.nemenyi, ax=ax, alpha=ALPHA,
                                   label_props={"fontsize": 8})
    ax.set_title(f"Nemenyi, {result.metric}, tier {result.tier} (α = {ALPHA}, N = {result.cells}, "
                 f"CD = {result.critical_difference:.2f})", fontsize=9)
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
    p_holm: float = math.nan  # across every twin test of the page


def twin_tests(frame: pd.DataFrame, twins: dict[str, tuple[str, ...]]) -> list[TwinTest]:
    """Every (fair method, twin) pair that has results in a common tier and cell. ``twins``:
    fairness-aware method -> the fairness-unaware methods its claims compare it with
    (``verdicts.twin_map``: pairs of two different methods; a pair within one method, such as
    BiFP with and without its penalty, has one hypervolume and is left to the verdicts)."""
    from statsmodels.stats.multitest import multipletests
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
        for fair, others in twins.items():
            for twin in others:
                if fair in wide and twin in wide and not (paired := wide[[fair, twin]].dropna()).empty:
                    tests.append(_wilcoxon(metric, tier, fair, twin, paired[fair], paired[twin]))
    # a pair with no tier in common: compared across tiers, with the tiers named
    for metric, sub in per_seed.groupby("metric", sort=True):
        for fair, others in twins.items():
            for twin in others:
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
    tested = [t for t in tests if math.isfinite(t.p_value)]
    if tested:
        for t, p in zip(tested, multipletests([t.p_value for t in tested], alpha=ALPHA, method="holm")[1]):
            t.p_holm = float(p)
    return tests


def _wilcoxon(metric: str, tier: str, fair: str, twin: str, a: pd.Series, b: pd.Series) -> TwinTest:
    from scipy import stats
    diff = a - b
    test = TwinTest(metric, tier, fair, twin, len(diff), float(diff.mean()), math.nan)
    if (diff == 0).all():
        test.note = "identical hypervolumes"
    else:
        test.p_value = float(stats.wilcoxon(a, b).pvalue)
        if len(diff) < 6:
            test.note = "fewer than 6 pairs: p cannot fall below 0.05"
    return test
