"""The results store: one SQLAlchemy database (SQLite file by default, PostgreSQL by URL).

Tables:
- ``runs``: one row per computation, keyed by the hash of everything that determines it
  (task, data fingerprint, model, training config, seed, method, resolved parameters); its
  configuration, hashes, status (running / done / failed), timings, error and flags
  (``degenerate``, ``no_effect``). A run row never names a suite: one computation can
  serve many suites and labels.
- ``members``: (suite, task key, model, label, seed) -> run key: which computation a suite
  entry currently shows. Tables, reports and leaderboards select through it.
- ``suites``: the definition of every suite that was run and its hash; a previous definition
  that the user replaced (``--redefine``) keeps its membership as suite ``NAME@vN``.
- ``meta``: the schema version; a database written by another version is refused.
- ``metrics``: (run, split, name) -> value; NaN is stored as NULL.
- ``footprint``: (run, name) -> value (parameter counts, bytes, compression ratio, latency).
- ``predictions``: (run, split) -> per-example arrays (row id, y, y_pred, s) as a compressed blob.
- ``tasks``: (task key) -> the task's summary (sizes, group counts, split hash).
- ``dense``: (dense key) -> the dense reference's training history and bias card.
A finished run is written in one transaction, so a crash never leaves half a result.
"""
from __future__ import annotations

