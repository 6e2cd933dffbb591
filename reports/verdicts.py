"""Claims → verdicts: does the evidence, cell by cell, support what a paper says?

Each claim of ``claims.yaml`` (one sentence, its source, the two sides, the metric and its
smallest effect of interest δ) is tested on pairs: a run of the fair method and its twin on
the same task, model and seed (the same dense reference), matched by parameters or by
compression ratio. A claim generalises over (task, model) cells, so the cell is the unit
(``evidence``): per cell, the pairs of one seed are averaged over configurations, then the
paired mean over seeds; across cells a random-effects estimate with τ², I² and a prediction
interval. A claim whose metric differs between binary and multi-class cells becomes one row
per metric. Holm runs over every row the claims file defines (a fixed family: a row the
suite did not test enters with p = 1), and each row's interval, equivalence test and
detectable effect use the level its Holm step actually used. A row is

- **supported**: the interval lies on the claimed side of 0 (and the accuracy cost's
  interval below its limit, where the claim states one);
- **contradicted**: the interval lies on the other side, or the cost's interval above it;
- **no effect ≥ δ**: TOST on the pooled estimate: the 1 − 2·level interval inside (−δ, +δ);
  this comes first, so an effect that is real but smaller than δ reads here;
- **inconclusive**: none of these, with the smallest effect the design detects at that level
  (power 0.8) and how many cells of the present spread would detect δ;
- **not exercised**: most pairs idle (neither side changed a test prediction of the dense
  model), the share stated;
- **untested**: no pair (the reason says which side is missing).

Each row also reads as a dose–response curve against the fair run's compression ratio, with
a test for a trend (``dose_response``; Holm over the rows with a trend, a family of its own).
Idle pairs, degenerate runs and runs on an underfit dense reference leave the pairs and are
counted. A claim on the cancelling EOdd also reports a non-cancelling companion
(``COMPANIONS``) and says when the two disagree.
"""
from __future__ import annotations

import importlib.util
import math
import warnings
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from fairsqueeze.core.errors import FairsqueezeError

from fairsqueeze.measure.biascard import is_underfit
from fairsqueeze.measure.groups import DEFAULT_RULE, PROTECT_RULES
from fairsqueeze.measure.metrics import metric_def

from . import dose_response, evidence
from .columns import EODDS, is_binary
from .data import current_definitions, protect_rule
from .stats import paired_deltas

ALPHA = 0.05
CLAIMS_FILE = Path(__file__).with_name("claims.yaml")
RATIO_TOLERANCE = 1e-3  # relative: two compression ratios this close are equal
# δ, the smallest effect of interest, by metric kind (bench/metrics.py): one point of a gap or of
# accuracy. A claim may state its own ``delta``.
DEFAULT_DELTA = {"fairness": 0.01, "utility": 0.01}
FLAT_TOLERANCE = 1e-12  # differences this close are one value: no variation to test
IDLE_SHARE = 0.5  # more idle pairs than this: the claim was not exercised
# the metric a claim names -> its non-cancelling companion per kind of cell: Fairlearn's
# equalized-odds difference max(|ΔTPR|, |ΔFPR|) on binary cells; on multi-class cells the table
# form with absolute values inside, (EOpp0 + EOpp1) / 2 = (1/2K) Σ_k (|ΔTPR_k| + |ΔFPR_k|) ≥ EOdd
EODD_ABS = "eodd_abs"
COMPANIONS = {"eodd": {"binary": EODDS, "multiclass": EODD_ABS}}
OUTCOMES = ("supported", "contradicted", "no effect ≥ δ", "inconclusive", "not exercised", "untested")
VERDICT_COLUMNS = ["id", "claim_id", "claim", "source", "verdict", "metric", "direction", "delta", "effect", "low",
                   "high", "level", "p", "p_holm", "p_equivalence", "tau2", "i2", "pred_low", "pred_high", "cells",
                   "pairs", "idle_pairs", "zero_pairs", "unit", "detectable_effect", "units_needed",
                   "accuracy_limit", "accuracy_cost", "accuracy_cost_low", "accuracy_cost_high", "companion",
                   "companion_effect", "companion_low", "companion_high", "companion_verdict",
                   "disagreeing_cells", "doses", "trend", "trend_low", "trend_high", "trend_level", "trend_p",
                   "trend_p_holm", "trend_reading", "left_out", "decide", "note"]


