"""Compression-budget tiers: methods are only compared with methods that compress about as
much. Shared by the report's overview and the leaderboard's ranking."""
from __future__ import annotations

import math

import numpy as np

# (label, lowest ratio included, highest ratio excluded), in numeric order
TIERS = (("<1.05", 0.0, 1.05), ("1.05–1.3", 1.05, 1.3), ("1.3–1.7", 1.3, 1.7), (">1.7", 1.7, math.inf))
ORDER = {label: i for i, (label, _, _) in enumerate(TIERS)}


def tier_of(ratio: float) -> str | None:
    if ratio is None or not np.isfinite(ratio):
        return None
    for label, low, high in TIERS:
        if low <= ratio < high:
            return label
    return None


def tier_rank(label: str) -> int:
    """Position of a tier label in numeric order (unknown labels last): a sort key."""
    return ORDER.get(label, len(TIERS))
