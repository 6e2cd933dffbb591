"""Claims → verdicts: does the paired evidence support what a paper says?

Each claim of ``claims.yaml`` (one sentence, its source, the two sides and the metric) is
tested on pairs: a run of the fair method and its twin on the same task, model and seed (the
same dense reference), matched by parameters or by compression ratio. The test is a paired
t-test on the differences fair − twin over every pair of every cell; the family of claims is
Holm-corrected. A claim is

- **supported** when the Holm-adjusted p is below ``ALPHA``, the mean difference has the
  claimed sign and, for a claim with an accuracy cost, the interval of the accuracy lost stays
  below that cost;
- **contradicted** when the difference is significant with the other sign, or the accuracy
  lost is significantly above the cost (the cost condition reads the cost's 95 % interval,
  outside the Holm family);
- **inconclusive** otherwise, with the smallest effect the design could detect at that n
  (power 0.8) so that "no difference" and "too few pairs" can be told apart;
- **untested** when the suite has no pair for it (the reason says which side is missing).

Runs flagged degenerate (constant predictions: a gap of 0 that measures nothing) and runs
whose dense reference is underfit are left out of the pairs; the row counts them.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from fairsqueeze.measure.biascard import is_underfit

from .columns import is_binary
from .stats import detectable_effect, holm, paired_deltas, paired_t

ALPHA = 0.05
CLAIMS_FILE = Path(__file__).with_name("claims.yaml")
RATIO_TOLERANCE = 1e-3  # relative: two compression ratios this close are equal
VERDICT_COLUMNS = ["id", "claim", "source", "verdict", "metric", "effect", "low", "high", "p", "p_holm", "pairs",
                   "cells", "disagreeing_cells", "detectable_effect", "accuracy_cost", "accuracy_cost_high",
                   "left_out", "note"]


@dataclass(frozen=True)
class Side:
    method: str
    params: dict = field(default_factory=dict)
    params_not: dict = field(default_factory=dict)

    def selects(self, method: str, params: dict) -> bool:
        return (method == self.method and all(params.get(k) == v for k, v in self.params.items())
                and all(params.get(k) != v for k, v in self.params_not.items()))


@dataclass(frozen=True)
class Claim:
    id: str
    claim: str
    source: str
    fair: Side
    twin: Side
    metric: dict  # {"binary": key, "multiclass": key}
    direction: str = "lower"
    match: tuple[str, ...] | str = ()
    accuracy_cost: float | None = None

    def metric_for(self, num_classes: int) -> str:
        return self.metric["binary" if is_binary(num_classes) else "multiclass"]


def load_claims(path: Path | str | None = None) -> list[Claim]:
    """The claims of ``path`` (the packaged ``claims.yaml`` by default)."""
    data = yaml.safe_load(Path(path or CLAIMS_FILE).read_text(encoding="utf-8"))
    claims = []
    for c in data["claims"]:
        metric = c["metric"] if isinstance(c["metric"], dict) else {"binary": c["metric"], "multiclass": c["metric"]}
        match = c.get("match", ())
        if match != "compression":
            match = tuple(match)
        if c.get("direction", "lower") not in ("lower", "higher"):
            raise ValueError(f"claim {c['id']}: direction must be lower or higher")
        claims.append(Claim(c["id"], c["claim"], c["source"], Side(**c["fair"]), Side(**c["twin"]), metric,
                            c.get("direction", "lower"), match, c.get("accuracy_cost")))
    return claims


def twin_map(claims: list[Claim]) -> dict[str, tuple[str, ...]]:
    """Fair method -> the other methods its claims compare it with, in the claims' order."""
    pairs: dict[str, tuple[str, ...]] = {}
    for c in claims:
        if c.fair.method != c.twin.method and c.twin.method not in pairs.get(c.fair.method, ()):
            pairs[c.fair.method] = pairs.get(c.fair.method, ()) + (c.twin.method,)
    return pairs


def underfit_dense_keys(dense: pd.DataFrame) -> set[str]:
    """Keys of the stored dense references whose bias card flags them underfit."""
    if dense.empty or "bias_card" not in dense:
        return set()
    return set(dense.loc[dense["bias_card"].map(is_underfit), "key"])


