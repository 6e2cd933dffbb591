"""Tasks: a dataset turned into fixed train/val/test splits of (x, y, s).

A task builder is registered by name and called as ``builder(data_root, **options)``.
It returns a :class:`TaskData`. ``x`` may be float features, or uint8 images (possibly a
memory-mapped array) that :meth:`TaskData.prepare` turns into float batches.
"""
from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from fairsqueeze.core.errors import ConfigError, DatasetMissing, FairsqueezeError
from fairsqueeze.core.hashing import array_hash, config_hash
from fairsqueeze.core.params import check_options
from fairsqueeze.core.registry import TASKS

DATA_ENV = "FAIRSQUEEZE_DATA"

# x arrays (and their transforms) for one batch: (x_batch, train) -> float tensor
BatchTransform = Callable[[torch.Tensor, bool], torch.Tensor]


@dataclass
class Split:
    """One split: inputs, labels, groups (-1 = unknown group) and row ids in the source."""

    x: Any  # np.ndarray / np.memmap / torch.Tensor, indexed along axis 0
    y: np.ndarray
    s: np.ndarray
    index: np.ndarray

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, rows: np.ndarray) -> "Split":
        rows = np.asarray(rows)
        return Split(self.x[rows], self.y[rows], self.s[rows], self.index[rows])

    def group_counts(self) -> dict[int, int]:
        values, counts = np.unique(self.s, return_counts=True)
        return {int(v): int(c) for v, c in zip(values, counts)}


def _to_float(x: torch.Tensor, train: bool) -> torch.Tensor:
    return x.float()


class TestSplitSealed(RuntimeError):
    """The test split was read while it is sealed (inside a method or a tuning trial)."""


# The seal is process-wide, not per thread or context: a thread a method starts must not read
# the split either. A depth count lets seals nest; the lock keeps it exact across threads.
_seal_lock = threading.Lock()
_seal_depth = [0]
_violations = [0]


@contextlib.contextmanager
def sealed_test_split():
    """While active, reading ``TaskData.test`` of any task raises :class:`TestSplitSealed`,
    in every thread of this process.

    The engine wraps every method (and every tuning trial) in it, so a method cannot reach
    the test split even by rebuilding its task or from a thread it starts;
    :func:`test_split_violations` counts attempts, so an attempt that the method caught is
    still detected.
    """
    with _seal_lock:
        _seal_depth[0] += 1
    try:
        yield
    finally:
        with _seal_lock:
            _seal_depth[0] -= 1


def test_split_is_sealed() -> bool:
    return _seal_depth[0] > 0


def test_split_violations() -> int:
    return _violations[0]


def content_digest(x: Any) -> str:
    """A content hash of an input array; lazily loaded arrays provide their own ``digest``."""
    digest = getattr(x, "digest", None)
    if digest is not None:
        return str(digest)
    return array_hash(np.asarray(x))


@dataclass
class TaskData:
    name: str
    train: Split
    val: Split
    test: Split = field(repr=False, compare=False)
    num_classes: int
    input_shape: tuple[int, ...]
    target: str
    sensitive: str
    group_names: dict[int, str]
    class_names: list[str] | None = None
    transform: BatchTransform = _to_float
    meta: dict[str, Any] = field(default_factory=dict)

    @cached_property
    def split_hash(self) -> str:
        """Hash of the split row ids: two runs with the same hash saw the same rows."""
        return array_hash(self.train.index, self.val.index, self.test.index)

    @cached_property
    def fingerprint(self) -> str:
        """Hash of the data actually loaded: split rows, labels, groups and input content.

        Every cached dense model and every run key depends on it, so changed files (another
        data root, a shortened CSV, a re-shuffled split) never reuse old results.
        """
        parts = {"split": self.split_hash, "classes": self.num_classes, "shape": list(self.input_shape)}
        for name, split in (("train", self.train), ("val", self.val), ("test", self.test)):
            parts[name] = [array_hash(split.y, split.s), content_digest(split.x)]
        return config_hash(parts)

    def prepare(self, x: Any, train: bool) -> torch.Tensor:
        return Preparer(self.transform)(x, train)

    def view(self) -> "TaskView":
        return TaskView(self)

    def summary(self) -> dict[str, Any]:
        return {
            "task": self.name,
            "target": self.target,
            "sensitive": self.sensitive,
            "num_classes": self.num_classes,
            "input_shape": list(self.input_shape),
            "split_hash": self.split_hash,
            "fingerprint": self.fingerprint,
            "group_names": {str(k): v for k, v in self.group_names.items()},
            "sizes": {n: len(getattr(self, n)) for n in ("train", "val", "test")},
            "group_counts": {n: getattr(self, n).group_counts() for n in ("train", "val", "test")},
        }