import io
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
from sqlalchemy import (
    Column,
    inspect,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    delete,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from .errors import FairsqueezeError
from .hashing import config_hash

DEFAULT_URL = "sqlite:///results/fairsqueeze.db"
SCHEMA_VERSION = "2"

meta = MetaData()

schema = Table(
    "meta",
    meta,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

runs = Table(
    "runs",
    meta,
    Column("key", String(64), primary_key=True),
    Column("task", String(128), nullable=False),
    Column("task_key", String(64), nullable=False),
    Column("task_label", String(512), nullable=False),
    Column("model", String(128), nullable=False),
    Column("method", String(128), nullable=False),
    Column("params", Text, nullable=False),
    Column("seed", Integer, nullable=False),
    Column("config", Text, nullable=False),
    Column("split_hash", String(64), nullable=False),
    Column("data_hash", String(64), nullable=False),
    Column("dense_hash", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    Column("flags", Text),
    Column("error", Text),
    Column("started_at", Float),
    Column("finished_at", Float),
    Column("timings", Text),
    Column("info", Text),
)

members = Table(
    "members",
    meta,
    Column("suite", String(128), primary_key=True),
    Column("task_key", String(64), primary_key=True),
    Column("model", String(128), primary_key=True),
    Column("label", String(256), primary_key=True),
    Column("seed", Integer, primary_key=True),
    Column("run_key", String(64), nullable=False),  # no foreign key: a member may point at a run not started yet
    Column("entry", Integer, nullable=False),
    Column("entry_label", String(256), nullable=False),
    Column("sweep", Text, nullable=False),
)

suites = Table(
    "suites",
    meta,
    Column("name", String(128), primary_key=True),
    Column("description", Text),
    Column("source", Text),
    Column("definition", Text, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("definition_hash", String(64)),  # of the resolved definition: a changed suite is refused
)

metrics = Table(
    "metrics",
    meta,
    Column("run_key", String(64), ForeignKey("runs.key"), primary_key=True),
    Column("split", String(16), primary_key=True),
    Column("name", String(128), primary_key=True),
    Column("value", Float),
)

footprint = Table(
    "footprint",
    meta,
    Column("run_key", String(64), ForeignKey("runs.key"), primary_key=True),
    Column("name", String(128), primary_key=True),
    Column("value", Float),
)

predictions = Table(
    "predictions",
    meta,
    Column("run_key", String(64), ForeignKey("runs.key"), primary_key=True),
    Column("split", String(16), primary_key=True),
    Column("data", LargeBinary, nullable=False),
)

tasks = Table(
    "tasks",
    meta,
    Column("key", String(64), primary_key=True),
    Column("name", String(128), nullable=False),
    Column("summary", Text, nullable=False),
)

dense = Table(
    "dense",
    meta,
    Column("key", String(64), primary_key=True),
    Column("task_key", String(64), nullable=False),
    Column("task", String(128), nullable=False),
    Column("model", String(128), nullable=False),
    Column("seed", Integer, nullable=False),
    Column("history", Text),
    Column("bias_card", Text),
)


def _num(value: float) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value


def _pack(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def _unpack(blob: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(blob)) as data:
        return {k: data[k] for k in data.files}


@dataclass
class RunResult:
    """Everything written when a run finishes."""

    metrics: dict[str, dict[str, float]]  # split -> name -> value
    footprint: dict[str, float]
    predictions: dict[str, dict[str, np.ndarray]]  # split -> arrays
    timings: dict[str, float]
    info: dict[str, Any]
    flags: list[str] = field(default_factory=list)


class StoreError(FairsqueezeError):
    """The database cannot be opened or was written by another schema version."""


def _definition_text(definition: dict[str, Any]) -> str:
    return json.dumps(definition, sort_keys=True, default=str)


def _definition_hash(encoded: str) -> str:
    return config_hash(json.loads(encoded))


def _first_difference(stored: Any, new: Any, path: str = "") -> str:
    """The first key path where two decoded definitions differ, with both values."""
    if isinstance(stored, dict) and isinstance(new, dict):
        for key in sorted(set(stored) | set(new), key=lambda k: (k in _DERIVED, k)):
            if stored.get(key, _ABSENT) != new.get(key, _ABSENT):
                return _first_difference(stored.get(key, _ABSENT), new.get(key, _ABSENT), f"{path}.{key}".lstrip("."))
    elif isinstance(stored, list) and isinstance(new, list):
        for i, (a, b) in enumerate(zip(stored, new)):
            if a != b:
                return _first_difference(a, b, f"{path}[{i}]")
        if len(stored) != len(new):
            return f"{path or '<top>'} has {len(new)} entries here, {len(stored)} stored"
    shown = {id(_ABSENT): "nothing"}
    return f"{path or '<top>'} is {shown.get(id(new), repr(new))} here, {shown.get(id(stored), repr(stored))} stored"


_ABSENT = object()
_DERIVED = {"label", "entry_label"}  # follow from params: name the param that changed instead


def _add_definition_hash(engine: Engine) -> None:
    """A database written before suites had a definition hash gets the (empty) column."""
    if "definition_hash" not in {c["name"] for c in inspect(engine).get_columns(suites.name)}:
        with engine.begin() as conn:
            conn.execute(text("ALTER TABLE suites ADD COLUMN definition_hash VARCHAR(64)"))


def _sqlite_path(url: str) -> Path | None:
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        return Path(url.removeprefix("sqlite:///"))
    return None


class Store:
    """The results database. ``read_only`` opens an existing one to read and creates nothing
    (no file, folder or table): reports and listings never change what they read."""

    def __init__(self, url: str = DEFAULT_URL, read_only: bool = False):
        self.url = url
        path = _sqlite_path(url)
        try:
            if path is not None:
                if path.is_dir():
                    raise StoreError(f"--db {url}: {path} is a directory, not a database file")
                if read_only and not path.is_file():
                    raise StoreError(f"--db {url}: there is no database at {path}")
                if not read_only:
                    path.parent.mkdir(parents=True, exist_ok=True)
            self.engine: Engine = create_engine(url)
            self._check_schema()
            if read_only:
                if not inspect(self.engine).has_table(schema.name):
                    raise StoreError(f"--db {url}: the database holds no fairsqueeze results")
                return
            meta.create_all(self.engine)
            _add_definition_hash(self.engine)
            with self.engine.begin() as conn:
                if conn.execute(select(schema.c.value).where(schema.c.key == "schema_version")).scalar() is None:
                    conn.execute(insert(schema).values(key="schema_version", value=SCHEMA_VERSION))
        except OSError as exc:
            raise StoreError(f"--db {url}: cannot create the database: {exc.strerror or exc}") from None
        except SQLAlchemyError as exc:
            reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
            raise StoreError(f"--db {url}: cannot open the database: {reason}") from None

    def _check_schema(self) -> None:
        """Refuse a database written by another schema version: never mix two key definitions."""
        tables = set(inspect(self.engine).get_table_names())
        if not tables:
            return
        version = None
        if "meta" in tables:
            with self.engine.connect() as conn:
                version = conn.execute(select(schema.c.value).where(schema.c.key == "schema_version")).scalar()
        if version != SCHEMA_VERSION:
            where = _sqlite_path(self.url) or self.url
            raise StoreError(
                f"results database {where} uses schema {version or 1}, this fairsqueeze writes schema "
                f"{SCHEMA_VERSION} (run keys now include the data fingerprint and suites point at runs "
                f"through a membership table): move it aside (e.g. mv {where} {where}.v{version or 1}) "
                "or pass another --db; its runs will be recomputed"
            )

    # -- suites and membership -----------------------------------------------------------
    def put_suite(self, name: str, description: str, source: str, definition: dict[str, Any]) -> None:
        encoded = _definition_text(definition)
        values = {"name": name, "description": description, "source": source, "definition": encoded,
                  "definition_hash": _definition_hash(encoded), "updated_at": time.time()}
        with self.engine.begin() as conn:
            conn.execute(delete(suites).where(suites.c.name == name))
            conn.execute(insert(suites).values(**values))

    def check_definition(self, name: str, definition: dict[str, Any], redefine: bool = False) -> str | None:
        """Refuse a definition of suite ``name`` that differs from the stored one, naming the
        first differing key, so two versions never mix under one name. With ``redefine`` the
        stored membership moves to suite ``NAME@vN`` (the previous version, still readable) and
        the new definition is recorded; returns that name. The first definition of a name is
        recorded at once, so a worker started a moment later with another one is refused. A
        suite stored before definitions had a hash takes the definition it is run with now
        (its stored one was written in an older shape and cannot be compared)."""
        encoded = _definition_text(definition)
        digest = _definition_hash(encoded)
        for _ in range(2):  # a second pass after losing an insert race to another process
            try:
                with self.engine.begin() as conn:
                    row = conn.execute(select(suites).where(suites.c.name == name)).first()
                    if row is None:
                        conn.execute(insert(suites).values(name=name, definition=encoded, definition_hash=digest,
                                                           updated_at=time.time()))
                        return None
                    if row.definition_hash is None or row.definition_hash == digest:
                        if row.definition_hash is None:
                            conn.execute(update(suites).where(suites.c.name == name)
                                         .values(definition=encoded, definition_hash=digest))
                        return None
                    where = _first_difference(json.loads(row.definition), json.loads(encoded))
                    if not redefine:
                        raise StoreError(
                            f"suite {name!r} was run on this database with another definition ({where}); give this one"
                            " another name, or pass --redefine to record it (the runs of the stored one stay"
                            f" visible as a previous version, suite {name}@vN)")
                    taken = {r[0] for r in conn.execute(select(suites.c.name).where(suites.c.name.like(f"{name}@v%")))}
                    previous = next(f"{name}@v{n}" for n in range(1, len(taken) + 2) if f"{name}@v{n}" not in taken)
                    conn.execute(insert(suites).values({**row._asdict(), "name": previous}))
                    conn.execute(update(members).where(members.c.suite == name).values(suite=previous))
                    conn.execute(update(suites).where(suites.c.name == name)
                                 .values(definition=encoded, definition_hash=digest, updated_at=time.time()))
                    return previous
            except IntegrityError:
                continue
        raise StoreError(f"suite {name!r}: its definition is being written by another process; start again")

    def set_members(self, suite: str, rows: list[dict[str, Any]], keep_tasks: Iterable[str] = ()) -> None:
        """Make ``rows`` the suite's membership, in one transaction.

        Each row: task_key, model, label, seed, run_key, entry, entry_label, sweep. Earlier
        members of the suite are replaced, except those of tasks in ``keep_tasks`` (tasks
        skipped this time, e.g. for missing data, keep what they showed before).
        """
        keep = set(keep_tasks)
        with self.engine.begin() as conn:
            query = delete(members).where(members.c.suite == suite)
            if keep:
                query = query.where(members.c.task_key.not_in(keep))
            conn.execute(query)
            if rows:
                conn.execute(insert(members), [{**r, "suite": suite, "sweep": json.dumps(r["sweep"], sort_keys=True,
                                                                                           default=str)} for r in rows])

    def members_frame(self, suite: str | None = None) -> pd.DataFrame:
        query = select(members)
        if suite is not None:
            query = query.where(members.c.suite == suite)
        with self.engine.connect() as conn:
            frame = pd.read_sql(query, conn)
        frame["sweep"] = frame["sweep"].map(json.loads)
        return frame

    def suite_names(self) -> list[str]:
        with self.engine.connect() as conn:
            return sorted(r[0] for r in conn.execute(select(members.c.suite).distinct()))

    def suites_frame(self) -> pd.DataFrame:
        with self.engine.connect() as conn:
            frame = pd.read_sql(select(suites), conn)
        frame["definition"] = frame["definition"].map(json.loads)
        return frame

    # -- runs -------------------------------------------------------------------------
    def start_run(self, key: str, row: dict[str, Any]) -> None:
        """Mark ``key`` as running, replacing any earlier failed or interrupted attempt."""
        values = {**row, "key": key, "status": "running", "error": None, "flags": None, "started_at": time.time()}
        values["params"] = json.dumps(values["params"], sort_keys=True)
        values["config"] = json.dumps(values["config"], sort_keys=True, default=str)
        with self.engine.begin() as conn:
            self._clear(conn, key)
            conn.execute(insert(runs).values(**values))

    def _clear(self, conn, key: str) -> None:
        for table in (metrics, footprint, predictions):
            conn.execute(delete(table).where(table.c.run_key == key))
        conn.execute(delete(runs).where(runs.c.key == key))

    def finish_run(self, key: str, result: RunResult) -> None:
        with self.engine.begin() as conn:
            rows = [
                {"run_key": key, "split": split, "name": name, "value": _num(v)}
                for split, values in result.metrics.items()
                for name, v in values.items()
            ]
            if rows:
                conn.execute(insert(metrics), rows)
            fp = [{"run_key": key, "name": n, "value": _num(v)} for n, v in result.footprint.items()]
            if fp:
                conn.execute(insert(footprint), fp)
            for split, arrays in result.predictions.items():
                conn.execute(insert(predictions).values(run_key=key, split=split, data=_pack(arrays)))
            conn.execute(
                update(runs)
                .where(runs.c.key == key)
                .values(
                    status="done",
                    finished_at=time.time(),
                    flags=json.dumps(sorted(result.flags)),
                    timings=json.dumps(result.timings),
                    info=json.dumps(result.info, default=str),
                )
            )

    def fail_run(self, key: str, error: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(runs).where(runs.c.key == key).values(status="failed", error=error, finished_at=time.time())
            )

    # -- tasks ------------------------------------------------------------------------
    def put_task(self, key: str, name: str, summary: dict[str, Any]) -> None:
        with self.engine.begin() as conn:
            conn.execute(delete(tasks).where(tasks.c.key == key))
            conn.execute(insert(tasks).values(key=key, name=name, summary=json.dumps(summary, default=str)))

    def task_summaries(self) -> dict[str, dict[str, Any]]:
        with self.engine.connect() as conn:
            return {r.key: json.loads(r.summary) for r in conn.execute(select(tasks))}

    def task_summary(self, key: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            found = conn.execute(select(tasks.c.summary).where(tasks.c.key == key)).scalar()
        return json.loads(found) if found else None

    def put_dense(self, key: str, row: dict[str, Any]) -> None:
        values = {**row, "key": key}
        for field in ("history", "bias_card"):
            values[field] = json.dumps(values.get(field), default=str)
        with self.engine.begin() as conn:
            conn.execute(delete(dense).where(dense.c.key == key))
            conn.execute(insert(dense).values(**values))

    def dense_frame(self) -> pd.DataFrame:
        with self.engine.connect() as conn:
            frame = pd.read_sql(select(dense), conn)
        for field in ("history", "bias_card"):
            frame[field] = frame[field].map(lambda v: json.loads(v) if v else None)
        return frame

    # -- reading ----------------------------------------------------------------------
    def runs_frame(self, status: str | None = None, keys: Iterable[str] | None = None) -> pd.DataFrame:
        """Run rows; ``params``, ``config``, ``timings``, ``info`` and ``flags`` decoded from JSON."""
        query = select(runs)
        if status:
            query = query.where(runs.c.status == status)
        if keys is not None:
            query = query.where(runs.c.key.in_(list(keys)))
        with self.engine.connect() as conn:
            frame = pd.read_sql(query, conn)
        for column, empty in (("params", {}), ("config", {}), ("timings", {}), ("info", {}), ("flags", [])):
            frame[column] = frame[column].map(lambda v, e=empty: json.loads(v) if isinstance(v, str) and v else type(e)())
        return frame

    def metrics_frame(self, split: str | None = None, keys: Iterable[str] | None = None) -> pd.DataFrame:
        query = select(metrics)
        if split:
            query = query.where(metrics.c.split == split)
        if keys is not None:
            query = query.where(metrics.c.run_key.in_(list(keys)))
        with self.engine.connect() as conn:
            return pd.read_sql(query, conn)

    def footprint_frame(self, keys: Iterable[str] | None = None) -> pd.DataFrame:
        query = select(footprint)
        if keys is not None:
            query = query.where(footprint.c.run_key.in_(list(keys)))
        with self.engine.connect() as conn:
            return pd.read_sql(query, conn)

    def predictions(self, key: str, split: str) -> dict[str, np.ndarray]:
        with self.engine.connect() as conn:
            blob = conn.execute(
                select(predictions.c.data).where(predictions.c.run_key == key, predictions.c.split == split)
            ).scalar()
        if blob is None:
            raise KeyError(f"no predictions for run {key} on {split}")
        return _unpack(blob)

    def predictions_many(self, keys: Iterable[str], split: str, chunk: int = 500) -> dict[str, dict[str, np.ndarray]]:
        """Stored predictions of many runs on ``split``, a few hundred runs per query (the
        pages read thousands; one query each would cost more than the data). Runs without
        predictions are left out of the result."""
        keys, found = list(keys), {}
        with self.engine.connect() as conn:
            for i in range(0, len(keys), chunk):
                query = select(predictions.c.run_key, predictions.c.data).where(
                    predictions.c.run_key.in_(keys[i:i + chunk]), predictions.c.split == split)
                found.update((key, _unpack(blob)) for key, blob in conn.execute(query))
        return found

    def keys_with_status(self, keys: Iterable[str], status: str) -> set[str]:
        keys = list(keys)
        with self.engine.connect() as conn:
            found = conn.execute(select(runs.c.key).where(runs.c.key.in_(keys), runs.c.status == status))
            return {r[0] for r in found}
