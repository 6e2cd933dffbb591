"""UCI Adult (Census Income): predict whether income exceeds $50K.

Files, in the UCI layout under the data root: ``adult/adult.data`` and ``adult/adult.test``.
Both are comma separated with a space after each comma and ``?`` for a missing value;
``adult.test`` opens with a comment line (``|1x3 Cross validator``) and its labels end
with ``.`` (``>50K.``).

Cleaning (row counts land in ``meta["kept_rows"]`` and ``meta["dropped"]``):

* rows with any missing value are dropped, the common convention:
  32,561 -> 30,162 (adult.data) and 16,281 -> 15,060 (adult.test), 45,222 in all;
* ``fnlwgt`` is dropped: it is the census sampling weight of a row, not a trait of the person;
* ``education`` is dropped: it is a one-to-one relabelling of ``education-num``;
* numeric features (standardized with train statistics): age, education-num, capital-gain,
  capital-loss, hours-per-week; categorical features (one-hot): workclass, marital-status,
  occupation, relationship, race, sex, native-country;
* the sensitive column is left out of ``x`` unless ``include_sensitive=True``. Proxies stay:
  ``relationship`` (Husband / Wife) still reveals sex for married people.

Target ``income``: y = 1 for >50K, 0 for <=50K.
Sensitive ``sex``: s = 1 Male, s = 0 Female. Sensitive ``race``: s = 1 White, s = 0 every
other value (Black, Asian-Pac-Islander, Amer-Indian-Eskimo, Other). These are codes only;
which group counts as privileged is decided by the engine.

Splits:

* ``split="upstream"`` (default): adult.test is the test set, the one published results use,
  so test numbers stay comparable with the literature. Val is a share ``fractions[1]`` (20%
  by default) of adult.data, stratified by (y, s) and seeded by ``split_seed``; train is the
  rest of adult.data. The test size is fixed by the file, so ``fractions[0]`` and
  ``fractions[2]`` are not used.
* ``split="random"``: both files merged and re-split by ``fractions``, stratified by (y, s).

``index`` counts data rows over adult.data then adult.test (adult.test row ``i`` is
``32,561 + i`` on the full files); the comment line is not a data row.
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
    choose,
    common_options,
    encode_features,
)
from .textfile import read_table

NAME = "adult"
FILES = ("adult/adult.data", "adult/adult.test")
HINT = "UCI Adult, https://archive.ics.uci.edu/dataset/2/adult"
COLUMNS = (
    "age", "workclass", "fnlwgt", "education", "education-num", "marital-status",
    "occupation", "relationship", "race", "sex", "capital-gain", "capital-loss",
    "hours-per-week", "native-country", "income",
)
NUMERIC = ("age", "education-num", "capital-gain", "capital-loss", "hours-per-week")
TEXT = tuple(c for c in COLUMNS if c not in NUMERIC and c != "fnlwgt")
CATEGORICAL = (
    "workclass", "marital-status", "occupation", "relationship", "race", "sex", "native-country",
)
LABELS = {"<=50K": 0, ">50K": 1}
TARGETS = ("income",)
SENSITIVE = ("sex", "race")
SPLITS = ("upstream", "random")
OPTIONS = ("target", "sensitive", "split_seed", "fractions", "split", "include_sensitive")


def read_adult(path: Path) -> pd.DataFrame:
    """One raw UCI file as a table: spaces stripped, ``?`` as NaN, trailing ``.`` of labels removed."""
    with open(path, encoding="utf-8", errors="replace") as fh:
        comment = fh.readline().startswith("|")
    frame = read_table(
        path,
        header=False,
        names=list(COLUMNS),
        skiprows=1 if comment else 0,
        numeric=[c for c in COLUMNS if c not in TEXT],
        skipinitialspace=True,
        na_values=["?", ""],
        keep_default_na=False,  # only the documented marker means missing
        dtype={c: str for c in TEXT},
    )
    for col in TEXT:
        frame[col] = frame[col].str.strip()
    frame["income"] = frame["income"].str.rstrip(".")
    unexpected = set(frame["income"].dropna()) - set(LABELS)
    if unexpected:
        raise FairsqueezeError(
            f"{path}: unexpected income label(s) {sorted(unexpected)}; expected <=50K or >50K"
        )
    return frame


def clean(train_raw: pd.DataFrame, test_raw: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Merge both files (keeping origin and raw row id) and drop rows with a missing value."""
    merged = pd.concat(
        [train_raw.assign(source="data"), test_raw.assign(source="test")], ignore_index=True
    )
    merged["row"] = np.arange(len(merged))
    complete = merged.dropna(subset=list(COLUMNS)).reset_index(drop=True)
    kept = complete["source"].value_counts()
    meta = {
        "source_rows": {"adult.data": len(train_raw), "adult.test": len(test_raw)},
        "kept_rows": {"adult.data": int(kept.get("data", 0)), "adult.test": int(kept.get("test", 0))},
        "dropped": {"missing value ('?')": int(len(merged) - len(complete))},
        "dropped_columns": ["fnlwgt", "education"],
    }
    return complete, meta