def _get_test(task: TaskData) -> Split:
    if test_split_is_sealed():
        with _seal_lock:
            _violations[0] += 1
        raise TestSplitSealed(f"task {task.name!r}: the test split is sealed here (methods and tuning see train and val only)")
    return task.__dict__["_test"]


def _set_test(task: TaskData, split: Split) -> None:
    task.__dict__["_test"] = split


TaskData.test = property(_get_test, _set_test)  # type: ignore[assignment]  # after @dataclass built __init__


class Preparer:
    """Turns raw rows into a float batch; holds the transform only, never the task."""

    def __init__(self, transform: BatchTransform):
        self.transform = transform

    def __call__(self, x: Any, train: bool) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            x = torch.from_numpy(np.ascontiguousarray(x))
        return self.transform(x, train)


class TaskView:
    """What a method may see of a task: train and val, never test (and no way back to it)."""

    def __init__(self, data: TaskData):
        self.name = data.name
        self.train = data.train
        self.val = data.val
        self.num_classes = data.num_classes
        self.input_shape = data.input_shape
        self.group_names = dict(data.group_names)
        self.target = data.target
        self.sensitive = data.sensitive
        self.prepare = Preparer(data.transform)


def check_task(task: TaskData, label: str) -> None:
    """Refuse a task that cannot give meaningful results, before anything trains."""
    for name in ("train", "val", "test"):
        split = getattr(task, name)
        if len(split) == 0:
            raise FairsqueezeError(f"task {label}: the {name} split has no rows; check the data files and options")
        counts = {g: c for g, c in split.group_counts().items() if g >= 0}
        if len(counts) < 2:
            shown = ", ".join(f"{task.group_names.get(g, g)}: {c}" for g, c in counts.items()) or "none"
            raise FairsqueezeError(
                f"task {label}: sensitive attribute {task.sensitive!r} has fewer than two groups in the"
                f" {name} split (rows per group: {shown}); fairness gaps need two"
            )


@dataclass
class TaskSpec:
    name: str
    builder: Callable[..., TaskData]
    description: str
    files: tuple[str, ...] = ()  # paths under the data root; empty = needs no files




def register_task(name: str, description: str, files: Sequence[str] = ()):
    """Register ``builder(data_root: Path, **options) -> TaskData`` under ``name``."""

    def decorator(builder: Callable[..., TaskData]) -> Callable[..., TaskData]:
        TASKS.register(name)(TaskSpec(name, builder, description, tuple(files)))
        return builder

    return decorator


def data_root(explicit: str | os.PathLike | None = None) -> Path:
    return Path(explicit or os.environ.get(DATA_ENV) or "data").expanduser()


def require_file(path: Path, hint: str = "") -> Path:
    if not path.exists():
        extra = f" ({hint})" if hint else ""
        raise DatasetMissing(
            f"dataset file not found: {path}{extra}; set --data-root or {DATA_ENV} to the folder that holds it"
        )
    return path


def build_task(name: str, root: Path | None = None, **options: Any) -> TaskData:
    spec = TASKS.get(name)
    check_options(spec.builder, options, f"task {name!r}")
    try:
        return spec.builder(data_root(root), **options)
    except DatasetMissing as exc:
        raise DatasetMissing(f"task {name!r}: {exc}") from None


def stratified_split(
    y: np.ndarray, s: np.ndarray, fractions: Sequence[float], seed: int
) -> list[np.ndarray]:
    """Split row numbers into parts of the given fractions, stratified by (y, s) and seeded.

    Every (label, group) cell is shuffled and cut by the same fractions, so group and label
    proportions match across parts; the result does not depend on row order beyond ``y``/``s``.
    """
    if not all(0 <= f <= 1 for f in fractions) or abs(sum(fractions) - 1) > 1e-9:
        raise ConfigError(f"fractions: split fractions must lie in [0, 1] and sum to 1, got {list(fractions)}")
    if isinstance(seed, bool) or not 0 <= seed <= 2 ** 32 - 1:
        raise ConfigError(f"split_seed: expected an integer in 0..{2 ** 32 - 1}, got {seed!r}")
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[np.zeros(0, dtype=np.int64)] for _ in fractions]
    cells = np.stack([y, s], axis=1)
    for cell in np.unique(cells, axis=0):
        rows = np.flatnonzero((cells == cell).all(axis=1))
        rng.shuffle(rows)
        bounds = np.round(np.cumsum(fractions)[:-1] * len(rows)).astype(int)
        for part, chunk in zip(parts, np.split(rows, bounds)):
            part.append(chunk)
    return [np.sort(np.concatenate(p)) for p in parts]


CACHE_ENV = "FAIRSQUEEZE_CACHE"


def cache_root() -> Path:
    """Where derived artefacts (decoded images, dense checkpoints) are cached."""
    return Path(os.environ.get(CACHE_ENV) or "results/cache").expanduser()