PAIR_COLUMNS = ["cell", "config", "seed", "metric", "fair", "twin", "fair_accuracy", "twin_accuracy", "idle"]


def claim_pairs(frame: pd.DataFrame, claim: Claim) -> pd.DataFrame:
    """One row per pair: the cell (task label · model), the fair run's label, seed, the fair
    and twin values of the claim's metric and of accuracy (a twin interpolated at the fair
    run's compression ratio for ``match: compression``)."""
    if frame.empty:
        return pd.DataFrame(columns=PAIR_COLUMNS)
    cell = ["task_key", "model", "seed"]
    fair = frame[_selected(frame, claim.fair)].sort_values(cell, kind="stable")
    twins = {key: _Twins(runs) for key, runs in frame[_selected(frame, claim.twin)].groupby(cell, sort=False)}
    rows = []
    for f in fair.to_dict("records"):
        metric = claim.metric_for(int(f["num_classes"]))
        group = twins.get((f["task_key"], f["model"], f["seed"]))
        if group is None or metric not in frame:
            continue
        twin = group.values_for(f, claim, [metric, "accuracy"])
        if twin is None or not np.isfinite([f[metric], twin[metric]]).all():
            continue
        # both sides left the dense model's predictions as they were: the pair measures nothing
        idle = "no_effect" in (f["flags"] or ()) and twin["no_effect"] == 1.0
        rows.append({"cell": f"{f['task_label']} · {f['model']}", "config": f["label"], "seed": int(f["seed"]),
                     "metric": metric, "fair": float(f[metric]), "twin": float(twin[metric]),
                     "fair_accuracy": float(f["accuracy"]), "twin_accuracy": float(twin["accuracy"]),
                     "idle": bool(idle)})
    return pd.DataFrame(rows, columns=PAIR_COLUMNS)


def _selected(frame: pd.DataFrame, side: Side) -> np.ndarray:
    chosen = (frame["method"] == side.method).to_numpy(copy=True)
    rows = np.flatnonzero(chosen)
    chosen[rows] = [side.selects(side.method, p) for p in frame["params"].to_numpy()[rows]]
    return chosen


class _Twins:
    """The twin runs of one (task, model, seed), as arrays: what :func:`claim_pairs` asks of
    them once per fair run."""

    def __init__(self, runs: pd.DataFrame):
        self.runs = runs
        self.params = list(runs["params"])
        self.ratio = runs["compression_ratio"].to_numpy(float) if "compression_ratio" in runs else None
        self.columns = {"no_effect": runs["flags"].map(lambda f: float("no_effect" in (f or ()))).to_numpy(float)}

    def column(self, name: str) -> np.ndarray:
        if name not in self.columns:
            self.columns[name] = self.runs[name].to_numpy(float)
        return self.columns[name]

    def values_for(self, fair: dict, claim: Claim, columns: list[str]) -> dict | None:
        """The twin's ``columns`` (and ``no_effect``: 1.0 when every twin run used was
        flagged no_effect) for the fair run: its ratio's twin for ``match: compression``,
        else the twins with the same ``claim.match`` parameters (several: their mean)."""
        columns = columns + ["no_effect"]
        if claim.match == "compression":
            return self._at_ratio(float(fair["compression_ratio"]), columns)
        same = np.array([all(p.get(k) == fair["params"].get(k) for k in claim.match) for p in self.params])
        return self._mean(same, columns) if same.any() else None

    def _mean(self, rows: np.ndarray, columns: list[str]) -> dict:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column's mean is NaN, as it should be
            return {c: float(np.nanmean(self.column(c)[rows])) for c in columns}

    def _at_ratio(self, ratio: float, columns: list[str]) -> dict | None:
        """An equal ratio, else linear between the nearest ratios below and above; None when
        no twin configuration brackets it."""
        r = self.ratio
        equal = np.abs(r - ratio) <= RATIO_TOLERANCE * ratio
        if equal.any():
            return self._mean(equal, columns)
        below, above = np.flatnonzero(r < ratio), np.flatnonzero(r > ratio)
        if not len(below) or not len(above):
            return None
        lo, hi = below[np.argmax(r[below])], above[np.argmin(r[above])]
        w = (ratio - r[lo]) / (r[hi] - r[lo])
        return {c: float((1 - w) * self.column(c)[lo] + w * self.column(c)[hi]) for c in columns}