def sensitive_codes(frame: pd.DataFrame, sensitive: str) -> tuple[np.ndarray, dict[int, str]]:
    if sensitive == "sex":
        unexpected = set(frame["sex"]) - {"Female", "Male"}
        if unexpected:
            raise FairsqueezeError(f"adult: unexpected sex value(s) {sorted(unexpected)}")
        return (frame["sex"] == "Male").to_numpy(np.int64), {0: "Female", 1: "Male"}
    return (frame["race"] == "White").to_numpy(np.int64), {0: "non-White", 1: "White"}


def split_parts(
    frame: pd.DataFrame, y: np.ndarray, s: np.ndarray, split: str, fractions, seed: int
) -> list[np.ndarray]:
    if split == "random":
        return stratified_split(y, s, fractions, seed)
    from_test = frame["source"].to_numpy() == "test"
    pool = np.flatnonzero(~from_test)
    val_share = fractions[1]
    train, val = stratified_split(y[pool], s[pool], (1 - val_share, val_share), seed)
    return [pool[train], pool[val], np.flatnonzero(from_test)]


@register_task(NAME, "UCI Adult census income >50K; sensitive sex or race (White vs not)", files=FILES)
def build(
    root: Path,
    target: str = "income",
    sensitive: str = "sex",
    split_seed: int = 0,
    fractions=DEFAULT_FRACTIONS,
    split: str = "upstream",
    include_sensitive: bool = False,
    **unknown: Any,
) -> TaskData:
    target, sensitive, seed, fractions, include_sensitive = common_options(
        NAME, unknown, OPTIONS, target, TARGETS, sensitive, SENSITIVE, split_seed, fractions, include_sensitive
    )
    split = choose(NAME, "split", split, SPLITS)

    root = Path(root)
    train_raw = read_adult(require_file(root / FILES[0], HINT))
    test_raw = read_adult(require_file(root / FILES[1], HINT))
    frame, meta = clean(train_raw, test_raw)

    y = frame["income"].map(LABELS).to_numpy(np.int64)
    s, group_names = sensitive_codes(frame, sensitive)
    parts = split_parts(frame, y, s, split, fractions, seed)
    categorical = [c for c in CATEGORICAL if include_sensitive or c != sensitive]
    features = encode_features(frame, NUMERIC, categorical, parts[0])
    meta.update(split=split, fractions=list(fractions), include_sensitive=include_sensitive)
    return assemble(
        NAME,
        features,
        y,
        s,
        frame["row"].to_numpy(),
        parts,
        target=target,
        sensitive=sensitive,
        group_names=group_names,
        class_names=["<=50K", ">50K"],
        meta=meta,
    )
