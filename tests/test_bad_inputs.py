"""The catalogue of bad input: every row is something a user may get wrong, given to the
command line as a user would. Each must end with a non-zero exit, at most one line on
stderr (log lines and warnings count), no traceback, the row's message, and no file or
database created or changed. A new loader, parameter or option gets its rows here.

Rows run through ``fairsqueeze.cli.main`` in this process (a subprocess costs seconds of
imports per row); ``test_the_real_command_line_gives_the_same_line`` checks one row through
the installed ``fairsqueeze`` executable to show the two agree.
"""
from __future__ import annotations

import csv
import fnmatch
import hashlib
import io
import logging
import os
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from fairsqueeze.cli.main import main

DIGITS = "seeds: [0]\ntrain: {epochs: 1}\ntasks: [{name: digits, options: {target: parity}}]\n" \
         "models: [{name: mlp, options: {hidden: [32, 16]}}]\n"


def suite(methods: str = "[dense]", head: str = "seeds: [0]\ntrain: {epochs: 1}\n",
          tasks: str = "[{name: digits, options: {target: parity}}]",
          models: str = "[{name: mlp, options: {hidden: [32, 16]}}]", tail: str = "") -> str:
    return f"{head}tasks: {tasks}\nmodels: {models}\nmethods: {methods}\n{tail}"


def on(task: str, options: str = "{}", model: str = "mlp") -> str:
    """A suite with the dense model of one task (its files come from the row)."""
    return suite(tasks=f"[{{name: {task}, options: {options}}}]", models=f"[{model}]")


# --- tiny data files in the upstream layouts, each damaged one way ------------------------

COMPAS_COLUMNS = ["id", "sex", "age", "race", "juv_fel_count", "juv_misd_count", "juv_other_count", "priors_count",
                  "days_b_screening_arrest", "c_jail_in", "c_jail_out", "c_charge_degree", "is_recid", "score_text",
                  "two_year_recid"]


def compas_csv(rows: int = 4, **change: str) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COMPAS_COLUMNS)
    for i in range(rows):
        row = {"id": i, "sex": "Male" if i % 2 else "Female", "age": 30 + i, "race": "Caucasian",
               "juv_fel_count": 0, "juv_misd_count": 0, "juv_other_count": 0, "priors_count": i,
               "days_b_screening_arrest": 0, "c_jail_in": "2013-08-13 06:03:42", "c_jail_out": "2013-08-14 05:41:20",
               "c_charge_degree": "F", "is_recid": i % 2, "score_text": "Low", "two_year_recid": i % 2}
        if i == rows - 1:
            row.update(change)
        writer.writerow([row[c] for c in COMPAS_COLUMNS])
    return out.getvalue()


ADULT = "39, State-gov, 77516, Bachelors, 13, Never-married, Adm-clerical, Not-in-family, White, Male, 2174, 0, 40, " \
        "United-States, <=50K"
GERMAN = "A11 6 A34 A43 1169 A65 A75 4 A93 A101 4 A121 67 A143 A152 2 A173 1 A192 A201 1"
CELEBA_NAMES = " ".join(["Male", "Smiling"] + [f"A{i}" for i in range(38)])


def celeba_row(i: int, value: str = "1") -> str:
    return f"{i:06d}.jpg " + " ".join([value, "-1"] * 20)


def celeba(attributes: str, partition: str = "000001.jpg 0\n000002.jpg 1\n") -> dict[str, str]:
    return {"data/celeba/list_attr_celeba.txt": attributes, "data/celeba/list_eval_partition.txt": partition,
            "data/celeba/img_align_celeba/": ""}


FITZ_HEADER = "md5hash,fitzpatrick_scale,label,nine_partition_label,three_partition_label\n"


@dataclass
class Row:
    id: str
    argv: list[str]  # "{tmp}" stands for the row's folder
    expect: str  # part of the one line
    files: dict[str, str | bytes] = field(default_factory=dict)  # a path ending in "/" is a folder
    before: Callable[[Path], object] | None = None  # state to create first (what it returns is held during the row)
    leaves: str = ""  # a file pattern an open item still leaves behind (ignored until it is fixed; then remove)


