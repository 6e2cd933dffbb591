"""The first screen of a report: per task and model, per compression tier, each unflagged
row's accuracy, headline gap and ratio with its change against the dense model of the
same seed, and the tier's best trade-off named."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .columns import DELTA_GAP, DELTA_UTILITY, UTILITY, headline_gap
from .hypervolume import hypervolume
from .tables import Comparison, Row
from .tiers import TIERS, tier_of

COMPRESSED = 1.05  # a row below this compression ratio is not a compression result


def point_hypervolume(row: Row, comp: Comparison) -> float:
    """The hypervolume of the row's own (accuracy, headline gap) point against the task's
    fixed reference (``hypervolume``): how good a trade-off it is on its own."""
    gap = headline_gap(comp.num_classes)
    return hypervolume([row.values[UTILITY].mean], [row.values[gap].mean], comp.num_classes)


def equals_dense(row: Row) -> bool:
    """Every seed of the row has the accuracy and headline gap of its dense model: a twin
    that changed nothing measurable is no trade-off, whatever its ratio."""
    values = [v for key in (DELTA_UTILITY, DELTA_GAP) for v in row.values[key].values]
    return bool(values) and all(v == 0 for v in values)


def best_of(rows: list[Row], comp: Comparison) -> Row | None:
    """The unflagged, non-dense row with the largest positive point hypervolume; never a row
    equal to the dense model (``equals_dense``)."""
    scored = [(point_hypervolume(r, comp), r) for r in rows
              if r.ranked and r.method != "dense" and not equals_dense(r)]
    scored = [(hv, r) for hv, r in scored if hv > 0]
    return max(scored, key=lambda s: s[0])[1] if scored else None


@dataclass
class Tier:
    label: str
    rows: list[Row]  # unflagged rows, best trade-off first
    best: Row | None
    flagged: list[Row] = field(default_factory=list)  # left out of the overview, listed by name


def tiers(comp: Comparison) -> list[Tier]:
    """The rows of ``comp`` (the dense model aside) by compression tier, in numeric order;
    tiers without rows are left out."""
    out = []
    for label, _, _ in TIERS:
        mine = [r for r in comp.rows if r.method != "dense" and tier_of(r.values["compression_ratio"].mean) == label]
        if not mine:
            continue
        ranked = sorted((r for r in mine if r.ranked), key=lambda r: -np.nan_to_num(point_hypervolume(r, comp)))
        out.append(Tier(label, ranked, best_of(ranked, comp) if label != TIERS[0][0] else None,
                        [r for r in mine if not r.ranked]))
    return out
