"""Hypervolume per (task, model, budget tier, method), ranks and HELM-style win rates.

Methods are only ever compared inside one compression-budget tier, so a method is never
ranked against one that compresses far less. Runs flagged degenerate (constant
predictions) or no-effect (the dense model's predictions) are left out: their gaps say
nothing about fairness.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fairsqueeze.reports.columns import EODDS, UTILITY, add_derived, is_binary
from fairsqueeze.reports.data import current_definitions
from fairsqueeze.reports.stats import estimate
from fairsqueeze.reports.tables import UNRANKED_FLAGS
from fairsqueeze.reports.tiers import TIERS, tier_of, tier_rank  # noqa: F401  (the tiers are shared with the report)

from fairsqueeze.reports.hypervolume import hypervolume, pareto_front

# unfairness definitions a ranking may use: family -> (binary key, multi-class key), each bounded by 1
GAPS = {
    "equalized odds": (EODDS, "eodd"),
    "equal opportunity": ("deo", "eopp1"),
}
EXCLUDED_FLAGS = UNRANKED_FLAGS
MIN_SHARED = 5  # cells a method must share with a rival of its tier to be ranked


def underfit_cells(frame: pd.DataFrame, underfit: set[str]) -> pd.DataFrame:
    """The (task, model) cells with a run on an underfit dense reference (``underfit``: dense
    keys), with the seeds concerned: the leaderboard leaves them out and says so."""
    bad = frame[frame["dense_key"].isin(underfit)] if "dense_key" in frame else frame.iloc[:0]
    cells = bad.groupby(["task_label", "model"], sort=True)["seed"].agg(lambda s: sorted({int(v) for v in s}))
    return cells.rename("seeds").reset_index()


def usable_runs(frame: pd.DataFrame, underfit: set[str] = frozenset()) -> pd.DataFrame:
    """Finished runs that may be ranked, with their tier; each (task, model, seed,
    configuration) once, from the current definition of each suite (``current_definitions``). A cell with any run on an
    underfit dense reference (``underfit``: dense keys) is left out whole: its methods are
    compared with a reference that was still learning."""
    frame = add_derived(current_definitions(frame))
    if underfit and "dense_key" in frame:
        cells = underfit_cells(frame, underfit)
        out = frame.set_index(["task_label", "model"]).index.isin(cells.set_index(["task_label", "model"]).index)
        frame = frame[~out]
    flagged = frame["flags"].map(lambda f: any(x in EXCLUDED_FLAGS for x in (f or ())))
    frame = frame[~flagged | (frame["method"] == "dense")].copy()
    frame["tier"] = frame["compression_ratio"].map(tier_of)
    return frame.dropna(subset=["tier"])


@dataclass
class CellScore:
    metric: str
    tier: str
    task_key: str
    task_label: str
    model: str
    method: str
    mean: float
    half_width: float
    seeds: int
    per_seed: dict[int, float]
    front: list[str]  # run keys on the fronts (all seeds)


def cell_scores(runs: pd.DataFrame) -> list[CellScore]:
    """Hypervolume of each method's runs per seed (the front of its configurations in that
    tier), then the mean ± CI over seeds."""
    scores = []
    if runs.empty:
        return scores
    cells = runs.groupby(["tier", "task_key", "model", "method"], sort=True).indices
    utility, seeds = runs[UTILITY].to_numpy(float), runs["seed"].to_numpy()
    keys, num_classes, labels = runs["run_key"].to_numpy(), runs["num_classes"].to_numpy(), runs["task_label"].to_numpy()
    gaps = {key: runs[key].to_numpy(float) for pair in GAPS.values() for key in pair if key in runs}
    for family, (binary_key, multi_key) in GAPS.items():
        for (tier, task_key, model, method) in sorted(cells):
            idx = cells[tier, task_key, model, method]
            k = int(num_classes[idx[0]])
            gap = gaps.get(binary_key if is_binary(k) else multi_key)
            if gap is None or np.isnan(gap[idx]).all():
                continue
            per_seed, front = {}, []
            for seed in np.unique(seeds[idx]):
                mine = idx[seeds[idx] == seed]
                per_seed[int(seed)] = hypervolume(utility[mine], gap[mine], k)
                front += _front_keys(utility[mine], gap[mine], keys[mine])
            est = estimate(list(per_seed.values()))
            scores.append(CellScore(family, tier, task_key, labels[idx[0]], model, method,
                                    est.mean, est.half_width, est.n, per_seed, front))
    return scores


def _front_keys(u: np.ndarray, g: np.ndarray, keys: np.ndarray) -> list[str]:
    """Run keys on the (utility ↑, gap ↓) front, fairest first."""
    ok = np.flatnonzero(np.isfinite(u) & np.isfinite(g))
    return [str(k) for k in keys[ok][pareto_front(np.c_[g[ok], u[ok]])]]


def scores_frame(scores: list[CellScore]) -> pd.DataFrame:
    return scores_frame_from(pd.DataFrame([s.__dict__ for s in scores]))


def scores_frame_from(frame: pd.DataFrame) -> pd.DataFrame:
    """Cell scores (metric, tier, task_key, model, method, mean) with their cell, rank and
    number of other methods met."""
    from scipy.stats import rankdata
    if frame.empty:
        return frame
    frame = frame.copy()
    frame["cell"] = frame["task_key"] + "/" + frame["model"]
    # rank 1 = largest hypervolume in its (metric, tier, task, model) cell; ties share the mean rank;
    # a method alone in its cell has no rank
    frame["others"] = frame.groupby(["metric", "tier", "cell"])["mean"].transform("size") - 1
    ranks = frame.groupby(["metric", "tier", "cell"])["mean"].transform(lambda v: rankdata(-v.to_numpy()))
    frame["rank"] = ranks.where(frame["others"] > 0)
    return frame


def win_rate(frame: pd.DataFrame) -> pd.Series:
    """HELM's mean win rate: in each cell, the fraction of the other methods a method beats
    (a tie counts one half), averaged over the cells the method has results in. NaN when it
    never meets another method."""
    def one_cell(group: pd.DataFrame) -> pd.Series:
        v = group["mean"].to_numpy()
        wins = (v[:, None] > v[None, :]).sum(1) + 0.5 * ((v[:, None] == v[None, :]).sum(1) - 1)
        return pd.Series(np.where(len(v) > 1, wins / max(len(v) - 1, 1), np.nan), index=group.index)

    return frame.groupby(["metric", "tier", "cell"], group_keys=False)[["mean"]].apply(one_cell)


def leaderboard_table(frame: pd.DataFrame, min_shared: int = MIN_SHARED) -> pd.DataFrame:
    """One row per (metric, tier, method): mean rank and win rate over the cells it shares
    with a rival of its tier (``shared_cells``), mean hypervolume ± CI over all its cells
    (``cells``). A method is ranked only on at least ``min_shared`` shared cells: a rank from
    one or two cells says nothing (it is listed with the reason). Tiers sort by their ratios."""
    if frame.empty:
        return frame
    frame = frame.assign(win=win_rate(frame))
    rows = []
    for (metric, tier, method), g in frame.groupby(["metric", "tier", "method"], sort=True):
        hv = estimate(g["mean"])
        met = int(g["others"].max())
        shared = g[g["others"] > 0]
        ranked = shared["cell"].nunique() >= min_shared
        note = ("" if ranked else "alone in its tier: listed, not ranked" if not met
                else f"{shared['cell'].nunique()} cell(s) shared with a rival: ranked from {min_shared}")
        rows.append({"metric": metric, "tier": tier, "method": method,
                     "mean_rank": shared["rank"].mean() if ranked else np.nan,
                     "win_rate": shared["win"].mean() if ranked else np.nan, "hypervolume": hv.mean,
                     "hypervolume ci95": hv.half_width, "cells": g["cell"].nunique(),
                     "shared_cells": shared["cell"].nunique(), "methods_met": met, "ranked": ranked, "note": note})
    table = pd.DataFrame(rows)
    table["tier_order"] = table["tier"].map(tier_rank)
    table = table.sort_values(["metric", "tier_order", "ranked", "mean_rank", "method"],
                              ascending=[True, True, False, True, True])
    return table.drop(columns="tier_order").reset_index(drop=True)