@dataclass(frozen=True)
class Side:
    """One side of a claim: runs of ``method`` with ``params`` (and without ``params_not``)
    whose protected group was named by the rule ``protect`` (any rule when None)."""

    method: str
    params: dict = field(default_factory=dict)
    params_not: dict = field(default_factory=dict)
    protect: str | None = None

    def selects(self, method: str, params: dict, rule: str = DEFAULT_RULE) -> bool:
        return (method == self.method and all(params.get(k) == v for k, v in self.params.items())
                and all(params.get(k) != v for k, v in self.params_not.items())
                and (self.protect is None or rule == self.protect))


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
    delta: float | None = None  # None: DEFAULT_DELTA of the metric's kind

    def metric_for(self, num_classes: int) -> str:
        return self.metric["binary" if is_binary(num_classes) else "multiclass"]

    def rows(self) -> list[tuple[str, str, tuple[str, ...]]]:
        """(row id, metric, kinds of cell): one row per distinct metric."""
        if self.metric["binary"] == self.metric["multiclass"]:
            return [(self.id, self.metric["binary"], ("binary", "multiclass"))]
        return [(f"{self.id}:{self.metric[kind]}", self.metric[kind], (kind,)) for kind in ("binary", "multiclass")]

    def delta_for(self, metric: str) -> float:
        if self.delta is not None:
            return float(self.delta)
        try:
            return DEFAULT_DELTA[metric_def(metric).kind]
        except KeyError:
            raise ValueError(f"claim {self.id}: no default δ for metric {metric!r}; state a delta") from None


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
        delta = c.get("delta")
        if delta is not None and not (isinstance(delta, (int, float)) and delta > 0):
            raise ValueError(f"claim {c['id']}: delta must be a positive number")
        for side in ("fair", "twin"):
            rule = c[side].get("protect")
            if rule is not None and rule not in PROTECT_RULES:
                raise ValueError(f"claim {c['id']}: {side}.protect must be one of {', '.join(PROTECT_RULES)}")
        claim = Claim(c["id"], c["claim"], c["source"], Side(**c["fair"]), Side(**c["twin"]), metric,
                      c.get("direction", "lower"), match, c.get("accuracy_cost"), delta)
        for _, key, _ in claim.rows():
            claim.delta_for(key)  # a metric without a default δ needs the claim's own
        claims.append(claim)
    return claims


CLAIMS_GROUP = "fairsqueeze.claims"  # entry points naming a plugin package that ships a claims.yaml


def plugin_claim_files() -> list[Path]:
    """The ``claims.yaml`` of every installed package named in the ``fairsqueeze.claims``
    entry-point group, found without importing the package (the pages import no plugin)."""
    files = []
    for ep in entry_points(group=CLAIMS_GROUP):
        spec = importlib.util.find_spec(ep.value) if ep.value.isidentifier() else None
        folders = list(spec.submodule_search_locations or []) if spec else []
        found = [Path(f) / "claims.yaml" for f in folders if (Path(f) / "claims.yaml").is_file()]
        if not found:
            raise FairsqueezeError(f"claims entry point {ep.name!r}: no claims.yaml in the top-level package {ep.value!r}")
        files += found[:1]
    return files


def all_claims(extra: tuple[Path | str, ...] | list = ()) -> list[Claim]:
    """The packaged claims, then those the installed plugins ship, then ``extra`` files
    (``--claims FILE``): one family for Holm. A file that cannot be read, or a claim id given
    twice, is one line."""
    claims: list[Claim] = []
    for path in [CLAIMS_FILE, *plugin_claim_files(), *map(Path, extra)]:
        try:
            more = load_claims(path)
        except OSError as exc:
            raise FairsqueezeError(f"claims file {path}: cannot be read ({exc.strerror or exc})") from None
        except (ValueError, KeyError, TypeError, yaml.YAMLError) as exc:
            raise FairsqueezeError(f"claims file {path}: {type(exc).__name__}: {exc}") from None
        seen = {c.id for c in claims}
        for c in more:
            if c.id in seen:
                raise FairsqueezeError(f"claims file {path}: claim {c.id!r} is already defined")
        claims += more
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


