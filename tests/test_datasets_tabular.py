"""Tabular tasks: parsers on tiny files in the upstream layout, option errors, and known facts
of the real Adult, COMPAS and German files (marked ``data``; skipped where a file is absent)."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fairsqueeze.datasets import adult, compas, german, tabular
from fairsqueeze.core.errors import ConfigError, DatasetMissing
from fairsqueeze.core.registry import TASKS
from fairsqueeze.datasets.base import build_task, data_root

MODULES = {"adult": adult, "compas": compas, "german": german}


# --- tiny files in the upstream layouts ----------------------------------------------------

ADULT_ROW = "{age}, {work}, 77516, Bachelors, 13, Never-married, Adm-clerical, Not-in-family, {race}, {sex}, 2174, 0, {hours}, United-States, {label}"


def adult_rows(n: int, start: int = 0, suffix: str = "") -> list[str]:
    """``n`` complete rows cycling over every (label, sex) cell, with varied numbers."""
    rows = []
    for i in range(start, start + n):
        rows.append(ADULT_ROW.format(
            age=20 + 3 * i, work="Private" if i % 3 else "State-gov", race="White" if i % 4 else "Black",
            sex="Male" if i % 2 else "Female", hours=30 + i, label=(">50K" if (i // 2) % 2 else "<=50K") + suffix,
        ))
    return rows


@pytest.fixture
def adult_root(tmp_path: Path) -> Path:
    folder = tmp_path / "adult"
    folder.mkdir()
    data = adult_rows(20)
    data.insert(5, "41, ?, 1000, HS-grad, 9, Divorced, ?, Unmarried, White, Female, 0, 0, 40, United-States, <=50K")
    (folder / "adult.data").write_text("\n".join(data) + "\n")
    test = adult_rows(6, start=100, suffix=".")
    test.insert(2, "33, Private, 1000, HS-grad, 9, Divorced, Sales, Unmarried, White, Male, 0, 0, 40, ?, >50K.")
    (folder / "adult.test").write_text("|1x3 Cross validator\n" + "\n".join(test) + "\n")
    return tmp_path


def test_adult_parser_handles_comment_missing_and_label_dots(adult_root: Path):
    raw = adult.read_adult(adult_root / "adult/adult.test")
    assert len(raw) == 7  # the comment line is not a row
    assert set(raw["income"]) == {"<=50K", ">50K"}
    assert raw["native-country"].isna().sum() == 1
    for col in adult.TEXT:  # the space after each comma is not part of a value
        assert not raw[col].dropna().str.startswith(" ").any()


def test_adult_synthetic_task(adult_root: Path):
    task = adult.build(adult_root)
    meta = task.meta
    assert meta["source_rows"] == {"adult.data": 21, "adult.test": 7}
    assert meta["kept_rows"] == {"adult.data": 20, "adult.test": 6}
    assert meta["dropped"] == {"missing value ('?')": 2}
    # upstream split: test is exactly adult.test, indexed after the 21 raw adult.data rows
    assert sorted(task.test.index) == [21, 22, 24, 25, 26, 27]
    assert np.all(np.concatenate([task.train.index, task.val.index]) < 21)
    assert 5 not in np.concatenate([task.train.index, task.val.index])  # the row with '?'
    # labels of adult.test lost their '.', so both classes are there
    assert set(task.test.y) == {0, 1}
    assert task.group_names == {0: "Female", 1: "Male"}
    assert not any(f.startswith("sex=") for f in meta["features"])
    assert not {"fnlwgt", "education"} & {f.split("=")[0] for f in meta["features"]}


def test_adult_include_sensitive_adds_the_column(adult_root: Path):
    with_s = adult.build(adult_root, include_sensitive=True)
    without = adult.build(adult_root)
    assert {"sex=Female", "sex=Male"} <= set(with_s.meta["features"])
    assert with_s.input_shape[0] == without.input_shape[0] + 2


def test_german_synthetic_sex_and_age_codes(tmp_path: Path):
    (tmp_path / "german").mkdir()
    lines = []
    for i, code in enumerate(["A91", "A92", "A93", "A94", "A95"] * 4):
        age = 22 + 2 * i
        lines.append(f"A11 {6 + i} A34 A43 {1000 + 50 * i} A65 A75 4 {code} A101 4 A121 {age} "
                     f"A143 A152 2 A173 1 A192 A201 {1 + i % 2}")
    (tmp_path / "german/german.data").write_text("\n".join(lines) + "\n")
    task = german.build(tmp_path)
    s_by_row = dict(zip(np.concatenate([p.index for p in (task.train, task.val, task.test)]),
                        np.concatenate([p.s for p in (task.train, task.val, task.test)])))
    assert [s_by_row[i] for i in range(5)] == [1, 0, 1, 1, 0]
    assert not any(f.startswith("personal_status") for f in task.meta["features"])
    by_age = german.build(tmp_path, sensitive="age")
    assert "age" not in by_age.meta["features"]
    assert by_age.group_names == {0: "age<=25", 1: "age>25"}


def test_compas_filter_keeps_literal_na_string(tmp_path: Path):
    """``N/A`` in score_text is a value to filter on, not a missing value."""
    base = dict(sex="Male", age=30, race="Caucasian", juv_fel_count=0, juv_misd_count=0,
                juv_other_count=0, priors_count=1, days_b_screening_arrest=0,
                c_jail_in="2013-01-01 10:00:00", c_jail_out="2013-01-03 10:00:00",
                c_charge_degree="F", is_recid=0, score_text="Low", two_year_recid=0)
    rows = [dict(base, two_year_recid=i % 2, race=["Caucasian", "African-American"][i // 2 % 2]) for i in range(12)]
    rows += [dict(base, score_text="N/A"), dict(base, days_b_screening_arrest=31),
             dict(base, days_b_screening_arrest=None), dict(base, is_recid=-1),
             dict(base, c_charge_degree="O"), dict(base, race="Hispanic")]
    (tmp_path / "compas").mkdir()
    pd.DataFrame(rows).to_csv(tmp_path / compas.FILE, index=False)
    task = compas.build(tmp_path)
    assert task.meta["propublica_filter_rows"] == 13
    assert sum(len(p) for p in (task.train, task.val, task.test)) == 12
    assert task.meta["dropped"]["score_text == 'N/A'"] == 1
    assert task.meta["dropped"]["days_b_screening_arrest outside [-30, 30] or missing"] == 2


# --- helpers -------------------------------------------------------------------------------


def test_standardize_uses_train_rows_only():
    values = np.array([[0.0], [2.0], [100.0], [200.0]])
    scaled, mean, std = tabular.standardize(values, np.array([0, 1]))
    assert mean.tolist() == [1.0] and std.tolist() == [1.0]
    assert scaled[:, 0].tolist() == [-1.0, 1.0, 99.0, 199.0]


def test_standardize_keeps_constant_columns_finite():
    scaled, _, std = tabular.standardize(np.ones((4, 1)), np.arange(4))
    assert std.tolist() == [1.0] and np.all(scaled == 0)


def test_one_hot_vocabulary_is_sorted_and_complete():
    x, names = tabular.one_hot(pd.DataFrame({"c": ["b", "a", "b"]}), ["c"])
    assert names == ["c=a", "c=b"]
    assert x.tolist() == [[0, 1], [1, 0], [0, 1]]


# --- options and missing files (no data needed) ---------------------------------------------


@pytest.mark.parametrize("name", sorted(MODULES))
def test_registered_with_files(name: str):
    spec = TASKS.get(name)
    assert spec.files and all(f.startswith(f"{name}/") for f in spec.files)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_missing_file_names_the_path(name: str, tmp_path: Path):
    with pytest.raises(DatasetMissing, match=re.escape(str(tmp_path / TASKS.get(name).files[0]))):
        build_task(name, tmp_path)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_unknown_option_is_named(name: str, tmp_path: Path):
    with pytest.raises(ConfigError, match="colour"):
        build_task(name, tmp_path, colour="red")


@pytest.mark.parametrize("name", sorted(MODULES))
def test_wrong_target_or_sensitive_lists_choices(name: str, tmp_path: Path):
    module = MODULES[name]
    with pytest.raises(ConfigError, match=module.TARGETS[0]):
        build_task(name, tmp_path, target="nonsense")
    with pytest.raises(ConfigError, match=", ".join(module.SENSITIVE)):
        build_task(name, tmp_path, sensitive="nonsense")


@pytest.mark.parametrize("bad", [dict(fractions=(0.5, 0.5)), dict(fractions=(0.7, 0.2, 0.2)),
                                 dict(split_seed="0"), dict(split="shuffled"),
                                 dict(include_sensitive="yes")])
def test_invalid_option_values(bad: dict, tmp_path: Path):
    with pytest.raises(ConfigError, match=next(iter(bad))):
        build_task("adult", tmp_path, **bad)


# --- real files ----------------------------------------------------------------------------


def real_root(*files: str) -> Path:
    root = data_root()
    for f in files:
        if not (root / f).exists():
            pytest.skip(f"{root / f} not present (set FAIRSQUEEZE_DATA)")
    return root


@pytest.fixture(scope="module")
def adult_task():
    return adult.build(real_root(*adult.FILES))


def parts(task):
    return (task.train, task.val, task.test)


def assert_partition(task, expected_rows: int):
    ids = [p.index for p in parts(task)]
    assert sum(len(i) for i in ids) == expected_rows
    assert len(np.unique(np.concatenate(ids))) == expected_rows  # disjoint and complete
    for p in parts(task):
        assert p.x.dtype == np.float32 and p.y.dtype == np.int64 and p.s.dtype == np.int64
        assert p.x.shape == (len(p), *task.input_shape)
        assert np.isfinite(p.x).all()


@pytest.mark.data
def test_adult_known_counts(adult_task):
    root = real_root(*adult.FILES)
    assert len(adult.read_adult(root / adult.FILES[0])) == 32_561
    assert len(adult.read_adult(root / adult.FILES[1])) == 16_281
    assert adult_task.meta["kept_rows"] == {"adult.data": 30_162, "adult.test": 15_060}
    assert_partition(adult_task, 45_222)
    y = np.concatenate([p.y for p in parts(adult_task)])
    assert y.mean() == pytest.approx(0.248, abs=0.001)
    assert len(adult_task.test) == 15_060 and adult_task.test.index.min() >= 32_561
    assert len(adult_task.val) == pytest.approx(0.2 * 30_162, abs=4)


@pytest.mark.data
def test_adult_splits_are_seeded(adult_task):
    root = real_root(*adult.FILES)
    assert adult.build(root, split_seed=0).split_hash == adult_task.split_hash
    other = adult.build(root, split_seed=1)
    assert other.split_hash != adult_task.split_hash
    assert np.array_equal(other.test.index, adult_task.test.index)  # upstream test is fixed
    random = adult.build(root, split="random", sensitive="race")
    assert_partition(random, 45_222)
    assert random.group_names == {0: "non-White", 1: "White"}
    assert random.split_hash != adult.build(root, split="random", sensitive="race", split_seed=1).split_hash


@pytest.mark.data
def test_adult_standardized_with_train_statistics(adult_task):
    k = len(adult_task.meta["numeric_features"])
    train, val = adult_task.train.x[:, :k].astype(np.float64), adult_task.val.x[:, :k].astype(np.float64)
    np.testing.assert_allclose(train.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(train.std(0), 1, atol=1e-3)
    assert np.abs(val.mean(0)).max() > 1e-3  # val was not scaled with its own statistics
    hot = adult_task.train.x[:, k:]
    assert set(np.unique(hot)) <= {0.0, 1.0}


@pytest.mark.data
def test_compas_known_counts():
    root = real_root(compas.FILE)
    by_sex = compas.build(root, sensitive="sex")
    assert by_sex.meta["source_rows"] == 7_214
    assert by_sex.meta["propublica_filter_rows"] == 6_172
    assert_partition(by_sex, 6_172)
    by_race = compas.build(root)
    assert_partition(by_race, 5_278)
    assert by_race.group_names == {0: "African-American", 1: "Caucasian"}
    assert not {"decile_score", "v_decile_score"} & set(by_race.meta["features"])
    assert not any(f.startswith("race=") for f in by_race.meta["features"])
    assert compas.build(root, split_seed=1).split_hash != by_race.split_hash


@pytest.mark.data
def test_german_known_counts():
    root = real_root(german.FILE)
    task = german.build(root)
    assert_partition(task, 1_000)
    y = np.concatenate([p.y for p in parts(task)])
    s = np.concatenate([p.s for p in parts(task)])
    assert y.sum() == 700
    assert (s == 0).sum() == 310  # A92; A95 does not occur
    by_age = german.build(root, sensitive="age")
    assert np.concatenate([p.s for p in parts(by_age)]).sum() == 810
    assert german.build(root).split_hash == task.split_hash
    assert german.build(root, split_seed=3).split_hash != task.split_hash


# --- damaged files: one line naming the file and the line ------------------------------------


def test_a_damaged_file_names_its_own_line_counting_comments_and_blank_lines(adult_root: Path):
    from fairsqueeze.datasets.textfile import MalformedFile

    path = adult_root / "adult/adult.test"
    lines = path.read_text().splitlines()  # line 1 is the comment
    lines.insert(3, "")  # a blank line 4, skipped as pandas skips it
    lines[5] = "thirty" + lines[5][lines[5].index(","):]  # the age of file line 6
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(MalformedFile, match=re.escape(f"{path}: line 6: age: expected a number, got 'thirty'")):
        adult.read_adult(path)
    lines[5] = ", ".join(lines[5].split(", ")[:9])  # the same line cut short
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(MalformedFile, match=re.escape(f"{path}: line 6: expected 15 fields, found 9")):
        adult.read_adult(path)


def test_an_intact_file_reads_as_before(adult_root: Path):
    """The checks only name problems: a file with missing values ('?') and blank lines reads as pandas reads it."""
    path = adult_root / "adult/adult.test"
    path.write_text(path.read_text() + "\n\n")
    plain = pd.read_csv(path, header=None, names=list(adult.COLUMNS), skiprows=1, skipinitialspace=True,
                        na_values=["?", ""], keep_default_na=False, dtype={c: str for c in adult.TEXT})
    ours = adult.read_adult(path)
    plain["income"] = plain["income"].str.rstrip(".")
    pd.testing.assert_frame_equal(ours, plain, check_dtype=False)
