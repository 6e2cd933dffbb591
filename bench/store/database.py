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
- ``work_items``: (run key or study name) -> its lease (holder, expiry) and last failure:
  how workers share a suite (see :meth:`Store.claim`).
- ``trial_slots``: (study, slot) -> state and attempts of each trial position of a study;
  starting a trial inserts its slot only while the study lacks complete trials, in one
  statement, so no interleaving of workers can overrun a budget.
- ``selections``: (study, policy) -> the trial a selection policy chose.
Optuna's own tables live in the same database (:meth:`Store.optuna_storage`).
A finished run is written in one transaction, so a crash never leaves half a result.
"""
from __future__ import annotations

import contextlib
import functools
import fcntl
import io
import json
import math
import os
import random
import re
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

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
    event,
    func,
    literal,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.pool import NullPool

from fairsqueeze.core.errors import FairsqueezeError
from fairsqueeze.core.hashing import config_hash

DEFAULT_URL = "sqlite:///results/fairsqueeze.db"
DB_LOCK_KEY = 0x66737164  # PostgreSQL advisory-lock id of Store.lock
SCHEMA_VERSION = "3"

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
    Column("family", String(64)),  # the method's family, so pages need no plugin
    Column("method_order", Integer),  # the method's registry position (colour order)
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

work_items = Table(
    "work_items",
    meta,
    Column("key", String(512), primary_key=True),  # a run key or a study name
    Column("kind", String(8), nullable=False),  # run | study
    Column("holder", String(128)),  # the worker holding the lease, None when free
    Column("expires_at", Float),  # the lease ends then unless its holder renews it
    Column("claimed_at", Float),  # when the holder took it (how long it has been running)
    Column("failed_at", Float),  # the last attempt raised at this time
)

trial_slots = Table(
    "trial_slots",
    meta,
    Column("study", String(512), primary_key=True),
    Column("slot", Integer, primary_key=True),  # the trial's position: its seeds derive from it
    Column("state", String(16), nullable=False),  # running | complete | failed | abandoned
    Column("attempts", Integer, nullable=False),
    Column("trial", Integer),  # the Optuna trial number of the latest attempt
)

selections = Table(
    "selections",
    meta,
    Column("study", String(512), primary_key=True),
    Column("policy", String(128), primary_key=True),
    Column("suite", String(128), nullable=False),
    Column("label", String(512), nullable=False),  # the selected run's label in the suite
    Column("trial", Integer),  # None: no trial qualified
    Column("params", Text),
    Column("run_key", String(64)),
    Column("method_seed", Integer),  # the selected trial's method seed
    Column("trials", Integer, nullable=False),  # the study's budget
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


def _sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL (query options such as ``?mode=ro`` left out)."""
    if not url.startswith("sqlite:///"):
        return None
    database = url.removeprefix("sqlite:///").split("?", 1)[0]
    if database in ("", ":memory:"):
        return None
    return Path(database.removeprefix("file:"))


BACKENDS = ("sqlite", "postgresql")


def check_url(url: str) -> None:
    """Refuse, in one line, a URL that is no database URL or names a backend the store does
    not support (before any driver is imported or anything is created)."""
    try:
        backend = make_url(url).get_backend_name()
    except Exception:
        raise StoreError(f"--db {masked(url)}: not a database URL; expected sqlite:///PATH or"
                         " postgresql://USER@HOST/DBNAME") from None
    if backend not in BACKENDS:
        raise StoreError(f"--db {masked(url)}: unsupported database {backend!r}; fairsqueeze stores results in SQLite"
                         " (sqlite:///PATH) or PostgreSQL (postgresql://USER@HOST/DBNAME)")


