"""The results store: one SQLAlchemy database (SQLite file by default, PostgreSQL by URL).

Tables:
- ``runs``: one row per run key (the hash of everything that determines the run), with its
  configuration, hashes, seed, status (running / done / failed), timings and error.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
from sqlalchemy import (
    Column,
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
    update,
)
from sqlalchemy.engine import Engine

DEFAULT_URL = "sqlite:///results/fairsqueeze.db"

meta = MetaData()

runs = Table(
    "runs",
    meta,
    Column("key", String(64), primary_key=True),
    Column("suite", String(128)),
    Column("task", String(128), nullable=False),
    Column("task_key", String(64)),
    Column("model", String(128), nullable=False),
    Column("method", String(128), nullable=False),
    Column("label", String(256), nullable=False),
    Column("params", Text, nullable=False),
    Column("seed", Integer, nullable=False),
    Column("config", Text, nullable=False),
    Column("split_hash", String(64)),
    Column("dense_hash", String(64)),
    Column("status", String(16), nullable=False),
    Column("error", Text),
    Column("started_at", Float),
    Column("finished_at", Float),
    Column("timings", Text),
    Column("info", Text),
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


class Store:
    def __init__(self, url: str = DEFAULT_URL):
        self.url = url
        if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.engine: Engine = create_engine(url)
        meta.create_all(self.engine)

    # -- runs -------------------------------------------------------------------------
    def start_run(self, key: str, row: dict[str, Any]) -> None:
        """Mark ``key`` as running, replacing any earlier failed or interrupted attempt."""
        values = {**row, "key": key, "status": "running", "error": None, "started_at": time.time()}
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
    def runs_frame(self, status: str | None = None) -> pd.DataFrame:
        query = select(runs)
        if status:
            query = query.where(runs.c.status == status)
        with self.engine.connect() as conn:
            return pd.read_sql(query, conn)

    def metrics_frame(self, split: str | None = None) -> pd.DataFrame:
        query = select(metrics)
        if split:
            query = query.where(metrics.c.split == split)
        with self.engine.connect() as conn:
            return pd.read_sql(query, conn)

    def footprint_frame(self) -> pd.DataFrame:
        with self.engine.connect() as conn:
            return pd.read_sql(select(footprint), conn)

    def predictions(self, key: str, split: str) -> dict[str, np.ndarray]:
        with self.engine.connect() as conn:
            blob = conn.execute(
                select(predictions.c.data).where(predictions.c.run_key == key, predictions.c.split == split)
            ).scalar()
        if blob is None:
            raise KeyError(f"no predictions for run {key} on {split}")
        return _unpack(blob)

    def keys_with_status(self, keys: Iterable[str], status: str) -> set[str]:
        keys = list(keys)
        with self.engine.connect() as conn:
            found = conn.execute(select(runs.c.key).where(runs.c.key.in_(keys), runs.c.status == status))
            return {r[0] for r in found}
