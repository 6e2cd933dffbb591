"""CelebA (aligned faces, 40 binary attributes), in the upstream layout under ``celeba/``::

    celeba/img_align_celeba/*.jpg
    celeba/list_attr_celeba.txt      line 1: row count; line 2: the 40 names; then "file v1 .. v40" (1 / -1)
    celeba/list_eval_partition.txt   "file p" with p = 0 train, 1 valid, 2 test   (split="official")
    celeba/identity_CelebA.txt       "file identity"                                (split="identity")

A row is used only if it is listed in the attribute file (and in the file the split needs)
and its image is present, so the same loader serves the full download and partial copies.
Attribute values map 1 -> 1 and -1 -> 0. Row ids (``index``) are positions in the attribute
file, 0 = the first image line.
"""
from __future__ import annotations

import difflib
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from fairsqueeze.core.errors import ConfigError, DatasetMissing
from fairsqueeze.datasets.base import TaskData, register_task, require_file

from .images import ImageTable, assemble
from .textfile import WHITESPACE, line_of_row, malformed, read_header_lines, read_table

log = logging.getLogger(__name__)

FOLDER = "celeba"
SPLITS = ("official", "identity")
FRACTIONS = (0.6, 0.2, 0.2)


def read_attributes(path: Path) -> pd.DataFrame:
    """The attribute table, indexed by file name, values 0/1 (int8), in file order."""
    # line 1 is the row count (the table itself is the truth), line 2 the attribute names
    names = read_header_lines(path, 2, ["the number of images", "the attribute names"])[1].split()
    table = read_table(path, sep=WHITESPACE, header=False, skiprows=2, names=["file", *names], numeric=names)
    values = table[names].to_numpy()
    bad = ~np.isin(values, (-1, 1))
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise malformed(path, line_of_row(path, int(row), 2), f"{names[col]}: expected 1 or -1, got {values[row, col]}")
    return (table.set_index("file") > 0).astype(np.int8)


def read_pairs(path: Path, column: str) -> pd.Series:
    """A two-column "file value" listing (partition or identity), indexed by file name."""
    table = read_table(path, sep=WHITESPACE, header=False, names=["file", column], numeric=[column])
    return table.set_index("file")[column].astype(np.int64)


def check_attribute(option: str, name: str, known: list[str]) -> None:
    if name in known:
        return
    close = difflib.get_close_matches(name, known, n=3)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise ConfigError(f"celeba option {option}={name!r} is not a CelebA attribute; {hint}"
                      f"known: {', '.join(known[:6])}, ... ({len(known)} in all)")


def identity_split(identity: np.ndarray, seed: int) -> list[np.ndarray]:
    """Positions split 60/20/20 by identity (seeded): no person appears in two parts."""
    people = np.unique(identity)
    np.random.default_rng(seed).shuffle(people)
    bounds = np.round(np.cumsum(FRACTIONS)[:-1] * len(people)).astype(int)
    return [np.flatnonzero(np.isin(identity, group)) for group in np.split(people, bounds)]


def _present(image_dir: Path, files: pd.Index) -> np.ndarray:
    on_disk = set(os.listdir(image_dir))
    return np.fromiter((f in on_disk for f in files), dtype=bool, count=len(files))


@register_task(
    "celeba",
    "CelebA aligned faces: a binary attribute (default Smiling) with a binary sensitive attribute (default Male)",
    files=(f"{FOLDER}/list_attr_celeba.txt", f"{FOLDER}/img_align_celeba"),
)
def build_celeba(root: Path, target: str = "Smiling", sensitive: str = "Male",
                 split: str = "official", split_seed: int = 0, size: int = 64,
                 resize: int | None = None, limit: int | None = None) -> TaskData:
    folder = Path(root) / FOLDER
    image_dir = require_file(folder / "img_align_celeba", "CelebA aligned JPEGs")
    attrs = read_attributes(require_file(folder / "list_attr_celeba.txt"))
    known = list(attrs.columns)
    check_attribute("target", target, known)
    check_attribute("sensitive", sensitive, known)
    if target == sensitive:
        raise ConfigError(f"celeba: target and sensitive are both {target!r}; pick two attributes")
    if split not in SPLITS:
        raise ConfigError(f"celeba option split={split!r}; expected one of {', '.join(SPLITS)}")

    position = pd.Series(np.arange(len(attrs)), index=attrs.index)
    if split == "official":
        part = read_pairs(require_file(folder / "list_eval_partition.txt"), "partition")
    else:
        part = read_pairs(require_file(folder / "identity_CelebA.txt"), "identity")
    listed = attrs.index[attrs.index.isin(part.index)]
    present = _present(image_dir, listed)
    files = listed[present]
    if not len(files):
        raise DatasetMissing(f"none of the {len(listed)} images listed in list_attr_celeba.txt is in {image_dir}")
    if not present.all():
        log.info("celeba: %d listed image(s) are not in %s; using the %d present",
                 int((~present).sum()), image_dir, len(files))
    keys = part.reindex(files).to_numpy()
    if split == "official":
        parts = [np.flatnonzero(keys == p) for p in (0, 1, 2)]
    else:
        parts = identity_split(keys, split_seed)

    rows = attrs.loc[files]
    table = ImageTable(image_dir, list(files), rows[target].to_numpy(), rows[sensitive].to_numpy(),
                       position.loc[files].to_numpy())
    meta = {"split": split, "split_seed": split_seed, "rows_listed": int(len(attrs)),
            "skipped": {"not_in_split_file": int(len(attrs) - len(listed)),
                        "missing_image": int((~present).sum())}}
    return assemble("celeba", table, parts, size=size, resize=resize, limit=limit, seed=split_seed,
                    target=target, sensitive=sensitive, num_classes=2,
                    group_names={0: f"not {sensitive}", 1: sensitive},
                    class_names=[f"not {target}", target], meta=meta)
