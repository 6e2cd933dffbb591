"""Exports beside the HTML, through pandas' own writers: CSV and JSON of every table and
of the run records, LaTeX (booktabs) and Markdown of the comparison tables. Every format
escapes what it needs: LaTeX specials (pandas), Markdown markup and pipes, and spreadsheet
formulas in CSV text cells."""
from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pandas as pd

from .tables import Comparison


def slug(text: str, default: str = "table") -> str:
    """One safe path component from any text: letters, digits, ``_``, ``.`` and ``-`` only,
    never starting with a dot (so never ``.`` or ``..``), never empty."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_").lstrip(".") or default


def report_folder(suite: str, root: Path = Path("results/reports")) -> Path:
    """Where a suite's report goes by default: one component under ``root``, whatever the
    suite's name holds (``/``, ``..``, markup)."""
    return Path(root) / slug(suite, "suite")


# a spreadsheet runs a cell that starts with one of these as a formula
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def defuse(value):
    """A text cell that a spreadsheet would read as a formula, quoted so it is read as text;
    numbers (a negative change is a number) and other text are unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def markdown_text(value) -> str:
    """A cell as Markdown shows it literally: HTML markup escaped, the table's ``|`` escaped."""
    return html.escape(str(value), quote=False).replace("|", "\\|")


def write_frame(frame: pd.DataFrame, folder: Path, name: str) -> list[Path]:
    """CSV and JSON (records) of one table."""
    folder.mkdir(parents=True, exist_ok=True)
    csv, js = folder / f"{name}.csv", folder / f"{name}.json"
    text = frame.select_dtypes(include=["object", "string"]).columns
    frame.assign(**{c: frame[c].map(defuse) for c in text}).to_csv(csv, index=False)
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
    as_md = shown.map(markdown_text)
    as_md.index = as_md.index.map(markdown_text)
    as_md.columns = as_md.columns.map(markdown_text)
    md.write_text(f"**{markdown_text(caption)}**\n\n" + as_md.to_markdown() + "\n", encoding="utf-8")
    return paths + [tex, md]


def write_runs(runs: pd.DataFrame, folder: Path) -> list[Path]:
    """Every run record (one row per suite membership), dict columns as JSON text in CSV."""
    flat = runs.copy()
    for col in flat.columns:
        if flat[col].map(lambda v: isinstance(v, (dict, list))).any():
            flat[col] = flat[col].map(lambda v: json.dumps(v, default=str) if isinstance(v, (dict, list)) else v)
    return write_frame(flat, folder, "runs")