def run(suite_text: str | None = None, *extra: str, **files: str | bytes) -> tuple[list[str], dict]:
    argv = ["run", "{tmp}/s.yaml", "--db", "sqlite:///{tmp}/x.db", "--data-root", "{tmp}/data", "--quiet", *extra]
    return argv, ({"s.yaml": suite_text} if suite_text is not None else {})


def row(id: str, suite_text: str, expect: str, *extra: str, files: dict | None = None, **kw) -> Row:
    argv, written = run(suite_text, *extra)
    return Row(id, argv, expect, {**written, **(files or {})}, **kw)



def first_version(tmp: Path) -> None:
    """The database holds suite 'study' as run from its first definition."""
    (tmp / "v1.yaml").write_text(suite(head="name: study\nseeds: [0]\ntrain: {epochs: 1}\n"))
    assert main(["run", str(tmp / "v1.yaml"), "--db", f"sqlite:///{tmp}/x.db", "--quiet"]) == 0


def another_worker(tmp: Path) -> object:
    """Another process holds the SQLite database (the writer's lock on the file, taken here and
    held during the row)."""
    import fcntl

    handle = open(tmp / "x.db", "a")
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return handle


class Env:
    """An environment variable set during the row (``before`` returns it; the row closes it)."""

    def __init__(self, name: str, value: str):
        self.name, self.old = name, os.environ.get(name)
        os.environ[name] = value

    def close(self) -> None:
        if self.old is None:
            os.environ.pop(self.name, None)
        else:
            os.environ[self.name] = self.old


def old_schema(tmp: Path) -> None:
    import sqlite3

    with sqlite3.connect(tmp / "x.db") as conn:
        conn.execute("CREATE TABLE runs (key TEXT PRIMARY KEY, suite TEXT, label TEXT, status TEXT)")


