"""The leaderboard: one static, self-contained page ranking methods across every stored
task and model, written with CSV/JSON exports of each of its tables."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd

from fairsqueeze.reports import export, figures, verdicts
from fairsqueeze.reports.verdict_page import verdict_context
from fairsqueeze.reports.data import Results, current_definitions
from fairsqueeze.reports.run_pages import run_page_list, write_run_pages
from fairsqueeze.reports.templating import environment
from fairsqueeze.reports.tiers import tier_rank

from . import ranking, significance
from fairsqueeze.reports.hypervolume import MAX_GAP

FIGURES = "figures"  # beside index.html: the forest plots of the verdicts


def in_tier_order(frame: pd.DataFrame, then: list[str] | None = None) -> pd.DataFrame:
    """Rows by metric, tier in numeric order (not as text), then ``then`` (default: mean rank
    and method)."""
    if frame.empty:
        return frame
    then = then or ["mean_rank", "method"]
    order = frame.assign(_tier=frame["tier"].map(tier_rank))
    return order.sort_values(["metric", "_tier", *then], kind="stable").drop(columns="_tier").reset_index(drop=True)


def build_leaderboard(results: Results, out: Path) -> Path:
    """Write ``out/index.html`` and ``out/tables/*``; return the page path."""
    out = Path(out)
    underfit = verdicts.underfit_dense_keys(results.dense)
    left_out = ranking.underfit_cells(current_definitions(results.done()), underfit)
    runs = ranking.usable_runs(results.done(), underfit)
    scores = ranking.scores_frame(ranking.cell_scores(runs)) if not runs.empty else pd.DataFrame()
    board = ranking.leaderboard_table(scores)  # tiers in numeric order, ranked methods first
    tests = [significance.friedman(scores, m, t) for m in ranking.GAPS for t, _, _ in ranking.TIERS
             if not scores.empty and ((scores["metric"] == m) & (scores["tier"] == t)).any()]
    twin_map = verdicts.twin_map(verdicts.all_claims(results.claim_files))
    twins = significance.twin_tests(scores, twin_map) if not scores.empty else []
    tables = out / "tables"
    export.write_frame(board, tables, "leaderboard")
    if not scores.empty:
        export.write_frame(scores.drop(columns=["per_seed"]).assign(front=scores["front"].map(" ".join)), tables, "cells")
    export.write_frame(pd.DataFrame([t.__dict__ for t in tests]).drop(columns=["mean_ranks", "nemenyi"], errors="ignore"), tables, "friedman")
    export.write_frame(pd.DataFrame([t.__dict__ for t in twins]), tables, "twins")
    exported = export.Written(tables)
    export.write_runs(results.runs, tables, exported)
    exported.save()
    # the page links the runs on the fronts only: their details, not every run's
    fronts = {k for f in scores["front"] for k in f} if not scores.empty else set()
    links = write_run_pages(results, out, "fairsqueeze leaderboard", with_predictions=False, keys=fronts)
    cache = figures.FigureCache(out / FIGURES, FIGURES)
    verdict_view = verdict_context(verdicts.evaluation(results), out, cache)
    # the first row of each (metric, tier, method) in the cell table is the target of its summary links
    anchors = {}
    cells = in_tier_order(scores, ["method", "task_label", "model"]).to_dict("records") if not scores.empty else []
    for c in cells:
        c["anchor"] = "c-" + hashlib.sha1(f"{c['metric']}|{c['tier']}|{c['method']}".encode()).hexdigest()[:10]
        c["first"] = (c["metric"], c["tier"], c["method"]) not in anchors
        anchors.setdefault((c["metric"], c["tier"], c["method"]), c["anchor"])
    page = environment().get_template("leaderboard.html.j2").render(
        board=board.to_dict("records"),
        min_shared=ranking.MIN_SHARED,
        anchors=anchors,
        cells=cells,
        tests=[(t, significance.cd_diagram(t)) for t in tests],
        twins=twins,
        tiers=[t for t, _, _ in ranking.TIERS],
        metrics=list(ranking.GAPS),
        gap_keys=ranking.GAPS,
        max_gap=MAX_GAP,
        alpha=significance.ALPHA,
        tasks=sorted({c["task_label"] for c in cells}),
        colours=results.colours(),
        methods=sorted(results.runs.loc[results.runs["status"] == "done", "method"].unique()),
        ranked=sorted(board["method"].unique()) if not board.empty else [],
        run_link=links,
        run_pages=run_page_list(results, links),
        run_pages_have_predictions=False,
        twin_map=twin_map,
        **verdict_view,
        underfit_cells=left_out.to_dict("records"),
    )
    cache.prune()
    out.mkdir(parents=True, exist_ok=True)
    path = out / "index.html"
    path.write_text(page, encoding="utf-8")
    return path
