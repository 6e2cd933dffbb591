"""Exports beside the HTML, through pandas' own writers: CSV and JSON of every table and
of the run records, LaTeX (booktabs) and Markdown of the comparison tables. Every format
escapes what it needs: LaTeX specials (pandas), Markdown markup and pipes, and spreadsheet
formulas in CSV text cells."""
from __future__ import annotations

import hashlib
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


class Written:
    """What a folder's exports were written from (a digest per export, kept in
    ``.digests.json``): an export whose inputs and writer are unchanged is not written
    again. A rebuilt page after new runs rewrites only the tables they touch."""

    FILE = ".digests.json"
    CODE = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        try:
            self.old = json.loads((self.folder / self.FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            self.old = {}
        self.new: dict[str, str] = {}

    def fresh(self, name: str, inputs, paths: list[Path]) -> bool:
        digest = hashlib.sha256(repr((self.CODE, inputs)).encode()).hexdigest()
        self.new[name] = digest
        return self.old.get(name) == digest and all(p.exists() for p in paths)

    def save(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / self.FILE).write_text(json.dumps(self.new, indent=0), encoding="utf-8")


def write_comparison(comp: Comparison, folder: Path, written: Written | None = None, inputs=None) -> list[Path]:
    """CSV, JSON, LaTeX and Markdown of one comparison table; skipped when ``written`` says
    the same ``inputs`` (what the table shows) wrote them last time."""
    name = slug(f"{comp.task_label}-{comp.task_key[:8]}-{comp.model}")
    paths = [folder / f"{name}.{ext}" for ext in ("csv", "json", "tex", "md")]
    if written is not None and inputs is not None and written.fresh(name, inputs, paths):
        return paths
    write_frame(comp.numeric(), folder, name)
    shown = comp.display()
    tex, md = paths[2], paths[3]
    caption = f"{comp.task_label}, {comp.model}: mean ± 95% CI over seeds; * best per column"
    # booktabs rules and LaTeX escaping of every cell and header are pandas' own
    shown.to_latex(tex, escape=True, caption=caption, position="htbp")
    as_md = shown.map(markdown_text)
    as_md.index = as_md.index.map(markdown_text)
    as_md.columns = as_md.columns.map(markdown_text)
    md.write_text(f"**{markdown_text(caption)}**\n\n" + as_md.to_markdown() + "\n", encoding="utf-8")
    return paths


def write_table(frame: pd.DataFrame, folder: Path, name: str, written: Written | None = None) -> list[Path]:
    """:func:`write_frame`, skipped when ``written`` saw the same table last time."""
    paths = [folder / f"{name}.csv", folder / f"{name}.json"]
    if written is not None and written.fresh(name, (list(frame.columns), frame.to_numpy().tolist()), paths):
        return paths
    return write_frame(frame, folder, name)


def write_runs(runs: pd.DataFrame, folder: Path, written: Written | None = None) -> list[Path]:
    """Every run record (one row per suite membership), dict columns as JSON text in CSV."""
    paths = [folder / "runs.csv", folder / "runs.json"]
    if written is not None and written.fresh("runs", (list(runs.columns), runs.to_numpy().tolist()), paths):
        return paths
    flat = runs.copy()
    for col in flat.columns:
        if flat[col].map(lambda v: isinstance(v, (dict, list))).any():
            flat[col] = flat[col].map(lambda v: json.dumps(v, default=str) if isinstance(v, (dict, list)) else v)
    return write_frame(flat, folder, "runs")
