"""UTKFace face crops; labels come from the file names, upstream layout::

    utkface/UTKFace/<age>_<gender>_<race>_<datetime>.jpg.chip.jpg
        gender 0 male, 1 female; race 0 White, 1 Black, 2 Asian, 3 Indian, 4 Others

(``utkface/crop_part1/`` with the same names is accepted when ``UTKFace/`` is absent.) Names that
do not parse, e.g. with a field missing, are skipped and counted. Rows are the parsed files in
name order; ``index`` is the position in that order. Split: 60/20/20, stratified by
(target, sensitive) and seeded.

Sensitive attributes (``s``):
  race_white  1 = White, 0 = any other race (default)
  race        the five race codes 0..4
  gender      0 male, 1 female
  age_bucket  1 = age >= age_threshold, 0 = younger
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from fairsqueeze.core.errors import ConfigError, DatasetMissing
from fairsqueeze.datasets.base import TaskData, register_task, stratified_split

from .images import ImageTable, assemble

log = logging.getLogger(__name__)

FOLDER = "utkface"
IMAGE_DIRS = ("UTKFace", "crop_part1")
RACES = ["White", "Black", "Asian", "Indian", "Others"]
GENDERS = ["male", "female"]
TARGETS = ("gender", "age_bucket", "race")
SENSITIVES = ("race_white", "race", "gender", "age_bucket")


class Face(NamedTuple):
    file: str
    age: int
    gender: int
    race: int


def parse_name(name: str) -> Face | None:
    """The labels in a UTKFace file name, or None if the name does not follow the scheme."""
    fields = name.split(".")[0].split("_")
    if len(fields) != 4 or not all(f.isdigit() for f in fields[:3]):
        return None
    age, gender, race = (int(f) for f in fields[:3])
    if gender not in (0, 1) or race not in range(len(RACES)):
        return None
    return Face(name, age, gender, race)


def find_image_dir(root: Path) -> Path:
    for name in IMAGE_DIRS:
        if (root / FOLDER / name).is_dir():
            return root / FOLDER / name
    raise DatasetMissing(f"dataset file not found: {root / FOLDER / IMAGE_DIRS[0]} (UTKFace JPEGs); "
                         "set --data-root or FAIRSQUEEZE_DATA to the folder that holds it")


def read_faces(image_dir: Path) -> tuple[list[Face], list[str]]:
    """Parsed faces in name order, and the names that did not parse."""
    faces, malformed = [], []
    for name in sorted(os.listdir(image_dir)):
        if not name.lower().endswith(".jpg"):
            continue
        face = parse_name(name)
        if face is None:
            malformed.append(name)
        else:
            faces.append(face)
    return faces, malformed


def _columns(faces: list[Face], age_threshold: int) -> dict[str, np.ndarray]:
    race = np.array([f.race for f in faces], dtype=np.int64)
    return {
        "gender": np.array([f.gender for f in faces], dtype=np.int64),
        "age_bucket": (np.array([f.age for f in faces]) >= age_threshold).astype(np.int64),
        "race": race,
        "race_white": (race == 0).astype(np.int64),
    }


def _names(column: str, age_threshold: int) -> list[str]:
    return {
        "gender": GENDERS,
        "age_bucket": [f"age<{age_threshold}", f"age>={age_threshold}"],
        "race": RACES,
        "race_white": ["non-White", "White"],
    }[column]


@register_task(
    "utkface",
    "UTKFace face crops: gender (or age bucket, race) with race White vs not (or race, gender, age) as group",
    files=(f"{FOLDER}/{IMAGE_DIRS[0]}",),
)
def build_utkface(root: Path, target: str = "gender", sensitive: str = "race_white",
                  age_threshold: int = 30, split_seed: int = 0, size: int = 64,
                  resize: int | None = None, limit: int | None = None) -> TaskData:
    if target not in TARGETS:
        raise ConfigError(f"utkface option target={target!r}; expected one of {', '.join(TARGETS)}")
    if sensitive not in SENSITIVES:
        raise ConfigError(f"utkface option sensitive={sensitive!r}; expected one of {', '.join(SENSITIVES)}")
    if target == sensitive or {target, sensitive} == {"race", "race_white"}:
        raise ConfigError(f"utkface: target {target!r} and sensitive {sensitive!r} encode the same attribute")
    image_dir = find_image_dir(Path(root))
    faces, malformed = read_faces(image_dir)
    if not faces:
        raise DatasetMissing(f"no UTKFace images (<age>_<gender>_<race>_<datetime>.jpg...) in {image_dir}"
                             f" ({len(malformed)} file(s) with other names)")
    if malformed:
        log.warning("utkface: skipped %d file(s) whose name does not parse: %s",
                    len(malformed), ", ".join(malformed[:5]))
    cols = _columns(faces, age_threshold)
    y, s = cols[target], cols[sensitive]
    table = ImageTable(image_dir, [f.file for f in faces], y, s, np.arange(len(faces)))
    parts = stratified_split(y, s, (0.6, 0.2, 0.2), split_seed)
    class_names = _names(target, age_threshold)
    meta = {"split_seed": split_seed, "age_threshold": age_threshold, "image_dir": image_dir.name,
            "skipped": {"malformed_name": len(malformed)}}
    return assemble("utkface", table, parts, size=size, resize=resize, limit=limit, seed=split_seed,
                    target=target, sensitive=sensitive, num_classes=len(class_names),
                    group_names=dict(enumerate(_names(sensitive, age_threshold))),
                    class_names=class_names, meta=meta)
