"""The compact headline table printed after ``fairsqueeze run`` / ``show``: utility, the
main gaps, the compression ratio and the worst group's change, within 120 columns. The
full detail lives in the HTML report."""
from __future__ import annotations

import math

from .columns import EODDS, WORST_CHANGE, is_binary
from .tables import Comparison, Row

WIDTH = 120
LABEL = 30
GAPS_BINARY = (("deo", "TPR gap"), ("fpr_diff", "FPR gap"), (EODDS, "EOdds"), ("dp_diff", "DP diff"))
GAPS_MULTI = (("eopp0", "EOpp0"), ("eopp1", "EOpp1"), ("eodd", "EOdd"))


def _fit(text: str, width: int) -> str:
    """Cut from the middle: a label's end holds its sweep values, which tell rows apart."""
    if len(text) <= width:
        return text
    head = (width - 1) // 2
    return text[:head] + "…" + text[len(text) - (width - 1 - head):]


def _value(row: Row, key: str, digits: int = 3, ci: bool = False) -> str:
    est = row.values.get(key)
    if est is None or est.n == 0 or math.isnan(est.mean):
        return "–"
    text = f"{est.mean:.{digits}f}"
    if ci and not math.isnan(est.half_width):
        text += f"±{est.half_width:.{digits}f}"
    return text


def headline_table(comp: Comparison) -> str:
    gaps = GAPS_BINARY if is_binary(comp.num_classes) else GAPS_MULTI
    header = [("method", LABEL, "<"), ("n", 2, ">"), ("accuracy", 11, ">")]
    header += [(name, 7, ">") for _, name in gaps]
    header += [("ratio", 6, ">"), ("worst Δacc", 10, ">"), ("flags", 14, "<")]
    lines = ["  ".join(f"{name:{align}{width}}" for name, width, align in header)]
    for row in comp.rows:
        flags = ",".join(f"{k}{'' if n == row.seeds else f' {n}/{row.seeds}'}" for k, n in sorted(row.flags.items()) if n)
        cells = [_fit(row.label, LABEL), str(row.seeds), _value(row, "accuracy", ci=True)]
        cells += [_value(row, key) for key, _ in gaps]
        cells += [_value(row, "compression_ratio", 2), _value(row, WORST_CHANGE), _fit(flags, 14)]
        lines.append("  ".join(f"{c:{align}{width}}" for c, (_, width, align) in zip(cells, header)))
    return "\n".join(line.rstrip()[:WIDTH] for line in lines)


NOTE = "mean over seeds (accuracy ± 95 % CI); gaps: lower is fairer; worst Δacc: lowest per-group change vs dense"


def headline_block(comp: Comparison, split: str = "test", suite: str | None = None) -> str:
    """One table under a title naming the task identity, split, model and suite."""
    where = f"{split}, {comp.model}" + (f", suite {suite}" if suite else "")
    return f"{_fit(f'== {comp.task_label} ({where}) ==', WIDTH)}\n{headline_table(comp)}"


def headline_tables(comparisons: list[Comparison], split: str = "test", suite: str | None = None) -> str:
    """Every table, then a note on what the columns mean."""
    blocks = [headline_block(comp, split, suite) for comp in comparisons]
    return "\n\n".join(blocks + [NOTE]) if blocks else "no finished runs"


VERDICT_NOTE = ("effect: pooled fair − twin with its interval at the row's Holm level; cells · pairs; trend: how Δ "
                "moves from the lightest to the heaviest compression; the report has each row's notes and evidence")


def verdict_block(table) -> str:
    """The verdict table in the terminal: one line per row (outcome order as in the report),
    then a line of counts per outcome."""
    from .verdicts import OUTCOMES
    if table.empty:
        return "verdicts: no claims"
    order = {o: i for i, o in enumerate(OUTCOMES)}
    rows = table.assign(_o=table["verdict"].map(order)).sort_values("_o", kind="stable")
    header = [("claim row", 44, "<"), ("outcome", 13, "<"), ("effect [interval]", 28, "<"), ("cells·pairs", 11, ">"),
              ("trend", 8, "<")]
    lines = ["  ".join(f"{name:{align}{width}}" for name, width, align in header)]
    for r in rows.to_dict("records"):
        effect = "–"
        if isinstance(r.get("effect"), float) and math.isfinite(r["effect"]):
            effect = f"{r['effect']:+.4f}"
            if math.isfinite(r.get("low", math.nan)) and r["low"] != r["high"]:
                effect += f" [{r['low']:+.3f}, {r['high']:+.3f}]"
        trend = r.get("trend_reading") if isinstance(r.get("trend_reading"), str) else ""
        cells = [_fit(str(r["id"]), 44), str(r["verdict"]), effect, f"{r['cells']}·{r['pairs']}", trend]
        lines.append("  ".join(f"{c:{align}{width}}" for c, (_, width, align) in zip(cells, header)))
    counts = ", ".join(f"{int((table['verdict'] == o).sum())} {o}" for o in OUTCOMES if (table["verdict"] == o).any())
    return "\n".join([f"== verdicts ({counts}) ==", *[line.rstrip()[:WIDTH] for line in lines], VERDICT_NOTE])
