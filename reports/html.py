"""The suite report: one HTML file (inline CSS, JS and figures) that opens on an overview
per task and model, written with its CSV/JSON/LaTeX/Markdown exports and its run pages
from stored results alone."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fairsqueeze.measure.biascard import format_bias_card, is_underfit

from . import export, figures, overview
from .columns import UTILITY, headline_gap
from .data import Results
from .hypervolume import pareto_front, reference_point
from .run_pages import run_page_list, write_run_pages
from .runs import failed_runs
from .templating import environment
from .tables import Comparison, Row, cells_html, comparisons
from .tuning import tuning_sections
from .verdict_page import verdict_context
from .verdicts import delta_sections, dense_delta_table, evaluation, for_export

FIGURES = "figures"  # beside index.html: the figures of the last build, named by content


@dataclass
class TaskSection:
    comp: Comparison
    gap: str
    ref: tuple[float, float]
    pareto: figures.FigureFile
    delta: figures.FigureFile
    cost: figures.FigureFile
    ablations: list[tuple[str, figures.FigureFile]]
    tiers: list[overview.Tier]
    cards: list[dict]
    exports: list[str]
    best: Row | None = None
    dense: Row | None = None
    front: set[str] = field(default_factory=set)


def best_tradeoff(comp: Comparison) -> Row | None:
    """The compressed, unflagged row whose own point has the largest hypervolume against
    the task's fixed reference point (see ``fairsqueeze.reports.hypervolume``)."""
    return overview.best_of([r for r in comp.rows if r.values["compression_ratio"].mean >= overview.COMPRESSED], comp)


def front_labels(comp: Comparison) -> set[str]:
    """Labels of the unflagged rows on the (utility ↑, unfairness ↓) front of the table."""
    gap = headline_gap(comp.num_classes)
    rows = [r for r in comp.rows if r.ranked and np.isfinite([r.values[UTILITY].mean, r.values[gap].mean]).all()]
    if not rows:
        return set()
    pts = np.array([[r.values[gap].mean, r.values[UTILITY].mean] for r in rows])
    return {rows[i].label for i in pareto_front(pts)}


def _cards(results: Results, comp: Comparison) -> list[dict]:
    dense = results.dense
    if dense.empty or "bias_card" not in dense:
        return []
    rows = dense[(dense["task_key"] == comp.task_key) & (dense["model"] == comp.model)].sort_values("seed")
    return [{"seed": int(r["seed"]), "text": format_bias_card(r["bias_card"]), "underfit": is_underfit(r["bias_card"]),
             "reasons": r["bias_card"].get("dense", {}).get("underfit_reasons", [])}
            for _, r in rows.iterrows() if r["bias_card"]]


def build_report(results: Results, suite: str, out: Path) -> Path:
    """Write ``out/index.html`` and ``out/tables/*`` for ``suite``; return the page path."""
    out = Path(out)
    tables_dir = out / "tables"
    colours = results.colours()
    sections = []
    cache = figures.FigureCache(Path(out) / FIGURES, FIGURES)
    exported = export.Written(tables_dir)
    for comp in comparisons(results.done()):
        drawn = figures.content(comp, colours)
        shown = (drawn, [(r.runs, sorted(r.best)) for r in comp.rows],
                 [(c.key, c.label, c.group, c.digits, c.detail) for c in comp.columns])
        written = export.write_comparison(comp, tables_dir, exported, shown)
        dense_rows = [r for r in comp.rows if r.method == "dense"]
        sections.append(
            TaskSection(
                comp=comp,
                gap=headline_gap(comp.num_classes),
                ref=reference_point(comp.num_classes),
                pareto=cache.get("pareto", drawn, lambda: figures.pareto_figure(comp, colours)),
                delta=cache.get("delta", drawn, lambda: figures.delta_figure(comp, colours)),
                cost=cache.get("cost", drawn, lambda: figures.cost_figure(comp, colours)),
                tiers=overview.tiers(comp),
                ablations=[(p, cache.get(f"ablation:{p}", drawn, lambda p=p: figures.ablation_figure(comp, p, colours)))
                           for p in figures.swept_parameters(comp)],
                cards=_cards(results, comp),
                exports=[p.relative_to(out).as_posix() for p in written],
                best=best_tradeoff(comp),
                dense=dense_rows[0] if dense_rows else None,
                front=front_labels(comp),
            )
        )
    export.write_runs(results.runs, tables_dir, exported)
    verdict_view = verdict_context(evaluation(results), out, cache, exported)
    deltas = dense_delta_table(results)
    export.write_table(for_export(deltas.drop(columns="estimate", errors="ignore")), tables_dir, "paired_deltas", exported)
    exported.save()
    links = write_run_pages(results, out, f"fairsqueeze report: {suite}")
    failed = failed_runs(results)
    page = environment().get_template("report.html.j2").render(
        suite=suite,
        split=results.split,
        tasks=sections,
        colours=colours,
        methods=set(results.runs["method"]),
        tuning=tuning_sections(results, colours),
        **verdict_view,
        deltas=delta_sections(deltas),
        run_link=links,
        cells_html=cells_html,
        run_pages=run_page_list(results, links),
        run_pages_have_predictions=True,
        failed=failed,
        n_runs=results.runs.loc[results.runs["status"].isin(["done", "failed"]), "run_key"].nunique(),
        n_failed=len(failed),
    )
    cache.prune()
    out.mkdir(parents=True, exist_ok=True)
    path = out / "index.html"
    path.write_text(page, encoding="utf-8")
    return path
