"""Method colours, the same on every page of one store.

A family of methods (low-rank, pruning, quantization, ...) takes a hue and its members share
it as light/dark pairs: a fair method and its fairness-unaware twin, which sit in one
family, read as one hue in two shades, and two families never share a hue. The family and
the method's registry position are stored with each run, so the colours are decided from
the store alone (no plugin import); a run stored without them falls back to the family
"other" and name order.
"""
from __future__ import annotations

import functools
import math

import pandas as pd

DENSE_COLOUR = "#000000"
OTHER_COLOUR = "#888888"  # a method the palette was not told about
# hue steps (of 360/11°) in the order families take them: neighbours in the list are far apart
_HUE_ORDER = (0, 6, 1, 7, 2, 8, 3, 9, 4, 10, 5)
_HUE_OFFSET = 0.06
_DARK, _LIGHT = 0.38, 0.65  # HUSL lightness of the two shades of a pair


@functools.cache
def colour_pairs() -> list[tuple[str, str]]:
    """Eleven (dark, light) pairs of equal HUSL saturation: every colour is more than 10
    CIEDE2000 units from any other and stands out on white. Past eleven families' hues the
    colours repeat. Computed on first use (seaborn is slow to import)."""
    import seaborn as sns

    out = []
    for step in _HUE_ORDER:
        hue = step / len(_HUE_ORDER) + _HUE_OFFSET
        dark, light = (sns.husl_palette(1, h=hue, s=0.95, l=lv).as_hex()[0] for lv in (_DARK, _LIGHT))
        out.append((dark, light))
    return out



def catalogue(runs: pd.DataFrame) -> pd.DataFrame:
    """Distinct (method, family, method_order) of a run frame; absent columns fall back."""
    frame = runs.reindex(columns=["method", "family", "method_order"]).dropna(subset=["method"])
    frame = frame[frame["method"].map(lambda m: isinstance(m, str))]
    frame["family"] = frame["family"].where(frame["family"].notna(), "other")
    frame["method_order"] = pd.to_numeric(frame["method_order"], errors="coerce")
    return frame.drop_duplicates("method").reset_index(drop=True)


def palette(methods: pd.DataFrame) -> dict[str, str]:
    """Method -> colour for a :func:`catalogue`. Families are ordered by their first
    member's registry position (then name); each starts on a fresh hue, and its members,
    in registry order, take the dark then the light shade of that hue, then of the next."""
    colours = {"dense": DENSE_COLOUR}
    rows = catalogue(methods) if "method" in methods else pd.DataFrame(columns=["method", "family", "method_order"])
    # the dense model post-processed (dense+STEP) is a reference too: the dense colour, drawn hollow
    colours.update({m: DENSE_COLOUR for m in rows["method"] if m.startswith("dense+")})
    rows = rows[(rows["method"] != "dense") & ~rows["method"].str.startswith("dense+")]
    key = rows["method_order"].fillna(math.inf)
    rows = rows.assign(_order=key).sort_values(["_order", "method"])
    first = rows.groupby("family", sort=False)["_order"].min()
    families = sorted(first.index, key=lambda f: (first[f], f))
    hue = 0
    for family in families:
        members = list(rows.loc[rows["family"] == family, "method"])
        for i, method in enumerate(members):
            pairs = colour_pairs()
            colours[method] = pairs[(hue + i // 2) % len(pairs)][i % 2]
        hue += -(-len(members) // 2)
    return colours
