"""The verdict table as the first section of the report and of the leaderboard: a line of
counts per outcome, one row per claim and metric (outcome, pooled effect with its interval,
δ, cells and pairs, what would decide it, its trend against the compression ratio), its forest
plot, its dose–response curves where the fair method ran at several ratios, and its pairs as a
tidy CSV."""
from __future__ import annotations

import math
from pathlib import Path

from . import export, figures
from .verdicts import OUTCOMES, PAIR_COLUMNS, Verdicts, for_export

PAIRS = "pairs"
TEXT = ("companion", "companion_verdict", "decide", "note", "unit", "trend_reading")  # folder under tables/: one CSV per verdict row


def pairs_name(row_id: str) -> str:
    return export.slug(row_id.replace(":", "-"), "claim")


def verdict_context(found: Verdicts, out: Path, cache: figures.FigureCache, written: export.Written | None = None,
                    tables: str = "tables") -> dict:
    """Write the pairs CSVs and the table's CSV/JSON under ``out/tables`` (skipped where
    ``written`` saw the same table last time) and draw the forest plots; return what
    ``_verdicts.html.j2`` needs."""
    folder = Path(out) / tables
    export.write_table(for_export(found.table), folder, "verdicts", written)
    rows = []
    table = found.table.astype(object).where(found.table.notna(), None)  # a missing value is None, not NaN
    order = {o: i for i, o in enumerate(OUTCOMES)}
    for row in sorted(table.to_dict("records"), key=lambda r: order[r["verdict"]]):
        pairs = found.pairs[row["id"]]
        row = {k: (math.nan if v is None and k not in TEXT else ("" if v is None else v)) for k, v in row.items()}
        name = pairs_name(row["id"])
        export.write_table(pairs.reindex(columns=PAIR_COLUMNS).assign(claim=row["id"]), folder / PAIRS, name, written)
        cells = found.cells[row["id"]]
        plot = None
        if len(cells):
            content = (tuple(sorted((k, repr(v)) for k, v in row.items())), cells.to_numpy().tolist())
            plot = cache.get("forest", content, lambda r=row, c=cells: figures.forest_figure(r, c))
        curves = found.curves.get(row["id"])
        dose_plot = None
        if curves is not None and len(curves) and curves.groupby("cell")["dose"].nunique().max() >= 2:
            content = (tuple(sorted((k, repr(v)) for k, v in row.items())), curves.to_numpy().tolist())
            dose_plot = cache.get("dose", content, lambda r=row, c=curves: figures.dose_response_figure(r, c))
        rows.append({**row, "pairs_csv": f"{tables}/{PAIRS}/{name}.csv", "plot": plot, "dose_plot": dose_plot,
                     "trend_text": _trend(row),
                     "anchor": "v-" + name, "colour": figures.OUTCOME_COLOURS[row["verdict"]],
                     "effect_text": _effect(row), "cost_text": _cost(row)})
    counts = [(o, int((found.table["verdict"] == o).sum()), figures.OUTCOME_COLOURS[o]) for o in OUTCOMES]
    return {"verdicts": [r for r in rows if r["verdict"] != "untested"],
            "untested": [r for r in rows if r["verdict"] == "untested"], "verdict_counts": counts, "verdict_csv": f"{tables}/verdicts.csv"}


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def _effect(row: dict) -> str:
    if not _finite(row.get("effect")):
        return "–"
    text = f"{row['effect']:+.4f}"
    if _finite(row.get("low")) and row["low"] != row["high"]:
        text += f" [{row['low']:+.4f}, {row['high']:+.4f}]"
    return text


def _trend(row: dict) -> str:
    if not _finite(row.get("trend")):
        return ""
    return (f"trend from the lightest to the heaviest compression {row['trend']:+.4f} [{row['trend_low']:+.4f}, "
            f"{row['trend_high']:+.4f}] ({row['doses']} ratios): {row['trend_reading']}")


def _cost(row: dict) -> str:
    if not _finite(row.get("accuracy_cost")):
        return ""
    return f"accuracy cost {row['accuracy_cost']:+.4f} [{row['accuracy_cost_low']:+.4f}, {row['accuracy_cost_high']:+.4f}]"
