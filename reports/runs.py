"""Per-run detail sections: configuration, resolved parameters, hashes, footprint, timings,
per-group results and per-group confusion matrices, all read from the store.

Built as escaped HTML in Python rather than in the template, with no pandas per run: a
report may hold ten thousand runs, and this is the one part that grows with them (written
on pages of their own, ``run_pages``)."""
from __future__ import annotations

import html
import math
from typing import Any

import numpy as np

from .columns import groups_in
from .data import Results

MAX_CONFUSION_CLASSES = 10  # larger matrices are left out of the page (the per-group table stays)
HASH_COLUMNS = ("run_key", "dense_key", "task_key", "split_hash", "data_hash")
RECORD_COLUMNS = ("suite", "label", "entry_label", "task_label", "target", "sensitive", "num_classes", "model",
                  "method", "family", "seed", "sweep")
GROUP_METRICS = ("support", "accuracy", "precision", "recall", "f1", "tpr", "fpr")


def escape(value) -> str:
    """HTML-escaped text (quotes included, for attributes): the standard library's escape,
    several times faster than building Markup objects for the ~100 cells of each run."""
    return html.escape(str(value))


def human_bytes(n: float) -> str:
    """1536 -> "1.5 KiB": binary units, three significant digits."""
    size, unit = float(n), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            break
        size /= 1024
    return f"{int(size)} B" if unit == "B" else f"{size:.3g} {unit}"


def _text(value, key: str = "") -> str:
    """A scalar as a reader wants it: bytes in KiB/MiB, whole numbers without a decimal
    point and with thousands separators, other numbers to four significant digits."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, float, np.integer, np.floating)):
        if "bytes" in key and math.isfinite(value):
            return human_bytes(value)
        if float(value).is_integer() and abs(value) < 1e15:
            return f"{int(value):,}"
        return f"{float(value):.4g}"
    return str(value)


def _cell(key: str, value, depth: int = 0) -> str:
    """A value as HTML: a dict becomes a nested table, a list of scalars one line, a list
    of dicts one nested table each."""
    if isinstance(value, dict) and value and depth < 4:
        return _kv(value, depth + 1)
    if isinstance(value, (list, tuple)) and value:
        if all(isinstance(v, dict) for v in value) and depth < 4:
            return "".join(_kv(v, depth + 1) for v in value)
        return escape(", ".join(_text(v, key) for v in value))
    if isinstance(value, dict):
        return "–"
    return escape(_text(value, key))


def _kv(mapping: dict[str, Any], depth: int = 0) -> str:
    rows = "".join(f'<tr><th class="lbl">{escape(str(k))}</th><td class="lbl wrap">{_cell(str(k), v, depth)}</td></tr>'
                   for k, v in sorted(mapping.items(), key=lambda kv: str(kv[0])))
    return f'<table class="{"kv nested" if depth else "kv"}"><tbody>{rows}</tbody></table>'


def _grid(corner: str, index, columns, cells) -> str:
    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    body = "".join(
        f'<tr><th class="lbl">{escape(i)}</th>' + "".join(f"<td>{escape(_text(v))}</td>" for v in row) + "</tr>"
        for i, row in zip(index, cells)
    )
    return f'<table><thead><tr><th class="lbl">{escape(corner)}</th>{head}</tr></thead><tbody>{body}</tbody></table>'


class GroupColumns:
    """Positions of the per-group metric columns in the metric table, found once."""

    def __init__(self, columns):
        columns = list(columns)
        self.groups = groups_in(columns, "accuracy")
        where = {c: i for i, c in enumerate(columns)}
        self.metrics = [m for m in GROUP_METRICS if self.groups and f"{m}[g={self.groups[0]}]" in where]
        self.index = [[where.get(f"{m}[g={g}]") for m in self.metrics] for g in self.groups]

    def table(self, values: np.ndarray) -> str | None:
        """One row per group, one column per stored per-group metric (all-NaN columns left out)."""
        if not self.groups:
            return None
        cells = [[float(values[i]) if i is not None else math.nan for i in row] for row in self.index]
        keep = [j for j in range(len(self.metrics)) if any(not math.isnan(c[j]) for c in cells)]
        return _grid("group", self.groups, [self.metrics[j] for j in keep], [[c[j] for j in keep] for c in cells])


def confusions(pred: dict[str, np.ndarray], num_classes: int) -> dict[int, np.ndarray]:
    """Per-group confusion matrices (rows: true label, columns: prediction) of stored
    predictions; rows of unknown group (s < 0) are left out, as in every group metric."""
    k = int(num_classes)
    y, y_pred, s = (np.asarray(pred[c]).astype(int) for c in ("y", "y_pred", "s"))
    return {int(g): np.bincount(y[s == g] * k + y_pred[s == g], minlength=k * k).reshape(k, k)
            for g in np.unique(s[s >= 0])}


def run_title(r) -> str:
    return f"{r['task_label']} · {r['model']} · {r['label']} · seed {r['seed']}"


def run_section(r: dict, results: Results, groups: GroupColumns, metrics: dict, footprint: dict,
                predictions: dict[str, dict[str, np.ndarray]]) -> str:
    """One run's details; ``predictions``: run key -> stored predictions (the runs absent
    from it get no confusion matrices)."""
    key = r["run_key"]
    flags = "".join(f'<span class="flag {escape(f)}">{escape(f)}</span>' for f in (r.get("flags") or []))
    parts = [
        "<h5>run</h5>" + _kv({c: r.get(c) for c in RECORD_COLUMNS}),
        "<h5>resolved parameters</h5>" + _kv(dict(r.get("params") or {})),
        "<h5>hashes</h5>" + _kv({c: r[c] for c in HASH_COLUMNS if isinstance(r.get(c), str)}),
    ]
    if key in footprint:
        parts.append("<h5>footprint</h5>" + _kv(footprint[key]))
    parts.append("<h5>timings</h5>" + _kv(dict(r.get("timings") or {})))
    parts.append("<h5>info</h5>" + _kv(dict(r.get("info") or {})))
    if isinstance(r.get("error"), str):
        parts.append(f"<h5>error</h5><pre>{escape(r['error'])}</pre>")
    if r["status"] == "done" and key in metrics:
        table = groups.table(metrics[key])
        if table is not None:
            parts.append(f"<h5>per group ({escape(results.split)}, stored metrics)</h5>" + table)
        k = int(r["num_classes"])
        pred = predictions.get(key)
        if pred is not None and k <= MAX_CONFUSION_CLASSES:
            names = (results.tasks.get(r["task_key"]) or {}).get("group_names") or {}
            rows, cols = [f"y={i}" for i in range(k)], [f"ŷ={i}" for i in range(k)]
            for g, cm in confusions(pred, k).items():
                name = names.get(str(g), names.get(g))
                label = f"group {g}" + (f" ({name})" if name is not None else "")
                parts.append(f"<h5>confusion matrix, {escape(label)} (stored predictions)</h5>"
                             + _grid("true \\ predicted", rows, cols, cm.tolist()))
    return (
        f'<div class="run" id="run-{escape(key)}"><h4>{escape(run_title(r))} '
        f'<span class="muted">[{escape(r["status"])}]</span>{flags}</h4>'
        f"<details><summary>config, params, hashes, footprint, timings, per-group results</summary>"
        f'<div class="figs">{"".join(parts)}</div></details></div>'
    )


def failed_runs(results: Results) -> list[dict[str, str]]:
    failed = results.runs[results.runs["status"] == "failed"].drop_duplicates("run_key")
    return [{"run_key": r["run_key"], "title": run_title(r), "error": r["error"] or ""} for r in failed.to_dict("records")]
