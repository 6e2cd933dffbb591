"""ProPublica COMPAS: predict re-arrest within two years of the screening.

File, as ProPublica publishes it: ``compas/compas-scores-two-years.csv`` (7,214 rows).

Cleaning (the step counts land in ``meta["dropped"]``):

* ProPublica's own filter from their analysis: keep rows with ``days_b_screening_arrest``
  within [-30, 30] (a row without a value is dropped, as their R ``filter`` does),
  ``is_recid != -1``, ``c_charge_degree != "O"`` and ``score_text != "N/A"``:
  7,214 -> 6,172 rows. The file is read with only empty fields as missing, because pandas'
  default would turn the literal ``N/A`` into NaN and quietly void the last condition.
* ``sensitive="race"``: African-American (s = 0) vs Caucasian (s = 1); the other races
  (Hispanic, Other, Asian, Native American: 894 rows) are dropped, as in most fairness work
  on COMPAS, leaving 5,278 rows. ``sensitive="sex"``: Female (s = 0) vs Male (s = 1), all
  races kept (6,172 rows). Codes only: the engine decides which group is privileged.

Features:

* numeric (standardized with train statistics): age, priors_count, juv_fel_count,
  juv_misd_count, juv_other_count, length_of_stay = log1p(days from ``c_jail_in`` to
  ``c_jail_out``), clipped at 0 because a few records leave jail hours before they enter,
  logged because the stays are heavy tailed (median about a day, maximum over two years);
* categorical (one-hot): c_charge_degree (F felony / M misdemeanour), sex, race; the
  sensitive one is left out unless ``include_sensitive=True``, the other one stays.
* left out on purpose: COMPAS's own outputs (decile_score, v_decile_score, score_text,
  v_score_text), so the task predicts the outcome from the record instead of imitating the
  tool; everything recorded after the screening (is_recid, r_*, vr_*, violent_recid, event,
  start, end), which would leak the label; age_cat (a binning of age); c_charge_desc
  (hundreds of free-text values); names, dates and case numbers.

The CSV repeats two headers (``decile_score``, ``priors_count``); the first of each is used.

Target ``two_year_recid``: y = 1 if re-arrested within two years. Splits: ``fractions``
(60/20/20 by default) stratified by (y, s), seeded by ``split_seed``. ``index`` is the
0-based data row of the CSV.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from fairsqueeze.core.errors import FairsqueezeError
from fairsqueeze.datasets.base import TaskData, register_task, require_file, stratified_split

from .tabular import (
    DEFAULT_FRACTIONS,
    assemble,
    common_options,
    encode_features,
)
from .textfile import line_of_row, malformed, read_table

NAME = "compas"
FILE = "compas/compas-scores-two-years.csv"
HINT = "ProPublica compas-analysis repository, compas-scores-two-years.csv"
TARGETS = ("two_year_recid",)
SENSITIVE = ("race", "sex")
OPTIONS = ("target", "sensitive", "split_seed", "fractions", "include_sensitive")
NUMERIC = ("age", "priors_count", "juv_fel_count", "juv_misd_count", "juv_other_count", "length_of_stay")
CATEGORICAL = ("c_charge_degree", "sex", "race")
RACES = {"African-American": 0, "Caucasian": 1}
SEXES = {"Female": 0, "Male": 1}
NUMERIC_READ = ("age", "priors_count", "juv_fel_count", "juv_misd_count", "juv_other_count",
                "days_b_screening_arrest", "is_recid", "two_year_recid")
USED = (
    "sex", "age", "race", "juv_fel_count", "juv_misd_count", "juv_other_count", "priors_count",
    "days_b_screening_arrest", "c_jail_in", "c_jail_out", "c_charge_degree", "is_recid",
    "score_text", "two_year_recid",
)

# ProPublica's filter, in their order: (what a dropped row failed, which rows are kept)
PROPUBLICA_FILTER: tuple[tuple[str, Callable[[pd.DataFrame], pd.Series]], ...] = (
    ("days_b_screening_arrest outside [-30, 30] or missing",
     lambda f: f["days_b_screening_arrest"].between(-30, 30)),
    ("is_recid == -1", lambda f: f["is_recid"] != -1),
    ("c_charge_degree == 'O'", lambda f: f["c_charge_degree"] != "O"),
    ("score_text == 'N/A'", lambda f: f["score_text"] != "N/A"),
)


def read_compas(path: Path) -> pd.DataFrame:
    frame = read_table(path, header=True, numeric=NUMERIC_READ, keep_default_na=False, na_values=[""],
                       low_memory=False)
    missing = [c for c in USED if c not in frame.columns]
    if missing:
        raise FairsqueezeError(f"{path}: column(s) {', '.join(missing)} not found")
    frame = frame[list(USED)].copy()
    frame["row"] = np.arange(len(frame))
    for column in ("c_jail_in", "c_jail_out"):  # the dates length_of_stay needs
        dates = pd.to_datetime(frame[column], errors="coerce", format="%Y-%m-%d %H:%M:%S")
        bad = dates.isna() & frame[column].notna()
        if bad.any():
            row = int(bad.to_numpy().argmax())
            raise malformed(path, line_of_row(path, row, 1),
                            f"{column}: expected a date like 2013-08-13 06:03:42, got {frame[column].iloc[row]!r}")
        frame[column] = dates
    return frame


def apply_filter(frame: pd.DataFrame, dropped: dict[str, int]) -> pd.DataFrame:
    for reason, keep in PROPUBLICA_FILTER:
        mask = keep(frame)
        dropped[reason] = int((~mask).sum())
        frame = frame[mask]
    return frame


def length_of_stay(frame: pd.DataFrame) -> pd.Series:
    days = (pd.to_datetime(frame["c_jail_out"]) - pd.to_datetime(frame["c_jail_in"])).dt.total_seconds() / 86400
    return np.log1p(days.clip(lower=0))


def sensitive_codes(frame: pd.DataFrame, sensitive: str, dropped: dict[str, int]) -> tuple[pd.DataFrame, np.ndarray]:
    """Keep the rows of the two compared groups and return their codes."""
    column, codes = ("race", RACES) if sensitive == "race" else ("sex", SEXES)
    keep = frame[column].isin(list(codes))
    dropped[f"{column} not in {', '.join(codes)}"] = int((~keep).sum())
    frame = frame[keep]
    return frame, frame[column].map(codes).to_numpy(np.int64)


@register_task(NAME, "ProPublica COMPAS two-year recidivism; sensitive race (Black vs White) or sex", files=(FILE,))
def build(
    root: Path,
    target: str = "two_year_recid",
    sensitive: str = "race",
    split_seed: int = 0,
    fractions=DEFAULT_FRACTIONS,
    include_sensitive: bool = False,
    **unknown: Any,
) -> TaskData:
    target, sensitive, seed, fractions, include_sensitive = common_options(
        NAME, unknown, OPTIONS, target, TARGETS, sensitive, SENSITIVE, split_seed, fractions, include_sensitive
    )

    raw = read_compas(require_file(Path(root) / FILE, HINT))
    dropped: dict[str, int] = {}
    frame = apply_filter(raw, dropped)
    filtered_rows = len(frame)
    frame, s = sensitive_codes(frame, sensitive, dropped)
    frame = frame.reset_index(drop=True).assign(length_of_stay=length_of_stay)

    y = frame[target].to_numpy(np.int64)
    parts = stratified_split(y, s, fractions, seed)
    categorical = [c for c in CATEGORICAL if include_sensitive or c != sensitive]
    features = encode_features(frame, NUMERIC, categorical, parts[0])
    names = RACES if sensitive == "race" else SEXES
    meta = {
        "source_rows": len(raw),
        "propublica_filter_rows": filtered_rows,
        "dropped": dropped,
        "fractions": list(fractions),
        "include_sensitive": include_sensitive,
    }
    return assemble(
        NAME,
        features,
        y,
        s,
        frame["row"].to_numpy(),
        parts,
        target=target,
        sensitive=sensitive,
        group_names={code: name for name, code in names.items()},
        class_names=["no re-arrest", "re-arrest within two years"],
        meta=meta,
    )