ROWS = [
    # -- the suite file --------------------------------------------------------------------------
    Row("unknown suite name", ["run", "no-such-suite", "--db", "sqlite:///{tmp}/x.db"], "suite not found"),
    row("not YAML", "tasks: [digits\n", "not valid YAML"),
    row("unknown top-level key", "sedes: [0]\n" + suite(), "sedes (line 1): unknown key 'sedes'"),
    row("no methods", DIGITS, "methods (line 1): expected a non-empty list"),
    row("unknown method", suite("[nosuch]"), "unknown method 'nosuch'"),
    row("unknown task option", suite(tasks="[{name: digits, options: {colour: red}}]"),
        "task 'digits': unknown option 'colour'"),
    row("unknown model", suite(models="[nosuch]"), "unknown model 'nosuch'"),
    row("unknown training option", suite(head="train: {epoch: 1}\n"), "unknown training option 'epoch'"),
    row("unknown optimizer", suite(head="train: {optimizer: sdg}\n"), "unknown optimizer 'sdg'"),
    row("a label used twice", suite("[{name: truncated_svd, label: svd}, {name: slr_w, label: svd}]"),
        "label 'svd' is already used by methods[0]"),
    row("seeds not integers", suite(head="seeds: [a]\n"), "seeds (line 1): expected a non-empty list of integers"),
    row("a seed that is a boolean", suite(head="seeds: [true]\n"), "expected a non-empty list of integers"),
    row("duplicate seeds", suite(head="seeds: [0, 1, 0]\n"), "seeds[2] (line 1): seed 0 is listed twice"),
    # booleans are YAML booleans, never strings
    row("unequal_budgets as a string", suite("[{name: truncated_svd, tune: true}]",
                                             tail="tuning: {trials: 2, unequal_budgets: 'no'}\n"),
        "tuning.unequal_budgets (line 6): expected true or false, got 'no'"),
    row("compression objective as a string", suite("[{name: truncated_svd, tune: true}]",
                                                   tail="tuning: {trials: 2, objectives: {compression: 'yes'}}\n"),
        "tuning.objectives.compression (line 6): expected true or false, got 'yes'"),
    row("a model switch as a string", suite(models="[{name: vgg11_narrow, options: {batch_norm: 'no'}}]"),
        "batch_norm: expected true or false, got 'no'"),
    row("a task switch as a string", suite(tasks="[{name: adult, options: {include_sensitive: 'no'}}]"),
        "include_sensitive: expected true or false, got 'no'"),
    row("a method switch as a string", suite("[{name: bifp, params: {structured: 'no'}}]"),
        "structured: expected true or false, got 'no'"),
    # types from the annotations
    row("an int parameter given a word", suite("[{name: truncated_svd, params: {k: four}}]"),
        "k: expected an integer, got 'four'"),
    row("an int parameter given a fraction", suite("[{name: truncated_svd, params: {k: 4.5}}]"),
        "k: expected an integer, got 4.5"),
    row("a float parameter given NaN", suite("[{name: fairalm, params: {lr: .nan}}]"),
        "lr: expected a finite number, got nan"),
    row("a float parameter given a word", suite("[{name: fairalm, params: {lr: fast}}]"),
        "lr: expected a number or a fraction like '5/9', got 'fast'"),
    row("a string parameter given a number", suite("[{name: truncated_svd, params: {layer: 2}}]"),
        "layer: expected a string, got 2"),
    row("a training number given a word", suite(head="train: {epochs: ten}\n"),
        "train.epochs (line 1): epochs: expected an integer, got 'ten'"),
    row("a task option of the wrong type", suite(tasks="[{name: digits, options: {size: big}}]"),
        "size: expected an integer, got 'big'"),
    # values out of range (the methods' own checks)
    row("sparsity rate above 1", suite("[{name: fairlrf, params: {sparsity_rate: 1.5}}]"),
        "sparsity_rate and keep_rate must lie in"),
    row("negative beta", suite("[{name: fairlrf, params: {beta: -0.5}}]"), "beta must be >= 0"),
    row("beta in words", suite("[{name: fairlrf, params: {beta: 'five ninths'}}]"),
        "expected a number or a fraction"),
    row("rank 0", suite("[{name: slr_w, params: {k: 0}}]"), "k must be >= 1"),
    row("a layer the model lacks", suite("[{name: truncated_svd, params: {layer: fc9}}]"), "no layer 'fc9'"),
    row("a rank above the layer's", suite("[{name: truncated_svd, params: {layer: fc2, k: 40}}]"),
        "k=40 exceeds the rank of fc2"),
    # tuning blocks
    row("unequal budgets", suite("[{name: truncated_svd, tune: {trials: 4}}, {name: slr_w, tune: {trials: 9}}]"),
        "different trial budgets [4, 9]"),
    row("unknown sampler", suite("[{name: truncated_svd, tune: true}]",
                                 tail="tuning: {trials: 2, sampler: cmaes}\n"), "unknown sampler 'cmaes'"),
    row("unknown policy", suite("[{name: truncated_svd, tune: true}]",
                                tail="tuning: {trials: 2, policies: [fairest]}\n"), "unknown selection policy"),
    row("swept and tuned", suite("[{name: truncated_svd, tune: true, sweep: {k: [2, 4]}}]",
                                 tail="tuning: {trials: 2}\n"), "either swept or tuned"),

    # -- data --------------------------------------------------------------------------------------
    row("a missing dataset", on("adult"), "dataset file not found"),
    row("COMPAS: an empty file", on("compas"), "compas-scores-two-years.csv: line 1: the file is empty",
        files={"data/compas/compas-scores-two-years.csv": ""}),
    row("COMPAS: a header without rows", on("compas"), "compas-scores-two-years.csv: line 2: no data rows",
        files={"data/compas/compas-scores-two-years.csv": compas_csv(0)}),
    row("COMPAS: a truncated last line", on("compas"),
        "compas-scores-two-years.csv: line 5: expected 15 fields, found 10",
        files={"data/compas/compas-scores-two-years.csv": compas_csv().rsplit(",", 5)[0] + "\n"}),
    row("COMPAS: a line with an extra field", on("compas"),
        "compas-scores-two-years.csv: line 5: expected 15 fields, found 16",
        files={"data/compas/compas-scores-two-years.csv": compas_csv().rstrip("\n") + ",1\n"}),
    row("COMPAS: a word for a number", on("compas"), "line 5: age: expected a number, got 'old'",
        files={"data/compas/compas-scores-two-years.csv": compas_csv(age="old")}),
    row("COMPAS: a broken date", on("compas"), "line 5: c_jail_out: expected a date",
        files={"data/compas/compas-scores-two-years.csv": compas_csv(c_jail_out="2013-08-14 05:")}),
    row("adult: a truncated line", on("adult"), "adult.data: line 2: expected 15 fields, found 7",
        files={"data/adult/adult.data": f"{ADULT}\n{ADULT[:60]}\n{ADULT}\n", "data/adult/adult.test": ADULT + ".\n"}),
    row("adult: bytes that are not text", on("adult"), "adult.test: line 2: not UTF-8 text",
        files={"data/adult/adult.data": ADULT + "\n", "data/adult/adult.test": b"|1x3\n\xff\xfe\x00garbage\n"}),
    row("adult: an empty file", on("adult"), "adult.data: line 1: the file is empty",
        files={"data/adult/adult.data": "", "data/adult/adult.test": ADULT + ".\n"}),
    row("German: a short line", on("german"), "german.data: line 2: expected 21 fields, found 20",
        files={"data/german/german.data": f"{GERMAN}\n{GERMAN.rsplit(' ', 1)[0]}\n"}),
    row("German: a long line", on("german"), "german.data: line 2: expected 21 fields, found 22",
        files={"data/german/german.data": f"{GERMAN}\n{GERMAN} 1\n"}),
    row("German: a word for a number", on("german"), "german.data: line 1: duration: expected a number, got 'six'",
        files={"data/german/german.data": GERMAN.replace(" 6 ", " six ") + "\n"}),
    row("CelebA: an empty attribute file", on("celeba", "{size: 32}", "vgg11_narrow"),
        "list_attr_celeba.txt: line 1: expected the number of images, found nothing", files=celeba("")),
    row("CelebA: a truncated attribute line", on("celeba", "{size: 32}", "vgg11_narrow"),
        "list_attr_celeba.txt: line 4: expected 41 fields, found 13",
        files=celeba(f"2\n{CELEBA_NAMES}\n{celeba_row(1)}\n{celeba_row(2)[:40]}\n")),
    row("CelebA: an attribute value other than 1 or -1", on("celeba", "{size: 32}", "vgg11_narrow"),
        "list_attr_celeba.txt: line 4: Male: expected 1 or -1, got 7",
        files=celeba(f"2\n{CELEBA_NAMES}\n{celeba_row(1)}\n{celeba_row(2, '7')}\n")),
    row("CelebA: a partition that is not a number", on("celeba", "{size: 32}", "vgg11_narrow"),
        "list_eval_partition.txt: line 2: partition: expected a number, got 'valid'",
        files=celeba(f"2\n{CELEBA_NAMES}\n{celeba_row(1)}\n{celeba_row(2)}\n", "000001.jpg 0\n000002.jpg valid\n")),
    row("CelebA: no listed image in the folder", on("celeba", "{size: 32}", "vgg11_narrow"),
        "none of the 2 images listed in list_attr_celeba.txt is in",
        files=celeba(f"2\n{CELEBA_NAMES}\n{celeba_row(1)}\n{celeba_row(2)}\n")),
    row("UTKFace: no image in the folder", on("utkface", "{size: 32}", "vgg11_narrow"), "no UTKFace images",
        files={"data/utkface/UTKFace/": ""}),
    row("Fitzpatrick: an empty CSV", on("fitzpatrick", "{size: 32}", "vgg11_narrow"),
        "fitzpatrick17k.csv: line 1: the file is empty",
        files={"data/fitzpatrick17k/fitzpatrick17k.csv": "", "data/fitzpatrick17k/images/": ""}),
    row("Fitzpatrick: a word for the skin type", on("fitzpatrick", "{size: 32}", "vgg11_narrow"),
        "fitzpatrick17k.csv: line 3: fitzpatrick_scale: expected a number, got 'dark'",
        files={"data/fitzpatrick17k/fitzpatrick17k.csv": FITZ_HEADER + "a0,1,acne,inflammatory,non-neoplastic\n"
               "a1,dark,acne,inflammatory,non-neoplastic\n", "data/fitzpatrick17k/images/": ""}),

    # -- the database, the device ---------------------------------------------------------------
    Row("a database path that is a folder", run(suite())[0][:2] + ["--db", "sqlite:///{tmp}/adir", "--quiet"],
        "adir is a directory", {"s.yaml": suite(), "adir/": ""}),
    Row("a database below a file", run(suite())[0][:2] + ["--db", "sqlite:///{tmp}/file/sub/x.db", "--quiet"],
        "cannot create the database", {"s.yaml": suite(), "file": ""}),
    row("a suite changed since its name was run", suite(head="name: study\nseeds: [0, 1]\ntrain: {epochs: 1}\n"),
        "suite 'study' was run on this database with another definition (seeds has 2 entries here, 1 stored)",
        before=first_version),
    Row("a second process on one SQLite database", ["worker", "{tmp}/s.yaml", "--db", "sqlite:///{tmp}/x.db", "--quiet"],
        "SQLite allows one writer at a time", {"s.yaml": suite()}, before=another_worker),
    row("a database of an older schema", suite(), "uses schema 1", before=old_schema),
    Row("an unreachable PostgreSQL server", ["show", "--db", "postgresql://fairsqueeze@127.0.0.1:9/results"],
        '"127.0.0.1", port 9 failed'),
    Row("show on a database that is not there", ["show", "--db", "sqlite:///{tmp}/none.db"], "there is no database"),
    Row("fronts on a database that is not there", ["fronts", "--db", "sqlite:///{tmp}/none.db"],
        "there is no database"),
    Row("a report of a suite that is not stored", ["report", "nosuch", "--db", "sqlite:///{tmp}/x.db"],
        "there is no database"),
    row("an unknown device", suite(), "expected auto, cpu or cuda", "--device", "tpu"),

    # database errors name the server with the password masked, for every command
    Row("a PostgreSQL password is never echoed (show)", ["show", "--db", "postgresql://fz:SECRET@127.0.0.1:9/results"],
        "postgresql://fz:***@127.0.0.1:9/results: cannot open the database"),
    row("a PostgreSQL password is never echoed (run)", suite(), "postgresql+psycopg://fz:***@127.0.0.1:9/",
        "--db", "postgresql+psycopg://fz:SECRET@127.0.0.1:9/results"),
    Row("a read-only database", ["run", "{tmp}/v1.yaml", "--db", "sqlite:///file:{tmp}/x.db?mode=ro&uri=true", "--quiet"],
        "the database cannot be written", before=first_version),
    row("a dense reference trained for no epoch", suite(head="seeds: [0]\ntrain: {epochs: 0}\n"),
        "epochs must be >= 1 for a dense reference"),

    # -- third pass: inputs that changed the meaning silently, or failed after writing ------------
    row("a top-level key given twice", suite(head="seeds: [0]\nseeds: [1]\ntrain: {epochs: 1}\n"),
        "s.yaml (line 2): key 'seeds' is given twice (lines 1 and 2)"),
    row("a parameter given twice in one mapping", suite("[{name: truncated_svd, params: {k: 4, k: 8}}]"),
        "key 'k' is given twice"),
    row("a negative seed", suite(head="seeds: [-1]\ntrain: {epochs: 1}\n"),
        "seeds[0] (line 1): seed -1 is out of range: seeds lie in 0..4294967295"),
    row("a seed of 10^23", suite(head=f"seeds: [{10 ** 23}]\ntrain: {{epochs: 1}}\n"), "is out of range"),
    row("epochs beyond any machine", suite(head=f"seeds: [0]\ntrain: {{epochs: {10 ** 20}}}\n"),
        "epochs: expected an integer of magnitude below 2**63"),
    row("epochs too many to finish", suite(head="seeds: [0]\ntrain: {epochs: 1000000000}\n"),
        "epochs 1000000000 is more than 100,000"),
    row("a beta that overflows a float", suite("[{name: fairlrf, params: {beta: 1.0e999}}]"),
        "beta: expected a finite number, got '1.0e999'"),
    row("a learning rate that overflows a float", suite(head="seeds: [0]\ntrain: {epochs: 1, lr: 1e400}\n"),
        "lr: expected a finite number, got '1e400'"),
    row("an infinite learning rate", suite(head="seeds: [0]\ntrain: {epochs: 1, lr: .inf}\n"),
        "lr: expected a finite number, got inf"),
    row("an infinite method parameter", suite("[{name: fairalm, params: {lr: -.inf}}]"),
        "lr: expected a finite number, got -inf"),
    row("YAML nested 5,000 deep", "tasks: " + "[" * 5000 + "]" * 5000 + "\n", "nested"),
    row("a NUL byte in the suite file", suite().replace("seeds", "se\0eds"), "s.yaml (line 1): a NUL byte"),
    row("binary bytes for a suite file", b"\x89PNG\r\n\x1a\n\xff\xfe\x00\x00", "not UTF-8 text"),
    row("digits of size 0", suite(tasks="[{name: digits, options: {size: 0}}]"), "size must lie in 1..1024"),
    row("a trial budget beyond any machine", suite("[{name: truncated_svd, tune: true}]",
                                                   tail=f"tuning: {{trials: {10 ** 20}}}\n"),
        "is more than 100,000 trials"),
    row("a negative sampler seed", suite("[{name: truncated_svd, tune: true}]",
                                         tail="tuning: {trials: 2, sampler: {name: tpe, seed: -1}}\n"),
        "tuning.sampler.seed: expected an integer in 0..4294967295, got -1"),
    row("an infinite hidden width", suite(models="[{name: mlp, options: {hidden: [.inf]}}]"),
        "option 'hidden' must list integer widths in 1..100,000"),
    row("a negative split seed", suite(tasks="[{name: digits, options: {split_seed: -1}}]"),
        "split_seed: expected an integer in 0..4294967295, got -1"),
    row("split fractions that are not fractions", suite(tasks="[{name: digits, options: {fractions: [.inf, 0, 0]}}]"),
        "split fractions must lie in [0, 1] and sum to 1"),
    Row("a suite that is a folder", ["run", "{tmp}/adir", "--db", "sqlite:///{tmp}/x.db", "--quiet"],
        "is a folder, not a suite file", {"adir/": ""}),
    row("a suite name of 300 characters", suite(head="name: " + "n" * 300 + "\nseeds: [0]\n"),
        "is 300 characters long; the results database holds at most 128"),
    row("a method label of 300 characters", suite("[{name: dense, label: " + "l" * 300 + "}]"),
        "is 300 characters long; the results database holds at most 256"),

    # -- arguments and the environment: one line, usage only under --help ------------------------
    row("--jobs 0", suite(), "argument --jobs: expected a positive number of processes, got '0'", "--jobs", "0"),
    row("--jobs -1", suite(), "argument --jobs: expected a positive number of processes", "--jobs", "-1"),
    row("FAIRSQUEEZE_JOBS that is no number", suite(), "FAIRSQUEEZE_JOBS='lots': expected a positive number",
        before=lambda tmp: Env("FAIRSQUEEZE_JOBS", "lots")),
    Row("--heartbeat 0", ["worker", "{tmp}/s.yaml", "--db", "sqlite:///{tmp}/x.db", "--heartbeat", "0"],
        "argument --heartbeat: expected a positive number of seconds, got '0'", {"s.yaml": suite()}),
    Row("--heartbeat -5", ["worker", "{tmp}/s.yaml", "--db", "sqlite:///{tmp}/x.db", "--heartbeat", "-5"],
        "expected a positive number of seconds, got '-5'", {"s.yaml": suite()}),
    Row("--split train", ["show", "--db", "sqlite:///{tmp}/x.db", "--split", "train"],
        "argument --split: invalid choice: 'train'"),
    Row("check-plugin with a parameter of the wrong type", ["check-plugin", "truncated_svd", "--params", '{"k": "four"}'],
        "truncated_svd does not conform: FAIL accepts_params"),
    Row("data fetch of a manual dataset", ["data", "fetch", "celeba", "--data-root", "{tmp}/data"],
        "celeba: not fetched"),

    # -- every path the run writes, checked before anything is computed -----------------------------
    row("--timings that is a folder", suite(), "--timings {tmp}/adir: is a folder; expected a file to write",
        "--timings", "{tmp}/adir", files={"adir/": ""}),
    row("--timings below a file", suite(), "is a file, so nothing can be written below it",
        "--timings", "{tmp}/file/t.json", files={"file": ""}),
    row("--timings in /proc", suite(), "--timings /proc/fairsqueeze-timings.json: cannot write in /proc",
        "--timings", "/proc/fairsqueeze-timings.json"),
    row("a cache folder below a file", suite(), "the cache folder ($FAIRSQUEEZE_CACHE or results/cache) {tmp}/file/c:"
        " {tmp}/file is a file", files={"file": ""}, before=lambda tmp: Env("FAIRSQUEEZE_CACHE", f"{tmp}/file/c")),
    Row("report --out below a file", ["report", "nosuch", "--db", "sqlite:///{tmp}/x.db", "--out", "{tmp}/file/r"],
        "is a file, so nothing can be written below it", {"file": ""}),
    Row("report --out in /proc", ["report", "nosuch", "--db", "sqlite:///{tmp}/x.db", "--out", "/proc/fz-report"],
        "--out /proc/fz-report: cannot write in /proc"),
    Row("leaderboard --out that is a file", ["leaderboard", "--db", "sqlite:///{tmp}/x.db", "--out", "{tmp}/file"],
        "--out {tmp}/file: is a file; expected a folder to write", {"file": ""}),
    Row("leaderboard --out in /proc", ["leaderboard", "--db", "sqlite:///{tmp}/x.db", "--out", "/proc/fz-board"],
        "cannot write in /proc"),
    Row("launch with a MySQL database", ["launch", "{tmp}/s.yaml", "--db", "mysql://u@h/db", "--executor", "local"],
        "unsupported database 'mysql'", {"s.yaml": suite()}),
    Row("launch of a suite with a name too long", ["launch", "{tmp}/s.yaml", "--db", "postgresql://u@h/db",
                                                   "--executor", "local"],
        "is 200 characters long; the results database holds at most 128", {"s.yaml": suite(head="name: " + "n" * 200 + "\n")}),
    row("a MySQL database", suite(), "--db mysql://fz:***@127.0.0.1/results: unsupported database 'mysql'",
        "--db", "mysql://fz:SECRET@127.0.0.1/results"),
    row("a database URL that is no URL", suite(), "--db nonsense: not a database URL", "--db", "nonsense"),
]


