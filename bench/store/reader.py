"""The one door to the database for everything that only reads: the report and leaderboard
pages, ``open_results`` and ``launch --status``. It opens the store read-only and answers in
frames; no page writes SQL of its own or declares a table.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd
from sqlalchemy import MetaData, Table, create_engine, inspect, select, text
from sqlalchemy.exc import SQLAlchemyError

from fairsqueeze.core.errors import FairsqueezeError
from fairsqueeze.store.database import Store, check_url, footprint, masked, members, metrics, runs

if TYPE_CHECKING:
    import optuna


def open_store(url: str) -> Store:
    """The store at ``url``, read-only (a missing SQLite file is an error, never created)."""
    return Store(url, read_only=True)


def has_results(url: str) -> bool:
    """Whether a worker has created the tables at ``url`` yet (False for an empty server)."""
    check_url(url)
    engine = create_engine(url)
    try:
        return inspect(engine).has_table("members")
    except SQLAlchemyError as exc:
        first = str(getattr(exc, "orig", exc)).splitlines()[0]
        raise FairsqueezeError(f"--db {masked(url)}: cannot open the database: {first}") from None
    finally:
        engine.dispose()


def method_catalogue(store: Store) -> pd.DataFrame:
    """Every method with a stored run: method, family, method_order (the colour order), read
    from the runs table; a database written before those columns existed gives NaN."""
    have = {c["name"] for c in inspect(store.engine).get_columns("runs")}
    extra = [c for c in ("family", "method_order") if c in have]
    with store.engine.connect() as conn:
        frame = pd.read_sql(text(f"SELECT DISTINCT {', '.join(['method', *extra])} FROM runs"), conn)
    return frame.reindex(columns=["method", "family", "method_order"])


def suite_values(store: Store, suite: str | None, split: str | None = None) -> pd.DataFrame:
    """Index run key, a column per name: the metrics on ``split`` (or, with ``split`` None,
    the footprint) of the finished runs of ``suite`` (all suites when None). One query that
    selects the runs itself rather than a list of keys: faster than thousands of bound
    parameters, and a suite may hold more runs than SQL takes parameters."""
    table = metrics if split is not None else footprint
    query = select(table.c.run_key, table.c.name, table.c.value)
    if suite is not None:
        query = query.where(table.c.run_key.in_(select(members.c.run_key).where(members.c.suite == suite)))
    if split is not None:
        query = query.where(table.c.split == split)
    with store.engine.connect() as conn:
        rows = conn.execute(query).all()
    # columns from the rows by zip: a frame built from row objects costs ten times more
    keys, names, values = zip(*rows) if rows else ((), (), ())
    frame = pd.DataFrame({"run_key": keys, "name": names, "value": pd.array(values, dtype=float)})
    wide = frame.set_index(["run_key", "name"])["value"].unstack()
    wide.columns.name = "name"
    # values are written with a finished run, in one transaction: check the status once here
    with store.engine.connect() as conn:
        done = {k for (k,) in conn.execute(select(runs.c.key).where(runs.c.status == "done"))}
    return wide[wide.index.isin(done)]


SELECTIONS = "selections"  # the table the tuning side writes, one row per (study, policy)
SELECTION_COLUMNS = ["study", "policy", "suite", "label", "trial", "params", "run_key", "trials"]


def selections_frame(store: Store, suite: str | None = None) -> pd.DataFrame:
    """The stored (study, policy) -> trial choices; empty when nothing was ever tuned here.
    The table is reflected from the database: the reading side declares no table of the
    running side and imports none of its modules."""
    if not inspect(store.engine).has_table(SELECTIONS):
        return pd.DataFrame(columns=SELECTION_COLUMNS)
    selections = Table(SELECTIONS, MetaData(), autoload_with=store.engine)
    query = select(selections)
    if suite is not None:
        query = query.where(selections.c.suite == suite)
    with store.engine.connect() as conn:
        return pd.read_sql(query, conn)


# the tables Optuna's RDB storage needs before it can be opened without writing
OPTUNA_TABLES = {"studies", "trials", "version_info", "alembic_version"}


def reading_storage(store: Store) -> "optuna.storages.RDBStorage | None":
    """Optuna's storage on the store's database, opened to read; None when it holds no study."""
    import optuna

    if not OPTUNA_TABLES <= set(inspect(store.engine).get_table_names()):
        return None
    return optuna.storages.RDBStorage(store.url, skip_table_creation=True)