def usable(frame: pd.DataFrame, dense: pd.DataFrame | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Runs that may enter a pair, and those left out (degenerate, or on an underfit dense
    reference)."""
    underfit = underfit_dense_keys(dense) if dense is not None else set()
    bad = frame["flags"].map(lambda f: "degenerate" in (f or ()))
    if "dense_key" in frame:
        bad |= frame["dense_key"].isin(underfit)
    return frame[~bad], frame[bad]


def verdicts(frame: pd.DataFrame, claims: list[Claim] | None = None, dense: pd.DataFrame | None = None,
             alpha: float = ALPHA) -> pd.DataFrame:
    """One row per claim (columns ``VERDICT_COLUMNS``). ``frame``: finished runs with their
    metrics (``Results.done()``); ``dense``: the stored dense references (``Results.dense``)."""
    claims = load_claims() if claims is None else claims
    runs, dropped = usable(frame, dense) if not frame.empty else (frame, frame)
    rows = []
    for claim in claims:
        pairs = claim_pairs(runs, claim)
        idle = int(pairs["idle"].sum())
        left_out = int(dropped["method"].isin([claim.fair.method, claim.twin.method]).sum()) if len(dropped) else 0
        row = _test(claim, pairs[~pairs["idle"].astype(bool)], runs, left_out)
        if idle:
            row["note"] += f"{'; ' if row['note'] else ''}{idle} pair(s) where neither side changed a prediction left out"
        rows.append(row)
    table = pd.DataFrame(rows, columns=VERDICT_COLUMNS)
    table["p_holm"] = holm(table["p"].to_numpy(float))
    table["verdict"] = [_verdict(c, r, alpha) for c, r in zip(claims, table.to_dict("records"))]
    return table


def _test(claim: Claim, pairs: pd.DataFrame, runs: pd.DataFrame, left_out: int) -> dict[str, Any]:
    row: dict[str, Any] = {"id": claim.id, "claim": claim.claim, "source": claim.source, "verdict": "",
                           "metric": ", ".join(sorted(set(claim.metric.values()))), "left_out": left_out,
                           "disagreeing_cells": [], "note": ""}
    if len(pairs) < 2:
        present = set(runs["method"]) if "method" in runs else set()
        missing = [m for m in (claim.fair.method, claim.twin.method) if m not in present]
        row["note"] = (f"not in the suite: {', '.join(missing)}" if missing
                       else "1 matched pair: a paired test needs 2 or more" if len(pairs) == 1
                       else "no like-for-like configurations in these results")
        row.update(effect=math.nan, low=math.nan, high=math.nan, p=math.nan, pairs=len(pairs),
                   cells=pairs["cell"].nunique(), detectable_effect=math.nan, accuracy_cost=math.nan,
                   accuracy_cost_high=math.nan)
        return row
    diff = (pairs["fair"] - pairs["twin"]).to_numpy()
    mean, half, p, n = paired_t(diff)
    row.update(effect=mean, low=mean - half, high=mean + half, p=p, pairs=n, cells=pairs["cell"].nunique(),
               detectable_effect=detectable_effect(float(np.std(diff, ddof=1)), n))
    by_cell = pairs.assign(d=diff).groupby("cell")["d"].mean()
    row["disagreeing_cells"] = sorted(by_cell.index[np.sign(by_cell) == -np.sign(mean)]) if mean else []
    cost, cost_half, _, _ = paired_t((pairs["twin_accuracy"] - pairs["fair_accuracy"]).to_numpy())
    row.update(accuracy_cost=cost, accuracy_cost_high=cost + cost_half)
    if claim.accuracy_cost is not None:
        row["note"] = (f"accuracy cost {cost:+.4f} [{2 * cost - row['accuracy_cost_high']:+.4f}, "
                       f"{row['accuracy_cost_high']:+.4f}] against a limit of {claim.accuracy_cost:g}")
    return row


def _verdict(claim: Claim, row: dict[str, Any], alpha: float) -> str:
    if not np.isfinite(row["p_holm"]):
        return "untested" if row["pairs"] < 2 else "inconclusive"
    significant = row["p_holm"] < alpha
    right_sign = row["effect"] < 0 if claim.direction == "lower" else row["effect"] > 0
    if claim.accuracy_cost is not None:
        cost_low = 2 * row["accuracy_cost"] - row["accuracy_cost_high"]
        if cost_low > claim.accuracy_cost:
            return "contradicted"
        cost_ok = row["accuracy_cost_high"] < claim.accuracy_cost
    else:
        cost_ok = True
    if significant and not right_sign:
        return "contradicted"
    if significant and right_sign and cost_ok:
        return "supported"
    return "inconclusive"


def verdict_table(results) -> pd.DataFrame:
    """The verdict table of ``results`` (``reports.data.Results``); a run shared by several
    suites or labels counts once."""
    def compute() -> pd.DataFrame:
        done = results.done()
        if not done.empty:
            done = done.drop_duplicates("run_key")
        return verdicts(done, dense=results.dense)

    return results.derived("verdicts", compute)


def dense_delta_table(results, metrics: tuple[str, ...] = ("accuracy", "accuracy_diff", "eodd", "eopp1", "deo",
                                                            "dp_diff")) -> pd.DataFrame:
    """Every method cell of ``results`` against the dense model of the same seed
    (``stats.paired_deltas``), per (task, model, entry label) and metric, with its
    ``estimate`` (drop it for export)."""
    done = results.done()
    if done.empty:
        return pd.DataFrame()
    done = done.drop_duplicates(["task_key", "model", "label", "seed"])
    present = [m for m in metrics if m in done]
    return paired_deltas(done, present, cell=("task_key", "task_label", "model"))


def delta_sections(deltas: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """``dense_delta_table`` rows per ``task_key|model``, ready for ``_paired_deltas.html.j2``:
    the metrics present and, per entry label, the display of each Δ (per-seed values below
    3 pairs, ``mean ± paired half-width`` from 3 on) with its number of pairs."""
    out: dict[str, dict[str, Any]] = {}
    if deltas.empty:
        return out
    records = deltas[["task_key", "model", "label", "method", "metric", "n", "estimate"]].to_dict("records")
    cells: dict[tuple, dict[str, list[dict]]] = {}
    for r in records:
        cells.setdefault((r["task_key"], r["model"]), {}).setdefault(r["label"], []).append(r)
    for (task_key, model), labels in cells.items():
        measured = {r["metric"] for rows in labels.values() for r in rows if r["n"] > 0}
        metrics = [m for m in dict.fromkeys(r["metric"] for rows in labels.values() for r in rows) if m in measured]
        rows = []
        for label in sorted(labels):
            mine = labels[label]
            by_metric = {r["metric"]: r["estimate"] for r in mine}
            rows.append({"label": label, "method": mine[0]["method"], "n": int(max(r["n"] for r in mine)),
                         "values": {m: _signed(by_metric[m]) for m in metrics if m in by_metric}})
        out[f"{task_key}|{model}"] = {"metrics": metrics, "rows": rows}
    return out


def _signed(est) -> str:
    if est.n == 0:
        return "–"
    if est.n < 3 or not math.isfinite(est.half_width):
        return " | ".join(f"{v:+.3f}" for v in est.values)
    return f"{est.mean:+.3f} ± {est.half_width:.3f}"


def for_export(table: pd.DataFrame) -> pd.DataFrame:
    """List and dict cells as text, for CSV."""
    return table.apply(lambda col: col.map(lambda v: "; ".join(map(str, v)) if isinstance(v, list)
                                           else (str(v) if isinstance(v, dict) else v)))
