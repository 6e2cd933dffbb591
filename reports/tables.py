"""Comparison tables: one per (task identity, model), the dense model first, then one row
per method entry (sweep values included), every value a mean ± 95 % CI over seeds."""
from __future__ import annotations

import hashlib
import html
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from markupsafe import Markup

from .columns import DELTA_GAP, DELTA_UTILITY, Column, add_derived, comparison_columns
from .stats import MIN_INTERVAL_N, Estimate, estimate, estimates, metric_bounds

# flags that keep a row out of "best" marks, fronts and rankings: a constant model is not fair,
# a no-op is no result, a near-chance model (``chance``) has learnt next to nothing
UNRANKED_FLAGS = ("degenerate", "no_effect", "near_chance")


@dataclass
class Row:
    label: str
    method: str
    family: str
    entry: int
    entry_label: str
    sweep: dict
    runs: list[tuple[int, str]]  # (seed, run key), by seed
    flags: dict[str, int]  # flag -> number of seeds carrying it
    values: dict[str, Estimate]
    best: set[str] = field(default_factory=set)

    @property
    def ranked(self) -> bool:
        return not any(self.flags.get(f) for f in UNRANKED_FLAGS)

    @property
    def seeds(self) -> int:
        return len(self.runs)


@dataclass
class Comparison:
    task_key: str
    task_label: str
    model: str
    num_classes: int
    columns: list[Column]
    rows: list[Row]

    @property
    def anchor(self) -> str:
        return "t-" + hashlib.sha1(f"{self.task_key}|{self.model}".encode()).hexdigest()[:12]

    def numeric(self) -> pd.DataFrame:
        """Means, CI half-widths and seed counts as numbers (CSV/JSON export)."""
        records = []
        for row in self.rows:
            rec = {"task": self.task_label, "task_key": self.task_key, "model": self.model, "label": row.label,
                   "method": row.method, "seeds": row.seeds, "flags": ",".join(sorted(k for k, v in row.flags.items() if v)),
                   "runs": " ".join(k for _, k in row.runs)}
            for col in self.columns:
                est = row.values[col.key]
                rec[col.key] = est.mean
                rec[f"{col.key} ci95"] = est.half_width
            records.append(rec)
        return pd.DataFrame.from_records(records)

    def display(self, detail: bool = False) -> pd.DataFrame:
        """"mean ± ci" strings with headers as shown (LaTeX/Markdown export); the best
        value per column is starred; detail columns are left out unless asked for."""
        cols = [c for c in self.columns if detail or not c.detail]
        data = {}
        for col in cols:
            data[col.label] = [
                ("" if np.isnan(r.values[col.key].mean) else f"{r.values[col.key].mean:.{col.digits}f}")
                + (f" ± {r.values[col.key].half_width:.{col.digits}f}" if np.isfinite(r.values[col.key].half_width) else "")
                + ("*" if col.key in r.best else "")
                for r in self.rows
            ]
        index = pd.Index([f"{r.label} (n={r.seeds})" + (" [" + ",".join(k for k, v in r.flags.items() if v) + "]" if any(r.flags.values()) else "") for r in self.rows], name="method")
        return pd.DataFrame(data, index=index)


def cells_html(row: Row, columns: list[Column], num_classes: int = 2) -> Markup:
    """The value cells of one table row as HTML: mean (``data-v`` for sorting) with its CI
    clipped to the metric's range (the clipped end marked), or the per-seed values below 3
    seeds; the column's group and detail classes, bold when best. Built here rather than by
    a template macro: a store of thousands of runs has a hundred thousand cells."""
    out = []
    for col in columns:
        est = row.values[col.key]
        best = " best" if col.key in row.best else ""
        if est.n == 0 or est.mean != est.mean:
            text, value = "–", ""
        elif est.values and est.n < MIN_INTERVAL_N:
            value, text = repr(est.mean), f"<small>{html.escape(est.display(col.digits))}</small>"
        else:
            value = repr(est.mean)
            text = f"{est.mean:.{col.digits}f}"
            if est.half_width == est.half_width:
                bounds = metric_bounds(col.key, num_classes)
                text += f"<small> {html.escape(est.interval_text(col.digits, bounds))}</small>"
        out.append(f'<td data-v="{value}" class="c-{col.group} {col.detail}{best}" '
                   f'title="{html.escape(col.label)}: n={est.n} seed(s)">{text}</td>')
    return Markup("".join(out))