def tree(folder: Path) -> dict[str, str]:
    """Every file and folder under ``folder`` with a hash of its content."""
    out = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        out[rel] = "<dir>" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def write(folder: Path, files: dict[str, str | bytes]) -> None:
    for rel, content in files.items():
        path = folder / rel
        if rel.endswith("/"):
            path.mkdir(parents=True, exist_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())


def run_main(argv: list[str], monkeypatch, capsys) -> tuple[int, str, list[str]]:
    """``main`` as the command line runs it: its log lines go to stderr (pytest's log capture
    is set aside so ``logging.basicConfig`` installs the same handler the CLI gets), and
    every warning the CLI would print is collected."""
    monkeypatch.setattr(logging.root, "handlers", [])
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        code = main(argv)
    shown = [str(w.message) for w in caught
             if not issubclass(w.category, (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning))]
    return code, capsys.readouterr().err, shown


@pytest.mark.parametrize("case", ROWS, ids=[r.id for r in ROWS])
def test_a_bad_input_is_one_line_and_changes_nothing(case: Row, isolated, monkeypatch, capsys):
    monkeypatch.chdir(isolated)  # default paths (results/...) land here, where they would be seen
    write(isolated, case.files)
    held = case.before(isolated) if case.before else None
    before = tree(isolated)
    code, err, shown = run_main([a.replace("{tmp}", str(isolated)) for a in case.argv], monkeypatch, capsys)
    if hasattr(held, "close"):
        held.close()
    assert code != 0
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and not shown, (err, shown)
    assert case.expect.replace("{tmp}", str(isolated)) in err, err
    assert "SECRET" not in err  # a password in a URL is never echoed
    after = {k: v for k, v in tree(isolated).items() if not (case.leaves and fnmatch.fnmatch(k, case.leaves))}
    assert {k: v for k, v in after.items() if before.get(k) != v} == {}  # nothing created or changed
    assert after == before  # nothing removed


def test_the_real_command_line_gives_the_same_line(isolated, monkeypatch, capsys):
    case = next(r for r in ROWS if r.id == "duplicate seeds")
    write(isolated, case.files)
    argv = [a.replace("{tmp}", str(isolated)) for a in case.argv]
    done = subprocess.run([sys.executable, "-m", "fairsqueeze.cli.main", *argv], capture_output=True, text=True,
                          cwd=isolated, env={**os.environ, "FAIRSQUEEZE_CACHE": str(isolated / "cache")}, timeout=300)
    code, err, _ = run_main(argv, monkeypatch, capsys)
    assert (done.returncode, done.stderr) == (code, err) == (2, done.stderr)
    assert case.expect in done.stderr and not (isolated / "x.db").exists()
