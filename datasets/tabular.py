"""Shared pieces of the tabular task builders: option checks, feature encoding, assembly.

Conventions every tabular task follows (the dataset modules document their own cleaning):

* ``index`` holds the 0-based number of each row among the data rows of the raw source
  file(s), so a split can be traced back to the published file whatever cleaning ran.
* Categorical columns are one-hot encoded with the vocabulary of the whole cleaned table.
  The vocabulary is schema, not a statistic, and taking it from all rows keeps the
  feature layout (``input_shape``) identical for every ``split_seed``; a value that happens
  to be absent from train simply gives a column of zeros there.
* Numeric columns are standardized with the mean and standard deviation of the **train
  split only**; val and test are transformed with those same numbers.
* Numeric features come first in ``x``, then the one-hot blocks; ``meta["features"]``
  names every column and ``meta["numeric_features"]`` the standardized ones.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from fairsqueeze.core.errors import ConfigError, FairsqueezeError
from fairsqueeze.datasets.base import Split, TaskData

DEFAULT_FRACTIONS = (0.6, 0.2, 0.2)


# --- option checks ---------------------------------------------------------------------


def reject_unknown(task: str, unknown: Mapping[str, Any], known: Iterable[str]) -> None:
    """Fail on options the builder does not know, naming them and the known ones."""
    if unknown:
        names = ", ".join(repr(k) for k in sorted(unknown))
        raise ConfigError(
            f"task {task!r}: unknown option(s) {names}; known options: {', '.join(sorted(known))}"
        )


def choose(task: str, option: str, value: Any, choices: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``choices``, else fail listing them."""
    choices = list(choices)
    if value not in choices:
        raise ConfigError(
            f"task {task!r}: {option}={value!r} is not supported; choose one of {', '.join(choices)}"
        )
    return value


def check_seed(task: str, seed: Any) -> int:
    # bool is an int subclass; a seed of True is almost surely a mistake in a suite file
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ConfigError(f"task {task!r}: split_seed must be an integer, got {seed!r}")
    return int(seed)


def check_flag(task: str, option: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ConfigError(f"task {task!r}: {option} must be true or false, got {value!r}")
    return bool(value)


def check_fractions(task: str, fractions: Any) -> tuple[float, float, float]:
    """Train/val/test fractions: three positive numbers that sum to 1."""
    try:
        parts = tuple(float(f) for f in fractions)
    except (TypeError, ValueError):
        parts = ()
    if len(parts) != 3 or min(parts) <= 0 or abs(sum(parts) - 1) > 1e-9:
        raise ConfigError(
            f"task {task!r}: fractions must be three positive numbers (train, val, test) "
            f"that sum to 1, got {fractions!r}"
        )
    return parts  # type: ignore[return-value]


# --- features --------------------------------------------------------------------------


def common_options(task: str, unknown: Mapping[str, Any], known: Iterable[str], target: Any, targets: Iterable[str],
                   sensitive: Any, sensitives: Iterable[str], split_seed: Any, fractions: Any,
                   include_sensitive: Any) -> tuple[str, str, int, tuple[float, float, float], bool]:
    """Validate the options every tabular task shares, before any file is read."""
    reject_unknown(task, unknown, known)
    return (
        choose(task, "target", target, targets),
        choose(task, "sensitive", sensitive, sensitives),
        check_seed(task, split_seed),
        check_fractions(task, fractions),
        check_flag(task, "include_sensitive", include_sensitive),
    )


@dataclass
class Features:
    x: np.ndarray  # float32, rows of the cleaned table
    names: list[str]
    numeric: list[str]
    mean: np.ndarray  # train statistics of the numeric columns
    std: np.ndarray


def one_hot(frame: pd.DataFrame, columns: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """0/1 indicator columns ``col=value`` for every value present in the table (sorted)."""
    blocks, names = [], []
    for col in columns:
        values = frame[col].astype(str).to_numpy()
        vocab = np.unique(values)
        blocks.append((values[:, None] == vocab[None, :]).astype(np.float32))
        names.extend(f"{col}={v}" for v in vocab)
    if not blocks:
        return np.zeros((len(frame), 0), np.float32), names
    return np.concatenate(blocks, axis=1), names


def standardize(values: np.ndarray, train_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Center and scale every column with statistics of ``train_rows`` only."""
    train = values[train_rows]
    mean = train.mean(axis=0)
    std = train.std(axis=0)
    std = np.where(std > 0, std, 1.0)  # a constant train column stays finite (all zeros)
    return (values - mean) / std, mean, std


def encode_features(
    frame: pd.DataFrame, numeric: Sequence[str], categorical: Sequence[str], train_rows: np.ndarray
) -> Features:
    raw = frame[list(numeric)].to_numpy(dtype=np.float64) if numeric else np.zeros((len(frame), 0))
    scaled, mean, std = standardize(raw, train_rows)
    hot, hot_names = one_hot(frame, categorical)
    x = np.concatenate([scaled.astype(np.float32), hot], axis=1)
    return Features(np.ascontiguousarray(x), list(numeric) + hot_names, list(numeric), mean, std)


# --- assembly --------------------------------------------------------------------------


def assemble(
    name: str,
    features: Features,
    y: np.ndarray,
    s: np.ndarray,
    index: np.ndarray,
    parts: Sequence[np.ndarray],
    *,
    target: str,
    sensitive: str,
    group_names: dict[int, str],
    class_names: list[str],
    meta: dict[str, Any],
) -> TaskData:
    """Cut the encoded table into train/val/test and wrap it as a :class:`TaskData`."""
    y = np.asarray(y, dtype=np.int64)
    s = np.asarray(s, dtype=np.int64)
    index = np.asarray(index, dtype=np.int64)
    if not np.isin(y, (0, 1)).all():
        raise FairsqueezeError(f"task {name!r}: labels outside 0/1: {sorted(set(np.unique(y)) - {0, 1})}")
    train, val, test = (Split(features.x[p], y[p], s[p], index[p]) for p in parts)
    meta = {
        **meta,
        "rows": int(len(y)),
        "features": features.names,
        "numeric_features": features.numeric,
        "train_mean": features.mean.tolist(),
        "train_std": features.std.tolist(),
    }
    return TaskData(
        name=name,
        train=train,
        val=val,
        test=test,
        num_classes=2,
        input_shape=(features.x.shape[1],),
        target=target,
        sensitive=sensitive,
        group_names=group_names,
        class_names=class_names,
        meta=meta,
    )
