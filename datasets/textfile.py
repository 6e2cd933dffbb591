"""Reading the datasets' text tables (CSV, whitespace-separated listings) so that a damaged
file ends in one line naming the file and the line, never in a parser's traceback or in a
row quietly filled with missing values.

Checked: an empty file or one without data rows, a line with more or fewer fields than the
header (a truncated last line is the common case: pandas would pad it with NaN), bytes
that are not text, and non-numeric values in the columns a loader reads as numbers.
Line numbers are the file's own (1 = its first line, blank lines counted).
"""
from __future__ import annotations

import csv
import re
import warnings
from pathlib import Path
from typing import Iterator, Sequence

import pandas as pd

from fairsqueeze.core.errors import FairsqueezeError

WHITESPACE = r"\s+"


class MalformedFile(FairsqueezeError):
    """A dataset file is empty, truncated or not in its documented layout."""


def malformed(path: Path, line: int, problem: str) -> MalformedFile:
    return MalformedFile(f"{path}: line {line}: {problem}")


def read_table(path: Path, *, sep: str = ",", header: bool, skiprows: int = 0, numeric: Sequence[str] = (),
               **read_csv: object) -> pd.DataFrame:
    """``pd.read_csv`` with the checks above. ``skiprows`` lines (comments, a count) come
    before the header or the first data row; ``numeric`` columns (those present) must hold
    numbers or nothing and come back as numbers."""
    path = Path(path)
    first = skiprows + 1
    try:
        with warnings.catch_warnings():  # pandas warns, and drops values, when a row is longer than the names
            warnings.simplefilter("error", pd.errors.ParserWarning)
            frame = pd.read_csv(path, sep=sep, header=0 if header else None, skiprows=skiprows, index_col=False,
                                **read_csv)
    except pd.errors.ParserWarning:
        names = read_csv.get("names")
        expected = len(names) if names is not None else _field_count(next(_data_lines(path, skiprows))[1], sep)
        _check_field_counts(path, sep, skiprows, expected)
        raise MalformedFile(f"{path}: rows do not match the expected {expected} fields") from None
    except pd.errors.EmptyDataError:
        raise malformed(path, first, "the file is empty") from None
    except pd.errors.ParserError as exc:
        found = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(exc))
        if found:
            raise malformed(path, int(found[2]), f"expected {found[1]} fields, found {found[3]}") from None
        raise MalformedFile(f"{path}: cannot be parsed: {str(exc).splitlines()[0]}") from None
    except UnicodeDecodeError:
        raise _not_text(path) from None
    if frame.empty:
        if next(_data_lines(path, 0), None) is None:
            raise malformed(path, 1, "the file is empty")
        raise malformed(path, first + int(header), "no data rows" + (" after the header" if header else ""))
    if frame.isna().to_numpy().any():  # a short line is padded with NaN: find it
        _check_field_counts(path, sep, skiprows, len(frame.columns))
    for column in numeric:
        if column in frame.columns:
            frame[column] = _numbers(path, frame, column, skiprows + int(header))
    return frame


def _data_lines(path: Path, skip: int) -> Iterator[tuple[int, str]]:
    """(line number, text) of the lines pandas reads as rows: after ``skip``, not blank."""
    with open(path, encoding="utf-8", errors="replace", newline="") as fh:
        for number, text in enumerate(fh, 1):
            if number > skip and text.strip():
                yield number, text


def _field_count(text: str, sep: str) -> int:
    if sep == WHITESPACE:
        return len(text.split())
    return len(next(csv.reader([text], delimiter=sep)))


def _check_field_counts(path: Path, sep: str, skip: int, expected: int) -> None:
    for number, text in _data_lines(path, skip):
        found = _field_count(text, sep)
        if found != expected:
            raise malformed(path, number, f"expected {expected} fields, found {found} (truncated or damaged line)")


def _numbers(path: Path, frame: pd.DataFrame, column: str, skip: int) -> pd.Series:
    values = pd.to_numeric(frame[column], errors="coerce")
    bad = values.isna() & frame[column].notna()
    if bad.any():
        row = int(bad.to_numpy().argmax())
        raise malformed(path, line_of_row(path, row, skip), f"{column}: expected a number, got {frame[column].iloc[row]!r}")
    return values


def line_of_row(path: Path, row: int, skip: int) -> int:
    """The file line of data row ``row`` (0-based) of a table whose data starts after ``skip``
    lines (comments and the header), blank lines skipped as pandas does."""
    return next(n for i, (n, _) in enumerate(_data_lines(path, skip)) if i == row)


def _not_text(path: Path) -> MalformedFile:
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return malformed(path, data[: exc.start].count(b"\n") + 1, f"not UTF-8 text (byte {data[exc.start]:#04x})")
    return MalformedFile(f"{path}: not UTF-8 text")


def read_header_lines(path: Path, count: int, what: Sequence[str]) -> list[str]:
    """The first ``count`` lines of a file whose table starts after them (CelebA's attribute
    list: a row count, then the names); ``what`` says what each line should hold."""
    try:
        with open(path, encoding="utf-8") as fh:
            lines = [fh.readline() for _ in range(count)]
    except UnicodeDecodeError:
        raise _not_text(path) from None
    for number, (line, expected) in enumerate(zip(lines, what), 1):
        if not line.strip():
            raise malformed(path, number, f"expected {expected}, found {'nothing' if not line else 'a blank line'}")
    return lines
