"""Fitzpatrick-17k clinical skin images, with skin type as the group. Expected layout::

    fitzpatrick17k/fitzpatrick17k.csv      the upstream CSV: md5hash, fitzpatrick_scale (1..6, -1 unknown),
                                           label (114 classes), nine_partition_label,
                                           three_partition_label, url, ...
    fitzpatrick17k/images/<md5hash>.jpg    the images, fetched from the CSV's urls

``fitzpatrick17k/data/finalfitz17k/<md5hash>.jpg`` (the folder name used by the upstream
download script and many papers' code) is accepted in place of ``images/``.

Targets: ``label`` (114 classes), ``nine`` (nine_partition_label), ``three``
(three_partition_label). Class indices follow the sorted class names of the *whole* CSV, so
a partial image folder keeps the full class count.
Sensitive: skin types 1-3 = 0 (light), 4-6 = 1 (dark); unknown (-1) stays -1: such rows are
kept for training and left out of group metrics.
Rows whose image is missing are dropped and counted; ``index`` is the CSV row number.
Split: 60/20/20, stratified by class for classes with at least ``MIN_STRATIFIED`` rows; the
rows of rarer classes are pooled and split 60/20/20 at random (seeded), since a class of one
or two rows cannot be cut three ways.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from fairsqueeze.core.errors import ConfigError, DatasetMissing
from fairsqueeze.datasets.base import TaskData, register_task, require_file, stratified_split

from . import textfile
from .images import ImageTable, assemble

log = logging.getLogger(__name__)

FOLDER = "fitzpatrick17k"
CSV = "fitzpatrick17k.csv"
IMAGE_DIRS = ("images", "data/finalfitz17k")
TARGETS = {"label": "label", "nine": "nine_partition_label", "three": "three_partition_label"}
SKIN_COLUMNS = ("fitzpatrick_scale", "fitzpatrick")  # the oldest CSV release names it "fitzpatrick"
GROUP_NAMES = {0: "light (types 1-3)", 1: "dark (types 4-6)"}
FRACTIONS = (0.6, 0.2, 0.2)
MIN_STRATIFIED = 3


def read_table(path: Path) -> pd.DataFrame:
    table = textfile.read_table(path, header=True, numeric=SKIN_COLUMNS)
    skin = next((c for c in SKIN_COLUMNS if c in table.columns), None)
    needed = ["md5hash", *TARGETS.values()]
    lacking = [c for c in needed if c not in table.columns] + ([] if skin else [SKIN_COLUMNS[0]])
    if lacking:
        raise ConfigError(f"{path}: missing column(s) {', '.join(lacking)}")
    return table.rename(columns={skin: "skin_type"})


def skin_group(skin_type: np.ndarray) -> np.ndarray:
    """Fitzpatrick type -> 0 light (1-3), 1 dark (4-6), -1 unknown (anything else)."""
    skin_type = np.asarray(skin_type)
    return np.select([(skin_type >= 1) & (skin_type <= 3), (skin_type >= 4) & (skin_type <= 6)],
                     [0, 1], default=-1).astype(np.int64)


def find_image_dir(folder: Path) -> Path:
    for name in IMAGE_DIRS:
        if (folder / name).is_dir():
            return folder / name
    raise DatasetMissing(f"dataset file not found: {folder / IMAGE_DIRS[0]} (Fitzpatrick-17k images "
                         f"named <md5hash>.jpg; {folder / IMAGE_DIRS[1]} also works); set --data-root "
                         "or FAIRSQUEEZE_DATA to the folder that holds it")


def split_by_class(y: np.ndarray, seed: int) -> list[np.ndarray]:
    """60/20/20 stratified by class; classes under MIN_STRATIFIED rows are pooled unstratified."""
    classes, counts = np.unique(y, return_counts=True)
    rare = np.isin(y, classes[counts < MIN_STRATIFIED])
    # Pooling = one stratum: every rare row gets the same label -1.
    strata = np.where(rare, -1, y)
    return stratified_split(strata, np.zeros_like(strata), FRACTIONS, seed)


@register_task(
    "fitzpatrick",
    "Fitzpatrick-17k skin conditions (114, 9 or 3 classes) with light (types 1-3) vs dark (4-6) skin as group",
    files=(f"{FOLDER}/{CSV}",),
)
def build_fitzpatrick(root: Path, target: str = "label", split_seed: int = 0, size: int = 64,
                      resize: int | None = None, limit: int | None = None) -> TaskData:
    if target not in TARGETS:
        raise ConfigError(f"fitzpatrick option target={target!r}; expected one of {', '.join(TARGETS)}")
    folder = Path(root) / FOLDER
    csv_path = require_file(folder / CSV, "the Fitzpatrick-17k CSV")
    image_dir = find_image_dir(folder)  # every missing file is named before any is read
    table = read_table(csv_path)
    class_names = sorted(table[TARGETS[target]].astype(str).unique())
    y_all = pd.Categorical(table[TARGETS[target]].astype(str), categories=class_names).codes

    files = (table["md5hash"].astype(str) + ".jpg").to_numpy()
    on_disk = set(os.listdir(image_dir))
    present = np.array([f in on_disk for f in files], dtype=bool)
    if not present.all():
        log.warning("fitzpatrick: dropped %d of %d CSV rows whose image is missing under %s",
                    int((~present).sum()), len(files), image_dir)
    rows = np.flatnonzero(present)
    y = y_all[rows].astype(np.int64)
    s = skin_group(table["skin_type"].to_numpy()[rows])
    images = ImageTable(image_dir, list(files[rows]), y, s, rows)
    parts = split_by_class(y, split_seed)
    meta = {"split_seed": split_seed, "rows_listed": len(table), "image_dir": str(image_dir.relative_to(folder)),
            "unknown_skin_type": int((s == -1).sum()),
            "skipped": {"missing_image": int((~present).sum())}}
    return assemble("fitzpatrick", images, parts, size=size, resize=resize, limit=limit,
                    seed=split_seed, target=target, sensitive="skin_type", num_classes=len(class_names),
                    group_names=dict(GROUP_NAMES), class_names=class_names, meta=meta)
