"""UCI Statlog German credit: predict good credit risk.

File, in the UCI layout: ``german/german.data`` (1,000 rows, space separated, 20 attributes
as symbolic codes ``A11``.. or integers, then the label 1 = good / 2 = bad). Nothing is
missing, so no row is dropped.

Target ``credit``: y = 1 good (700 rows), y = 0 bad (300).

Sensitive attributes (codes only; the engine decides which group is privileged):

* ``sex`` (default), from attribute 9 "personal status and sex": A91 (male, divorced or
  separated), A93 (male, single), A94 (male, married or widowed) give s = 1;
  A92 (female, divorced, separated or married) and A95 (female, single) give s = 0.
  A95 does not occur in the published file. Marital status is fused with sex in this
  code, so the whole attribute is left out of ``x`` unless ``include_sensitive=True``.
* ``age``: s = 1 for age > 25, s = 0 for age <= 25 (the cut of Kamiran and Calders);
  the age column is left out of ``x`` unless ``include_sensitive=True``.

Features: the 7 integer attributes standardized with train statistics (duration,
credit_amount, installment_rate, residence_since, age, existing_credits, people_liable);
the 13 coded attributes one-hot, named by their UCI codes (``purpose=A43``).

Splits: ``fractions`` (60/20/20 by default) stratified by (y, s), seeded by ``split_seed``.
``index`` is the 0-based line of the file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

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
from .textfile import WHITESPACE, read_table

NAME = "german"
FILE = "german/german.data"
HINT = "UCI Statlog (German Credit Data), https://archive.ics.uci.edu/dataset/144"
COLUMNS = (
    "checking_status", "duration", "credit_history", "purpose", "credit_amount", "savings",
    "employment_since", "installment_rate", "personal_status", "other_debtors",
    "residence_since", "property", "age", "other_installment_plans", "housing",
    "existing_credits", "job", "people_liable", "telephone", "foreign_worker", "credit",
)
NUMERIC = (
    "duration", "credit_amount", "installment_rate", "residence_since", "age",
    "existing_credits", "people_liable",
)
CATEGORICAL = tuple(c for c in COLUMNS if c not in NUMERIC and c != "credit")
SEX_CODES = {"A91": 1, "A93": 1, "A94": 1, "A92": 0, "A95": 0}
AGE_CUT = 25
TARGETS = ("credit",)
SENSITIVE = ("sex", "age")
SOURCE_COLUMN = {"sex": "personal_status", "age": "age"}
OPTIONS = ("target", "sensitive", "split_seed", "fractions", "include_sensitive")


def read_german(path: Path) -> pd.DataFrame:
    frame = read_table(path, sep=WHITESPACE, header=False, names=list(COLUMNS), numeric=NUMERIC + ("credit",),
                       dtype={c: str for c in CATEGORICAL})
    labels = set(frame["credit"])
    if not labels <= {1, 2}:
        raise FairsqueezeError(f"{path}: credit labels must be 1 (good) or 2 (bad), found {sorted(labels)}")
    return frame


def sensitive_codes(frame: pd.DataFrame, sensitive: str) -> tuple[np.ndarray, dict[int, str]]:
    if sensitive == "age":
        return (frame["age"] > AGE_CUT).to_numpy(np.int64), {0: f"age<={AGE_CUT}", 1: f"age>{AGE_CUT}"}
    unknown = set(frame["personal_status"]) - set(SEX_CODES)
    if unknown:
        raise FairsqueezeError(f"german: unknown personal-status code(s) {sorted(unknown)}")
    return frame["personal_status"].map(SEX_CODES).to_numpy(np.int64), {0: "female", 1: "male"}


@register_task(NAME, "UCI German credit, good vs bad risk; sensitive sex or age (>25)", files=(FILE,))
def build(
    root: Path,
    target: str = "credit",
    sensitive: str = "sex",
    split_seed: int = 0,
    fractions=DEFAULT_FRACTIONS,
    include_sensitive: bool = False,
    **unknown: Any,
) -> TaskData:
    target, sensitive, seed, fractions, include_sensitive = common_options(
        NAME, unknown, OPTIONS, target, TARGETS, sensitive, SENSITIVE, split_seed, fractions, include_sensitive
    )

    frame = read_german(require_file(Path(root) / FILE, HINT))
    y = (frame["credit"] == 1).to_numpy(np.int64)
    s, group_names = sensitive_codes(frame, sensitive)
    parts = stratified_split(y, s, fractions, seed)
    excluded = set() if include_sensitive else {SOURCE_COLUMN[sensitive]}
    features = encode_features(
        frame,
        [c for c in NUMERIC if c not in excluded],
        [c for c in CATEGORICAL if c not in excluded],
        parts[0],
    )
    meta = {
        "source_rows": len(frame),
        "dropped": {},
        "fractions": list(fractions),
        "include_sensitive": include_sensitive,
    }
    return assemble(
        NAME,
        features,
        y,
        s,
        np.arange(len(frame)),
        parts,
        target=target,
        sensitive=sensitive,
        group_names=group_names,
        class_names=["bad", "good"],
        meta=meta,
    )