def _row(label: str, members: list[dict], values: dict[str, Estimate]) -> Row:
    """One table row from its runs' records (sorted by seed)."""
    first = members[0]
    flags: dict[str, int] = {}
    for m in members:
        for f in m["flags"] or ():
            flags[f] = flags.get(f, 0) + 1
    return Row(
        label=label,
        method=first["method"],
        family=first.get("family", "") or "",
        entry=int(first["entry"]),
        entry_label=first["entry_label"],
        sweep=dict(first["sweep"] or {}),
        runs=[(int(m["seed"]), m["run_key"]) for m in members],
        flags=flags,
        values=values,
    )


def _mark_best(rows: list[Row], columns: list[Column]) -> None:
    ranked = [r for r in rows if r.ranked]
    for col in columns:
        if col.higher_is_better is None:
            continue
        means = np.array([r.values[col.key].mean for r in ranked], dtype=float)
        if not np.isfinite(means).any():
            continue
        best = np.nanmax(means) if col.higher_is_better else np.nanmin(means)
        for i in np.flatnonzero(np.abs(means - best) <= 1e-12):
            ranked[i].best.add(col.key)


def comparisons(frame: pd.DataFrame, tasks: dict | None = None) -> list[Comparison]:
    """One :class:`Comparison` per (task_key, model) of the finished runs in ``frame``
    (``Results.done()``)."""
    if frame.empty:
        return []
    frame = add_derived(frame)
    metric_keys = [c for c in frame.columns if "[g=" in c or c in _METRICISH]
    out = []
    for (task_key, model), cell in frame.groupby(["task_key", "model"], sort=True):
        num_classes = int(cell["num_classes"].iloc[0])
        columns = comparison_columns(metric_keys, num_classes)
        order = cell.assign(_dense=cell["method"] != "dense").sort_values(["_dense", "entry", "label"])
        present = [c.key for c in columns if c.key in cell] + list(PAIRED)
        values = estimates(order, "label", present)
        empty = estimate([])
        keys = [c.key for c in columns] + list(PAIRED)
        members: dict[str, list[dict]] = {}  # label -> its runs by seed, labels in table order
        fields = ["label", "method", "family", "entry", "entry_label", "sweep", "seed", "run_key", "flags"]
        by_seed = order.sort_values("seed", kind="stable")[[f for f in fields if f in order]].to_dict("records")
        for label in order["label"].unique():
            members[label] = []
        for record in by_seed:
            members[record["label"]].append(record)
        rows = [_row(label, mine, {k: values[label].get(k, empty) for k in keys}) for label, mine in members.items()]
        _mark_best(rows, columns)
        out.append(Comparison(task_key, cell["task_label"].iloc[0], model, num_classes, columns, rows))
    return sorted(out, key=lambda c: (c.task_label, c.model))


# per-row values kept beside the columns: the mean per-seed change against dense (the paired view)
PAIRED = (DELTA_UTILITY, DELTA_GAP)

# the scalar metric keys a comparison may show (per-group keys are matched by "[g=")
_METRICISH = {
    "accuracy", "precision_avg", "precision_diff", "recall_avg", "recall_diff", "f1_avg", "f1_diff",
    "deo", "fpr_diff", "dp_diff", "eopp0", "eopp1", "eodd", "eopp0_sum", "eopp1_sum", "eodd_sum",
}