def check_names(suite) -> None:
    """Refuse, in one line, a suite whose names would not fit the store's columns on every
    backend (SQLite takes any length; PostgreSQL refuses a longer one only once tables exist)."""
    limits = [("suite name", suite.name, suites.c.name)]
    limits += [("task", t.name, tasks.c.name) for t in suite.tasks]
    limits += [("model", m.label, members.c.model) for m in suite.models]
    limits += [("method", m.name, runs.c.method) for m in suite.methods]
    limits += [("method label", m.label, members.c.label) for m in suite.methods]
    for what, name, column in limits:
        if column is not None and len(name) > column.type.length:
            raise StoreError(f"{what} {name[:40]!r}... is {len(name)} characters long; the results database holds at"
                             f" most {column.type.length}")


def masked(url: str) -> str:
    """The URL with its password replaced by ``***`` (never echo a secret)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy parses: show it without anything after a colon before '@'
        return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)


def database_error(url: str, exc: BaseException, doing: str = "use") -> StoreError:
    """A database error as one line naming the database (password masked) and the reason."""
    reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    reason = reason[0] if reason else type(exc).__name__
    try:
        secret = make_url(url).password
    except Exception:
        secret = None
    if secret:
        reason = reason.replace(str(secret), "***")
    if "readonly database" in reason or "read-only" in reason:
        return StoreError(f"--db {masked(url)}: the database cannot be written (it is read-only): {reason}")
    return StoreError(f"--db {masked(url)}: cannot {doing} the database: {reason}")


def is_database_error(exc: BaseException) -> bool:
    """An error of the database or its driver (including Optuna's storage wrapping one)."""
    import sqlite3

    if isinstance(exc, (SQLAlchemyError, sqlite3.Error)):
        return True
    kind = type(exc)
    return kind.__module__.startswith(("psycopg", "optuna.exceptions")) and kind.__name__ != "DuplicatedStudyError"


_SERVER_ENGINES: "weakref.WeakSet[Engine]" = weakref.WeakSet()  # this process's engines on a server
_LAST_IDLE = -math.inf  # when Store.idle last closed this process's server connections (monotonic)


def _close_idle(keep: Engine | None = None) -> None:
    """Close the connections this process keeps idle on its server engines (those checked out
    stay): a process that waits holds none that another may need."""
    for engine in list(_SERVER_ENGINES):
        if engine is not keep:
            engine.dispose()


def _connect_with_retry(engine: Engine) -> None:
    """A PostgreSQL server at its connection limit refuses a connection: close this process's
    idle connections, wait and retry (workers hold connections only for their bookkeeping, so
    a slot frees up soon)."""
    _SERVER_ENGINES.add(engine)

    @event.listens_for(engine, "do_connect")
    def connect(dialect, _record, cargs, cparams):
        return _retrying_connect(dialect, cargs, cparams, engine)


def _retrying_connect(dialect, cargs, cparams, engine: Engine | None = None, attempts: int = 60):
    for attempt in range(attempts):
        try:
            return dialect.loaded_dbapi.connect(*cargs, **cparams)
        except dialect.loaded_dbapi.OperationalError as exc:
            if not any(m in str(exc) for m in ("too many clients", "connection slots are reserved")) \
                    or attempt == attempts - 1:
                raise
            _close_idle(keep=engine)
            time.sleep(min(0.05 * 2 ** attempt, 1.0) * (0.5 + random.random()))


class Store:
    """The results database. ``read_only`` opens an existing one to read and creates nothing
    (no file, folder or table): reports and listings never change what they read."""

    def __init__(self, url: str = DEFAULT_URL, read_only: bool = False):
        self.url = url
        check_url(url)
        path = _sqlite_path(url)
        shown = masked(url)
        try:
            if path is not None:
                if path.is_dir():
                    raise StoreError(f"--db {shown}: {path} is a directory, not a database file")
                if read_only and not path.is_file():
                    raise StoreError(f"--db {shown}: there is no database at {path}")
                if not read_only:
                    path.parent.mkdir(parents=True, exist_ok=True)
            self.engine: Engine = create_engine(url, **self.engine_kwargs)
            if self.engine.dialect.name == "postgresql":
                _connect_with_retry(self.engine)
            if read_only:
                self._check_schema()
                if not inspect(self.engine).has_table(schema.name):
                    raise StoreError(f"--db {shown}: the database holds no fairsqueeze results")
                return
            # workers started together create the tables one at a time; the version is read
            # under the same lock, never from tables another worker is still creating
            with self.lock():
                self._check_schema()
                meta.create_all(self.engine)
                with self.engine.begin() as conn:
                    if conn.execute(select(schema.c.value).where(schema.c.key == "schema_version")).scalar() is None:
                        conn.execute(insert(schema).values(key="schema_version", value=SCHEMA_VERSION))
                    # a write probe: a read-only database is refused now, not after a computation
                    conn.execute(update(schema).where(schema.c.key == "schema_version").values(value=SCHEMA_VERSION))
        except OSError as exc:
            raise StoreError(f"--db {shown}: cannot create the database: {exc.strerror or exc}") from None
        except SQLAlchemyError as exc:
            raise database_error(url, exc, "open") from None
        except ImportError as exc:  # e.g. postgresql+pg8000:// without that driver
            raise StoreError(f"--db {shown}: the database driver is not installed ({exc.name or exc}); use"
                             " postgresql+psycopg://") from None

    @property
    def engine_kwargs(self) -> dict[str, Any]:
        """How every engine on this database is made (the store's and Optuna's). On a server, a
        process keeps one connection open between the queries of its bookkeeping (a connection
        per query costs a server process each: a trial makes dozens) and closes it before it
        computes or waits (:meth:`idle`), so many workers share a server's connection limit."""
        return {} if self.url.startswith("sqlite") else {"pool_size": 1, "max_overflow": 2}

    def idle(self, unless_within: float = 0.0) -> None:
        """Close the connections this process keeps open to a server (the store's and Optuna's):
        called before a computation or a wait. ``unless_within``: keep them when this process
        closed its connections less than that many seconds ago (a series of short trials
        reconnects once per interval, not once per trial)."""
        global _LAST_IDLE
        if self.engine.dialect.name != "postgresql":
            return
        now = time.monotonic()
        if now - _LAST_IDLE >= unless_within:
            _close_idle()
            _LAST_IDLE = now

    @functools.cached_property
    def _heartbeat_engine(self) -> Engine:
        """Lease renewals come from a background thread every few seconds while the worker
        computes: each opens its own short connection and keeps none."""
        if self.engine.dialect.name != "postgresql":
            return self.engine
        engine = create_engine(self.url, poolclass=NullPool)
        _connect_with_retry(engine)
        return engine

    def optuna_storage(self):
        """Optuna's RDB storage on this database, its engine made like the store's."""
        import optuna

        if self.engine.dialect.name != "postgresql":
            return optuna.storages.RDBStorage(self.url, engine_kwargs=self.engine_kwargs)
        # Optuna connects while its storage is made: its connections come from a creator that
        # retries at the server's limit, as the store's do
        dialect = self.engine.dialect
        cargs, cparams = dialect.create_connect_args(self.engine.url)
        creator = functools.partial(_retrying_connect, dialect, cargs, cparams)
        storage = optuna.storages.RDBStorage(self.url, engine_kwargs={**self.engine_kwargs, "creator": creator})
        _SERVER_ENGINES.add(storage.engine)
        return storage

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """One process at a time in the block on PostgreSQL (a session advisory lock): workers
        that start together create tables and replace a suite's membership in turn. Elsewhere
        a no-op (SQLite has one writing process, see :func:`sqlite_single_writer`)."""
        if self.engine.dialect.name != "postgresql":
            yield
            return
        # waiters poll on short connections instead of queueing on the lock with one open each:
        # many workers starting together must not fill the server's connection slots
        delay = 0.02
        while True:
            conn = self.engine.connect()
            if conn.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": DB_LOCK_KEY}).scalar():
                conn.commit()
                break
            conn.close()
            _close_idle()  # a waiter keeps no connection: the holder may need one
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 0.5)
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": DB_LOCK_KEY})
            conn.commit()
            conn.close()

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
                f"{SCHEMA_VERSION} (runs now record their method's family and a selected run its trial's "
                f"seed; work items are leases): move it aside (e.g. mv {where} {where}.v{version or 1}) "
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
        """Mark ``key`` as running, replacing any earlier failed or interrupted attempt
        (``row["started_at"]``, when given, is when its computation began)."""
        values = {"started_at": time.time(), **row, "key": key, "status": "running", "error": None, "flags": None}
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
        with contextlib.suppress(IntegrityError), self.engine.begin() as conn:  # another worker wrote it first
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

    # -- work: leases ---------------------------------------------------------------------
    # A claim is a lease: (holder, expiry) on the item's row, taken or renewed in one short
    # UPDATE that succeeds only when the row is free, expired or already the holder's. Nobody
    # keeps a transaction or a connection open while computing; a dead worker's lease expires
    # and the next worker takes the item over.

    def ensure_work(self, items: dict[str, str]) -> None:
        """Insert the missing (key -> kind) rows; a concurrent insert of the same key is harmless."""
        for _ in range(3):
            with self.engine.connect() as conn:
                have = {r[0] for r in conn.execute(select(work_items.c.key).where(work_items.c.key.in_(list(items))))}
            missing = [{"key": k, "kind": v} for k, v in items.items() if k not in have]
            if not missing:
                return
            try:
                with self.engine.begin() as conn:
                    conn.execute(insert(work_items), missing)
                return
            except IntegrityError:  # another worker inserted some of them first: read again
                continue

    def claim(self, key: str, holder: str, lease_s: float, failed_before: float | None = None) -> bool:
        """Take the lease on ``key`` for ``lease_s`` seconds; False when another holder's lease is
        live, or when the item failed at or after ``failed_before`` (a failure is retried by a
        later worker session, not in a loop by the same one)."""
        now = time.time()
        query = update(work_items).where(work_items.c.key == key)
        if self.engine.dialect.name != "sqlite":  # SQLite has one writing process: any other holder is gone
            query = query.where(or_(work_items.c.holder.is_(None), work_items.c.expires_at < now,
                                    work_items.c.holder == holder))
        if failed_before is not None:
            query = query.where(or_(work_items.c.failed_at.is_(None), work_items.c.failed_at < failed_before))
        with self.engine.begin() as conn:
            return conn.execute(query.values(holder=holder, expires_at=now + lease_s, claimed_at=now)).rowcount == 1

    def renew(self, key: str, holder: str, lease_s: float) -> bool:
        """Extend a held lease; False when it was lost (expired and taken over)."""
        with self._heartbeat_engine.begin() as conn:
            found = conn.execute(update(work_items).where(work_items.c.key == key, work_items.c.holder == holder)
                                 .values(expires_at=time.time() + lease_s))
            return found.rowcount == 1

    def release(self, key: str, holder: str, failed: bool = False) -> None:
        values = {"holder": None, "expires_at": None, "claimed_at": None}
        if failed:
            values["failed_at"] = time.time()
        with self.engine.begin() as conn:
            conn.execute(update(work_items).where(work_items.c.key == key, work_items.c.holder == holder).values(**values))

    def failed_since(self, key: str, since: float) -> bool:
        with self.engine.connect() as conn:
            failed_at = conn.execute(select(work_items.c.failed_at).where(work_items.c.key == key)).scalar()
        return failed_at is not None and failed_at >= since

    def work_frame(self) -> pd.DataFrame:
        with self.engine.connect() as conn:
            return pd.read_sql(select(work_items), conn)

    # -- trial slots ------------------------------------------------------------------------
    def slots(self, study: str) -> pd.DataFrame:
        # read once per trial: the rows as pandas.read_sql frames them, without its own queries
        with self.engine.connect() as conn:
            result = conn.execute(select(trial_slots).where(trial_slots.c.study == study).order_by(trial_slots.c.slot))
            return pd.DataFrame.from_records(result.all(), columns=list(result.keys()), coerce_float=True)

    def start_slot(self, study: str, slot: int, budget: int) -> bool:
        """Start a new trial position, in one statement: only while the study has fewer than
        ``budget`` complete or running slots, and only once (primary key). False otherwise."""
        live = select(trial_slots.c.slot).where(trial_slots.c.study == study,
                                                trial_slots.c.state.in_(("complete", "running"))).subquery()
        count = select(func.count()).select_from(live).scalar_subquery()
        rows = select(literal(study), literal(slot), literal("running"), literal(1)).where(count < budget)
        try:
            with self.engine.begin() as conn:
                started = insert(trial_slots).from_select(["study", "slot", "state", "attempts"], rows)
                return conn.execute(started.returning(trial_slots.c.slot)).first() is not None
        except IntegrityError:
            return False

    def retry_slot(self, study: str, slot: int, max_attempts: int) -> bool:
        """Start another attempt of a failed slot; False once it had ``max_attempts``."""
        with self.engine.begin() as conn:
            found = conn.execute(update(trial_slots).where(
                trial_slots.c.study == study, trial_slots.c.slot == slot, trial_slots.c.state == "failed",
                trial_slots.c.attempts < max_attempts).values(state="running", attempts=trial_slots.c.attempts + 1))
            return found.rowcount == 1

    def set_slot(self, study: str, slot: int, state: str, trial: int | None = None) -> None:
        values = {"state": state} | ({"trial": trial} if trial is not None else {})
        with self.engine.begin() as conn:
            conn.execute(update(trial_slots).where(trial_slots.c.study == study, trial_slots.c.slot == slot)
                         .values(**values))

    # -- selections -------------------------------------------------------------------------
    def put_selections(self, rows: list[dict[str, Any]]) -> None:
        with contextlib.suppress(IntegrityError), self.engine.begin() as conn:
            conn.execute(insert(selections), rows)

    def selection_rows(self, studies: Iterable[str] | None = None) -> list:
        query = select(selections)
        if studies is not None:
            query = query.where(selections.c.study.in_(list(studies)))
        with self.engine.connect() as conn:
            return conn.execute(query).all()


