"""Exports beside the HTML, through pandas' own writers: CSV and JSON of every table and
of the run records, LaTeX (booktabs) and Markdown of the comparison tables."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd

from .tables import Comparison


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "table"


def write_frame(frame: pd.DataFrame, folder: Path, name: str) -> list[Path]:
    """CSV and JSON (records) of one table."""
    folder.mkdir(parents=True, exist_ok=True)
    csv, js = folder / f"{name}.csv", folder / f"{name}.json"
    frame.to_csv(csv, index=False)
    frame.to_json(js, orient="records", indent=1, default_handler=str)
    return [csv, js]


def write_comparison(comp: Comparison, folder: Path) -> list[Path]:
    name = slug(f"{comp.task_label}-{comp.task_key[:8]}-{comp.model}")
    paths = write_frame(comp.numeric(), folder, name)
    shown = comp.display()
    tex, md = folder / f"{name}.tex", folder / f"{name}.md"
    caption = f"{comp.task_label}, {comp.model}: mean ± 95% CI over seeds; * best per column"
    # booktabs rules and LaTeX escaping of every cell and header are pandas' own
    shown.to_latex(tex, escape=True, caption=caption, position="htbp")
    md.write_text(f"**{caption}**\n\n" + shown.to_markdown() + "\n", encoding="utf-8")
    return paths + [tex, md]


def write_runs(runs: pd.DataFrame, folder: Path) -> list[Path]:
    """Every run record (one row per suite membership), dict columns as JSON text in CSV."""
    flat = runs.copy()
    for col in flat.columns:
        if flat[col].map(lambda v: isinstance(v, (dict, list))).any():
            flat[col] = flat[col].map(lambda v: json.dumps(v, default=str) if isinstance(v, (dict, list)) else v)
    return write_frame(flat, folder, "runs")
