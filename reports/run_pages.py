"""Run details on their own pages, one per (task, model), beside a report or leaderboard:
the main page stays small at any number of runs, and a row's link opens its run's page at
its section. Predictions for the confusion matrices are read in bulk, one page at a time."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from markupsafe import Markup

from .data import Results
from .runs import GroupColumns, run_section
from .templating import TEMPLATES, environment

FOLDER = "runs"


def page_name(task_key: str, model: str) -> str:
    return hashlib.sha1(f"{task_key}|{model}".encode()).hexdigest()[:12] + ".html"


@dataclass
class RunLinks:
    """Run key -> the link to its section, relative to the page that links to it."""

    href: dict[str, str] = field(default_factory=dict)

    def __call__(self, key: str) -> str:
        return self.href.get(key, "#")


def write_run_pages(results: Results, out: Path, title: str, with_predictions: bool = True,
                    keys: set[str] | None = None) -> RunLinks:
    """Write ``out/runs/<task, model>.html`` for every finished or failed run (only those in
    ``keys`` when given; a run shared by several entries appears once) and return the links
    to their sections."""
    runs = results.runs[results.runs["status"].isin(["done", "failed"])].drop_duplicates("run_key")
    if keys is not None:
        runs = runs[runs["run_key"].isin(keys)]
    groups = GroupColumns(results.metrics.columns)
    values = results.metrics.to_numpy(dtype=float)
    metrics = {key: values[i] for i, key in enumerate(results.metrics.index)}
    footprint = results.footprint.to_dict("index")
    template = environment().get_template("runs.html.j2")
    folder = Path(out) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    links = RunLinks()
    for (task_key, model), group in runs.groupby(["task_key", "model"], sort=False, dropna=False):
        name = page_name(str(task_key), str(model))
        records = group.to_dict("records")
        links.href.update((r["run_key"], f"{FOLDER}/{name}#run-{r['run_key']}") for r in records)
        # a run's stored results never change: the page is rewritten only when its runs,
        # their records or this code do
        stamp = f"<!-- {_digest(title, with_predictions, records, results.split)} -->\n"
        path = folder / name
        if path.exists():
            with path.open(encoding="utf-8") as f:
                if f.readline() == stamp:
                    continue
        preds = results.predictions_of([r["run_key"] for r in records if r["status"] == "done"]) if with_predictions else {}
        sections = Markup("\n".join(run_section(r, results, groups, metrics, footprint, preds) for r in records))
        first = records[0]
        page = template.render(title=title, task=first["task_label"], model=model, sections=sections, count=len(records))
        path.write_text(stamp + page, encoding="utf-8")
    current = {href.split("#")[0].split("/")[-1] for href in links.href.values()}
    for stale in folder.glob("*.html"):  # pages of tasks and models no longer in the results
        if stale.name not in current:
            stale.unlink()
    return links


# the code and templates a run page is made from: a new version rewrites every page
CODE = hashlib.sha256(b"".join(
    path.read_bytes() for path in sorted([Path(__file__), Path(__file__).with_name("runs.py"),
                                          *(TEMPLATES / n for n in ("runs.html.j2", "_style.css", "_script.js"))]))
).hexdigest()


def _digest(title: str, with_predictions: bool, records: list[dict], split: str) -> str:
    """What a run page shows, in short: every run record (key, status, flags, labels,
    params, info, ...) of the page. Metrics, footprint and predictions are keyed by the run
    key, which names the computation, and never change once a run is done."""
    return hashlib.sha256(repr((CODE, title, with_predictions, split, records)).encode()).hexdigest()


def run_page_list(results: Results, links: RunLinks) -> list[tuple[str, str]]:
    """(task · model, link to its run page), in task and model order."""
    runs = results.runs[results.runs["run_key"].isin(links.href)].drop_duplicates(["task_key", "model"])
    runs = runs.sort_values(["task_label", "model"])
    return [(f"{r['task_label']} · {r['model']}", links(r["run_key"]).split("#")[0]) for r in runs.to_dict("records")]