@contextlib.contextmanager
def sqlite_single_writer(url: str) -> Iterator[None]:
    """Refuse a second writing process on one SQLite database, whatever path names it.

    The lock is an exclusive ``flock`` on the database file itself, so it follows the file
    through symlinks and hard links, leaves no lock file behind, and does not interfere with
    SQLite's own (``fcntl``) locks. Other databases: a no-op."""
    path = _sqlite_path(url)
    if path is None or path.is_dir():
        yield
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # an empty file is an empty SQLite database
    except OSError:  # an unusable or read-only path: opening the store says why in one line
        yield
        return
    try:
        _HELD_LOCKS.add(fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreError(
                f"another fairsqueeze process is already working on {path.resolve()}: SQLite allows one writer"
                " at a time; for several workers use a PostgreSQL URL (--db postgresql://user@host/dbname)"
            ) from None
        yield
    finally:
        _HELD_LOCKS.discard(fd)
        os.close(fd)  # closing the descriptor releases the lock


# A forked process (a --jobs process) closes its copy of a held lock's descriptor: the lock
# then belongs to the writing process alone and ends with it, even if a copy outlived it.
_HELD_LOCKS: set[int] = set()


def _close_held_locks() -> None:
    for fd in list(_HELD_LOCKS):
        with contextlib.suppress(OSError):
            os.close(fd)  # the child's copy only: the parent's descriptor keeps the lock
    _HELD_LOCKS.clear()


os.register_at_fork(after_in_child=_close_held_locks)