PAIR_COLUMNS = ["cell", "task_key", "model", "config", "dose", "seed", "metric", "fair", "twin", "diff", "fair_accuracy",
                "twin_accuracy", "companion", "fair_companion", "twin_companion", "idle", "fair_run", "twin_runs"]


def with_companions(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with the companion columns it can derive from stored metrics."""
    frame = frame.copy()
    if EODDS not in frame and "deo" in frame and "fpr_diff" in frame:
        frame[EODDS] = frame[["deo", "fpr_diff"]].max(axis=1, skipna=False)
    if "eopp0" in frame and "eopp1" in frame:
        frame[EODD_ABS] = (frame["eopp0"] + frame["eopp1"]) / 2
    return frame


def claim_pairs(frame: pd.DataFrame, claim: Claim, kinds: tuple[str, ...] = ("binary", "multiclass"),
                unchanged: frozenset[str] | set[str] = frozenset()) -> pd.DataFrame:
    """One row per pair on the cells of ``kinds``: the cell (task label · model), the fair
    run's label, seed, the fair and twin values of the claim's metric, of its companion and
    of accuracy (a twin interpolated at the fair run's compression ratio for ``match:
    compression``), whether the pair is idle (both sides flagged ``no_effect``, or with their
    run keys in ``unchanged``: predictions equal to the dense model's on the report's split),
    and the run keys of both sides."""
    if frame.empty:
        return pd.DataFrame(columns=PAIR_COLUMNS)
    frame = with_companions(frame)
    cell = ["task_key", "model", "seed"]
    fair = frame[_selected(frame, claim.fair)].sort_values(cell, kind="stable")
    dense_nonzeros = _dense_nonzeros(frame)
    twins = {key: _Twins(runs, unchanged) for key, runs in frame[_selected(frame, claim.twin)].groupby(cell, sort=False)}
    rows = []
    for f in fair.to_dict("records"):
        kind = "binary" if is_binary(int(f["num_classes"])) else "multiclass"
        if kind not in kinds:
            continue
        metric = claim.metric[kind]
        companion = COMPANIONS.get(metric, {}).get(kind)
        companion = companion if companion in frame else None
        group = twins.get((f["task_key"], f["model"], f["seed"]))
        if group is None or metric not in frame:
            continue
        twin = group.values_for(f, claim, [metric, "accuracy"] + ([companion] if companion else []))
        if twin is None or not np.isfinite([f[metric], twin[metric]]).all():
            continue
        # both sides left the dense model's predictions as they were: the pair measures nothing
        idle = ("no_effect" in (f["flags"] or ()) or f.get("run_key") in unchanged) and twin["no_effect"] == 1.0
        rows.append({"cell": f"{f['task_label']} · {f['model']}", "task_key": f["task_key"], "model": f["model"],
                     "config": f["label"], "dose": _dose(f, dense_nonzeros),
                     "seed": int(f["seed"]), "metric": metric, "fair": float(f[metric]),
                     "twin": float(twin[metric]), "diff": float(f[metric]) - float(twin[metric]),
                     "fair_accuracy": float(f["accuracy"]), "twin_accuracy": float(twin["accuracy"]),
                     "companion": companion or "",
                     "fair_companion": float(f[companion]) if companion else math.nan,
                     "twin_companion": float(twin[companion]) if companion else math.nan,
                     "idle": bool(idle), "fair_run": f.get("run_key", ""), "twin_runs": twin["runs"]})
    return pd.DataFrame(rows, columns=PAIR_COLUMNS)


def _dense_nonzeros(frame: pd.DataFrame) -> dict[str, float]:
    """The dense reference's stored nonzero weights by ``dense_key`` (from its own run)."""
    if "nonzeros" not in frame or "dense_key" not in frame:
        return {}
    dense = frame[frame["method"] == "dense"].drop_duplicates("dense_key")
    return dict(zip(dense["dense_key"], dense["nonzeros"].astype(float)))


def _dose(run: dict, dense_nonzeros: dict[str, float]) -> float:
    """How much a run compressed its dense model: the larger of the stored-size ratio (the
    papers' compression ratio) and the ratio of nonzero weights. Pruning's zeros are stored
    dense (ratio 1) but remove weights; quantization keeps every weight in fewer bits."""
    ratio = float(run.get("compression_ratio", math.nan))
    dense, mine = dense_nonzeros.get(run.get("dense_key")), run.get("nonzeros")
    if dense and mine and np.isfinite([dense, mine]).all() and mine > 0:
        return float(np.nanmax([ratio, dense / float(mine)]))
    return ratio


def _selected(frame: pd.DataFrame, side: Side) -> np.ndarray:
    chosen = (frame["method"] == side.method).to_numpy(copy=True)
    rows = np.flatnonzero(chosen)
    infos = frame["info"].to_numpy()[rows] if "info" in frame else [None] * len(rows)
    chosen[rows] = [side.selects(side.method, p, protect_rule(i))
                    for p, i in zip(frame["params"].to_numpy()[rows], infos)]
    return chosen


class _Twins:
    """The twin runs of one (task, model, seed), as arrays: what :func:`claim_pairs` asks of
    them once per fair run."""

    def __init__(self, runs: pd.DataFrame, unchanged: frozenset[str] | set[str] = frozenset()):
        self.runs = runs
        self.params = list(runs["params"])
        self.keys = runs["run_key"].astype(str).to_numpy() if "run_key" in runs else np.full(len(runs), "")
        self.ratio = runs["compression_ratio"].to_numpy(float) if "compression_ratio" in runs else None
        # the dense model is its own predictions: as a twin it changed nothing
        same = runs["flags"].map(lambda f: "no_effect" in (f or ())) | (runs["method"] == "dense")
        if "run_key" in runs:
            same |= runs["run_key"].isin(unchanged)
        self.columns = {"no_effect": same.to_numpy(float)}

    def column(self, name: str) -> np.ndarray:
        if name not in self.columns:
            self.columns[name] = self.runs[name].to_numpy(float)
        return self.columns[name]

    def values_for(self, fair: dict, claim: Claim, columns: list[str]) -> dict | None:
        """The twin's ``columns``, ``no_effect`` (1.0 when every twin run used was flagged
        no_effect) and ``runs`` (their keys) for the fair run: its ratio's twin for ``match:
        compression``, else the twins with the same ``claim.match`` parameters (several:
        their mean)."""
        columns = columns + ["no_effect"]
        if claim.match == "compression":
            return self._at_ratio(float(fair["compression_ratio"]), columns)
        same = np.array([all(p.get(k) == fair["params"].get(k) for k in claim.match) for p in self.params])
        return self._mean(same, columns) if same.any() else None

    def _mean(self, rows: np.ndarray, columns: list[str]) -> dict:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column's mean is NaN, as it should be
            out = {c: float(np.nanmean(self.column(c)[rows])) for c in columns}
        return {**out, "runs": " ".join(self.keys[rows])}

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
        out = {c: float((1 - w) * self.column(c)[lo] + w * self.column(c)[hi]) for c in columns}
        return {**out, "runs": f"{self.keys[lo]} {self.keys[hi]}"}


def usable(frame: pd.DataFrame, dense: pd.DataFrame | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Runs that may enter a pair, and those left out (degenerate, or on an underfit dense
    reference)."""
    underfit = underfit_dense_keys(dense) if dense is not None else set()
    bad = frame["flags"].map(lambda f: "degenerate" in (f or ()))
    if "dense_key" in frame:
        bad |= frame["dense_key"].isin(underfit)
    return frame[~bad], frame[bad]


@dataclass
class Verdicts:
    """The verdict table (``VERDICT_COLUMNS``, one row per claim and metric), and per row id
    its pairs (``PAIR_COLUMNS``, idle ones included and marked), its cells
    (``evidence.CELL_COLUMNS``) and its dose–response curves (``dose_response.CURVE_COLUMNS``,
    idle pairs left out)."""

    table: pd.DataFrame
    pairs: dict[str, pd.DataFrame]
    cells: dict[str, pd.DataFrame]
    curves: dict[str, pd.DataFrame] = field(default_factory=dict)


def evaluate(frame: pd.DataFrame, claims: list[Claim] | None = None, dense: pd.DataFrame | None = None,
             alpha: float = ALPHA, unchanged: frozenset[str] | set[str] = frozenset()) -> Verdicts:
    """The verdicts of ``claims`` (the packaged file by default: its rows are the Holm
    family) on ``frame``: finished runs with their metrics (``Results.done()``); ``dense``:
    the stored dense references (``Results.dense``); ``unchanged``: run keys whose
    predictions equal the dense model's (``unchanged_runs``)."""
    claims = load_claims() if claims is None else claims
    runs, dropped = usable(frame, dense) if not frame.empty else (frame, frame)
    rows, tests, all_pairs, all_cells, all_curves = [], [], {}, {}, {}
    for claim in claims:
        left_out = int(dropped["method"].isin([claim.fair.method, claim.twin.method]).sum()) if len(dropped) else 0
        for row_id, metric, kinds in claim.rows():
            pairs = claim_pairs(runs, claim, kinds, unchanged)
            test = _Test(claim, metric, pairs, _missing(claim, frame, runs, kinds))
            rows.append(test.row(row_id, left_out))
            tests.append(test)
            all_pairs[row_id], all_cells[row_id] = pairs, test.cells
            all_curves[row_id] = dose_response.curves(test.pairs)
    p = np.array([r["p"] for r in rows], dtype=float)
    reject, adjusted, level = evidence.holm_levels(p, alpha)
    for i, test in enumerate(tests):
        rows[i]["p_holm"] = adjusted[i] if np.isfinite(p[i]) else math.nan
        rows[i].update(test.decide(float(level[i]), bool(reject[i])))
    # the trends: a family of their own, the rows that have one
    trended = [i for i, t in enumerate(tests) if t.trend is not None and math.isfinite(t.trend.p)]
    _, adjusted, level = evidence.holm_levels([tests[i].trend.p for i in trended], alpha)
    for j, i in enumerate(trended):
        reading, low, high = dose_response.reading(tests[i].trend, tests[i].delta, float(level[j]))
        rows[i].update(trend=tests[i].trend.effect, trend_low=low, trend_high=high, trend_level=float(level[j]),
                       trend_p_holm=float(adjusted[j]), trend_reading=reading)
    table = pd.DataFrame(rows, columns=VERDICT_COLUMNS)
    return Verdicts(table, all_pairs, all_cells, all_curves)


def verdicts(frame: pd.DataFrame, claims: list[Claim] | None = None, dense: pd.DataFrame | None = None,
             alpha: float = ALPHA) -> pd.DataFrame:
    """The verdict table alone (see :func:`evaluate`)."""
    return evaluate(frame, claims, dense, alpha).table


def _missing(claim: Claim, frame: pd.DataFrame, runs: pd.DataFrame, kinds: tuple[str, ...] = ("binary", "multiclass")) -> str:
    """Why a claim row has no pair, where that is plain: no cell of the row's kind, a side not
    in the results at all, every run of it left out (degenerate, or on an underfit dense
    reference), or no run of it with the rule the side selects."""
    if "num_classes" in frame and len(frame) and len(kinds) == 1:
        present = {"binary" if is_binary(int(k)) else "multiclass" for k in frame["num_classes"].dropna().unique()}
        if kinds[0] not in present:
            return f"no {kinds[0]} cell in these results (this row's metric is for {kinds[0]} cells)"
    stored = set(frame["method"]) if "method" in frame else set()
    usable_ = set(runs["method"]) if "method" in runs else set()
    sides = (claim.fair.method, claim.twin.method)
    missing = [m for m in sides if m not in stored]
    if missing:
        return f"not in the suite: {', '.join(missing)}"
    dropped = [m for m in sides if m not in usable_]
    if dropped:
        return f"every run of {', '.join(dropped)} left out (degenerate, or on an underfit dense reference)"
    for side in (claim.fair, claim.twin):
        if side.protect is not None and not _selected(runs, Side(side.method, protect=side.protect)).any():
            rules = sorted({protect_rule(i) for i in runs.loc[runs["method"] == side.method, "info"]}) \
                if "info" in runs else [DEFAULT_RULE]
            return (f"no run of {side.method} protects the group named by the {side.protect} rule "
                    f"(its runs: the {', '.join(rules)} rule)")
    return ""


class _Test:
    """One row: its pairs reduced to cells, pooled, and decided at the level Holm gives it."""

    def __init__(self, claim: Claim, metric: str, pairs: pd.DataFrame, missing: str = "",
                 delta: float | None = None):
        self.claim, self.metric = claim, metric
        self.delta = claim.delta_for(metric) if delta is None else delta
        self.all_pairs = pairs
        idle = pairs["idle"].astype(bool).to_numpy() if len(pairs) else np.zeros(0, bool)
        self.idle = int(idle.sum())
        self.pairs = pairs[~idle]
        self.cells = evidence.cell_effects(self.pairs, "diff")
        self.est = self._pool("diff")
        self.trend, self.doses = dose_response.trend(self.pairs, evidence.SE_FLOOR * self.delta)
        self.flat = self._flat("diff")
        self.missing = missing

    def _pool(self, value: str, pairs: pd.DataFrame | None = None) -> evidence.Pooled | None:
        pairs = self.pairs if pairs is None else pairs
        if pairs.empty or self._flat(value, pairs) is not None:
            return None
        cells = evidence.cell_effects(pairs, value)
        seeds = pairs.groupby(["cell", "seed"])[value].mean()
        single = seeds.loc[cells.loc[np.isfinite(cells["se"].to_numpy(float)), "cell"].iloc[0]].to_numpy() \
            if np.isfinite(cells["se"].to_numpy(float)).sum() == 1 else None
        return evidence.pool(cells, single, evidence.SE_FLOOR * self.delta)

    def _flat(self, value: str, pairs: pd.DataFrame | None = None) -> float | None:
        """The one value every (cell, seed) gives, when they do not vary; else None."""
        pairs = self.pairs if pairs is None else pairs
        seeds = pairs.groupby(["cell", "seed"])[value].mean().to_numpy(float) if len(pairs) else np.zeros(0)
        seeds = seeds[np.isfinite(seeds)]
        # equal up to rounding (a sum of two stored values differs in its last bits)
        return float(seeds.mean()) if len(seeds) >= 2 and np.ptp(seeds) <= FLAT_TOLERANCE else None

    def row(self, row_id: str, left_out: int) -> dict[str, Any]:
        c = self.claim
        zero = int((self.pairs["diff"] == 0).sum()) if len(self.pairs) else 0
        return {"id": row_id, "claim_id": c.id, "claim": c.claim, "source": c.source, "verdict": "",
                "metric": self.metric, "direction": c.direction, "delta": self.delta,
                "p": self.est.p if self.est is not None else math.nan, "cells": len(self.cells),
                "pairs": len(self.pairs), "idle_pairs": self.idle, "zero_pairs": zero,
                "unit": self.est.unit if self.est is not None else "", "accuracy_limit": c.accuracy_cost,
                "companion": next((p for p in self.all_pairs["companion"] if p), "") if len(self.all_pairs) else "",
                "disagreeing_cells": [], "doses": self.doses,
                "trend_p": self.trend.p if self.trend is not None else math.nan,
                "left_out": left_out, "decide": "", "note": ""}

    def decide(self, level: float, rejected: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"level": level}
        notes: list[str] = []
        total = len(self.all_pairs)
        if total == 0:
            out["verdict"] = "untested"
            notes.append(self.missing or "no like-for-like configurations in these results")
        elif self.idle > IDLE_SHARE * total:
            out["verdict"] = "not exercised"
            notes.append(f"{self.idle} of {total} pairs idle ({self.idle / total:.0%}): neither side changed "
                         "a prediction of the dense model")
        elif self.flat is not None:
            out.update(effect=self.flat, low=self.flat, high=self.flat)
            out["verdict"] = "no effect ≥ δ" if abs(self.flat) < self.delta else "inconclusive"
            notes.append(f"no variation: every seed of every cell gives Δ = {self.flat:+.4g}, so there is no "
                         "interval and no test")
            if out["verdict"] == "inconclusive":
                out["decide"] = "pairs whose differences vary (more configurations or seeds)"
        elif self.est is None:
            out["verdict"] = "inconclusive"
            notes.append("no cell has 2 seeds: no cell has an interval")
            out["decide"] = "2 or more seeds in a cell"
        else:
            out.update(self._decided(level, rejected, notes))
        if self.idle and out["verdict"] != "not exercised":
            notes.append(f"{self.idle} idle pair(s) left out")
        if len(self.pairs) and (zero := int((self.pairs["diff"] == 0).sum())):
            notes.append(f"{zero} pair(s) with Δ exactly 0")
        out.update(self._companion(level, out["verdict"], notes))
        out["note"] = "; ".join(notes)
        return out

    def _decided(self, level: float, rejected: bool, notes: list[str]) -> dict[str, Any]:
        est, delta, c = self.est, self.delta, self.claim
        low, high = est.interval(level)
        out: dict[str, Any] = {"effect": est.effect, "low": low, "high": high, "tau2": est.tau2, "i2": est.i2,
                               "pred_low": est.pred_low, "pred_high": est.pred_high,
                               "p_equivalence": evidence.tost_p(est, delta)}
        cost = self._cost(level)
        if cost is not None:
            out.update(accuracy_cost=cost[0], accuracy_cost_low=cost[1], accuracy_cost_high=cost[2])
        claimed = -1 if c.direction == "lower" else 1
        cost_over = cost is not None and c.accuracy_cost is not None and cost[1] > c.accuracy_cost
        cost_ok = c.accuracy_cost is None or (cost is not None and cost[2] < c.accuracy_cost)
        if evidence.equivalent(est, delta, level) and not cost_over:
            verdict = "no effect ≥ δ"
            if rejected:
                notes.append(f"the effect is real but smaller than δ = {delta:g}")
        elif cost_over or (rejected and np.sign(est.effect) == -claimed):
            verdict = "contradicted"
        elif rejected and cost_ok:
            verdict = "supported"
        else:
            verdict = "inconclusive"
        out["verdict"] = verdict
        if est.floored:
            notes.append(f"{est.floored} cell(s) whose seeds agree exactly: standard error set to "
                         f"{evidence.SE_FLOOR:g}·δ")
        if est.unit == "seeds":
            notes.append("one cell: its seeds are the units, no between-cell variance")
        if c.accuracy_cost is not None and cost is not None:
            notes.append(f"accuracy cost {cost[0]:+.4f} [{cost[1]:+.4f}, {cost[2]:+.4f}] against a limit of "
                         f"{c.accuracy_cost:g}")
        if rejected and verdict == "inconclusive":
            notes.append("the accuracy cost's interval reaches its limit")
        cells = self.cells[np.isfinite(self.cells["se"].to_numpy(float))]
        other = cells[(cells["low"] > 0) if est.effect < 0 else (cells["high"] < 0)] if est.effect else cells.iloc[:0]
        out["disagreeing_cells"] = sorted(other["cell"])
        det = evidence.detectable(est, level)
        out["detectable_effect"] = det
        need = evidence.units_needed(est, delta, level)
        out["units_needed"] = need if need is not None else math.nan
        if verdict == "inconclusive":
            unit = est.unit
            out["decide"] = (f"detects |Δ| ≥ {det:.3g} at level {level:.2g}; "
                             + (f"{need} {unit} of this spread would detect δ = {delta:g}" if need
                                else f"δ = {delta:g} is beyond any number of {unit} of this spread"))
        return out

    def _cost(self, level: float) -> tuple[float, float, float] | None:
        """Accuracy lost by the fair side (twin − fair), pooled over cells like the effect:
        (estimate, low, high) at ``level``."""
        pairs = self.pairs.assign(cost=self.pairs["twin_accuracy"] - self.pairs["fair_accuracy"])
        flat = self._flat("cost", pairs)
        if flat is not None:
            return flat, flat, flat
        est = self._pool("cost", pairs)
        if est is None:
            return None
        low, high = est.interval(level)
        return est.effect, low, high

    def _companion(self, level: float, verdict: str, notes: list[str]) -> dict[str, Any]:
        """The non-cancelling companion, decided by the same rules at the same level (outside
        the Holm family); a note when it reads otherwise than the claim's metric."""
        if not len(self.pairs) or not self.pairs["companion"].astype(bool).any():
            return {}
        pairs = self.pairs[self.pairs["companion"].astype(bool)].assign(
            diff=lambda f: f["fair_companion"] - f["twin_companion"])
        pairs = pairs[np.isfinite(pairs["diff"].to_numpy(float))]
        if pairs.empty:
            return {}
        shadow = _Test(self.claim, pairs["companion"].iloc[0], pairs.assign(companion=""), delta=self.delta)
        est = shadow.est
        reject = est is not None and math.isfinite(est.p) and (est.p < level)
        decided = shadow.decide(level, reject)
        out = {"companion_verdict": decided["verdict"], "companion_effect": decided.get("effect", math.nan),
               "companion_low": decided.get("low", math.nan), "companion_high": decided.get("high", math.nan)}
        if decided["verdict"] != verdict:
            notes.append(f"the non-cancelling {shadow.metric} reads {decided['verdict']}")
        return out


def verdict_table(results) -> pd.DataFrame:
    """The verdict table of ``results`` (``reports.data.Results``)."""
    return evaluation(results).table.copy()


def evaluation(results) -> Verdicts:
    """The :class:`Verdicts` of ``results``: the current definition of each suite, each
    (task, model, seed, configuration) once (``data.current_definitions``)."""
    def compute() -> Verdicts:
        claims = all_claims(results.claim_files)
        done = current_definitions(results.done())
        return evaluate(done, claims, dense=results.dense, unchanged=unchanged_runs(results, done, claims))

    return results.derived("verdicts", compute)


def unchanged_runs(results, done: pd.DataFrame, claims: list[Claim] | None = None) -> set[str]:
    """Keys of the runs of the claims' methods whose stored predictions on the results'
    split equal those of the dense run of the same reference: on that split they changed
    nothing (the engine's ``no_effect`` flag asks this of validation and test together)."""
    claims = load_claims() if claims is None else claims
    methods = {m for c in claims for m in (c.fair.method, c.twin.method)}
    if done.empty or "dense_key" not in done:
        return set()
    dense = done[done["method"] == "dense"].drop_duplicates("dense_key").set_index("dense_key")["run_key"]
    runs = done[done["method"].isin(methods) & done["dense_key"].isin(dense.index)]
    if runs.empty:
        return set()
    preds = results.predictions_of(sorted(set(runs["run_key"]) | set(dense)))
    same = set()
    for key, ref in zip(runs["run_key"], runs["dense_key"].map(dense)):
        if key in preds and ref in preds and np.array_equal(preds[key]["y_pred"], preds[ref]["y_pred"]):
            same.add(key)
    return same


def pairs_for(results, row_id: str) -> pd.DataFrame:
    """The pairs of one verdict row (its ``id``, or the claim's id when it has one row), idle
    pairs included and marked."""
    found = evaluation(results).pairs
    if row_id not in found:
        ids = [k for k in found if k.split(":")[0] == row_id]
        if len(ids) != 1:
            raise KeyError(f"no verdict row {row_id!r}; rows: {', '.join(found)}")
        row_id = ids[0]
    return found[row_id].copy()


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
