"""Engine, transactions and the declarative base (SQLAlchemy 2.0).

The caller owns the transaction: a task opens ``transaction()`` (one per
message) and hands the connection to plain functions. Stages write through
SQLAlchemy Core statements on a ``Connection``, not the ORM ``Session``: every
write is an idempotent ``INSERT … ON CONFLICT`` or a conditional ``UPDATE``,
which need no identity map, and skipping the ORM's unit of work roughly halves
the CPU a message costs (``docs/benchmarks.md``). The models in
``waflow.models`` still define the tables, and tests read through them.

The engine is built lazily, once per process, so a forked worker child never
shares its parent's connections.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Any, Iterator

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import DeclarativeBase

from waflow.config import settings


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: sa.JSON().with_variant(postgresql.JSONB(), "postgresql")}


# Connections each engine keeps open (and as many again while busy): a sender's threads each hold
# one for a statement at a time, to claim a message (at most 8 at once, consumer.MAX_WAITING) or to
# record Meta's answer; while they wait for that answer, most of its 32 threads hold none.
POOL_SIZE = 8

_lock = threading.Lock()
_engines: dict[str, sa.Engine] = {}


def _on_sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # Several worker processes share the embedded database: WAL lets readers run
    # beside the writer and busy_timeout makes writers queue instead of failing.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


# Statements prepared on every connection of the autocommit engines (PostgreSQL): name -> PREPARE text.
_PREPARED: dict[str, str] = {}


def prepared(name: str, types: str, sql: str) -> str:
    """Have every autocommit connection ``PREPARE name types AS sql`` when it opens; return the name,
    for execute_prepared. The server then plans the statement once per connection instead of on every
    call (psycopg2 prepares nothing by itself). Register at import, before any such connection opens."""
    _PREPARED[name] = f"PREPARE {name} {types} AS {sql}"
    return name


def execute_prepared(conn: sa.Connection, name: str, *params: Any, relaxed: bool = False) -> list[Any]:
    """Run a statement registered with prepared() on an autocommit connection; return its rows (named
    tuples). With ``relaxed``, its commit returns before its WAL record is flushed: ``SET LOCAL
    synchronous_commit`` travels in the same query string, which PostgreSQL runs as one implicit
    transaction (still one round trip).

    The statement goes to psycopg2's cursor directly: SQLAlchemy's execution context and result
    object cost about as much CPU as the round trip itself (some 70 µs a statement, three a send).
    What SQLAlchemy does around a statement is kept: its ``before_cursor_execute`` and
    ``after_cursor_execute`` events fire (without an execution context), and a failing statement goes
    to the Connection's own error handler, the one ``exec_driver_sql`` calls (private; SQLAlchemy's
    version is pinned in requirements.txt): the error arrives wrapped as its
    ``DBAPIError`` subclass with the parameters hidden, ``handle_error`` listeners run, and a lost
    connection is invalidated together with every connection of the pool opened before it."""
    from psycopg2.extras import NamedTupleCursor

    execute = f"EXECUTE {name}({', '.join(['%s'] * len(params))})"
    statement = f"SET LOCAL synchronous_commit TO OFF; {execute}" if relaxed else execute
    cursor = None
    try:
        cursor = conn.connection.driver_connection.cursor(cursor_factory=NamedTupleCursor)
        conn.dispatch.before_cursor_execute(conn, cursor, statement, params, None, False)
        cursor.execute(statement, params)
        conn.dispatch.after_cursor_execute(conn, cursor, statement, params, None, False)
        return cursor.fetchall() if cursor.description is not None else []
    except BaseException as exc:
        conn._handle_dbapi_exception(exc, statement, params, cursor, None)  # always raises
        raise
    finally:
        if cursor is not None and not cursor.closed:
            cursor.close()


# The plan those statements keep. By default PostgreSQL plans a prepared statement afresh on each of
# its first five runs on a connection and only then settles on one plan, so a new connection's first
# sends cost the server about twice what later ones do. Every statement registered here finds its
# rows by key (an id, a wamid, a recipient's order), which the one generic plan does as well as a
# fresh one: it is kept from the first run (the sender's warm-up makes that run).
_PLAN_CACHE_MODE = "SET plan_cache_mode = force_generic_plan"


def _prepare_statements(dbapi_connection: Any, _record: Any) -> None:
    autocommit = dbapi_connection.autocommit
    dbapi_connection.autocommit = True
    try:
        with dbapi_connection.cursor() as cursor:
            cursor.execute(_PLAN_CACHE_MODE)
            for statement in _PREPARED.values():
                cursor.execute(statement)
    finally:
        dbapi_connection.autocommit = autocommit


def make_engine(url: str, autocommit: bool = False) -> sa.Engine:
    """Build an engine for ``url`` with waflow's connection settings (with ``autocommit``, on
    PostgreSQL, each statement commits on its own)."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            from pathlib import Path

            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, hide_parameters=True, connect_args={"timeout": 30})
        sa.event.listen(engine, "connect", _on_sqlite_connect)
        return engine
    engine = sa.create_engine(
        url,
        # No pre-ping: it costs a round trip per message. A connection found dead raises
        # OperationalError, the pool drops it, and the task's transient-error retry runs
        # again on a fresh one.
        # Bound parameters are client text: keep them out of exception messages and logs.
        hide_parameters=True,
        pool_size=POOL_SIZE,
        max_overflow=POOL_SIZE,
        # Fail fast when the database is unreachable; the task's retry policy waits.
        connect_args={"connect_timeout": 5},
        **({"isolation_level": "AUTOCOMMIT"} if autocommit else {}),
    )
    if autocommit:
        sa.event.listen(engine, "connect", _prepare_statements)
    return engine


def get_engine(url: str | None = None, autocommit: bool = False) -> sa.Engine:
    """Return this process's engine for ``url`` (default: ``DATABASE_URL``); with ``autocommit``, the
    one whose connections commit each statement on its own (PostgreSQL; on SQLite, the same engine)."""
    url = url or settings.database_url
    autocommit = autocommit and not url.startswith("sqlite")
    key = f"autocommit {url}" if autocommit else url
    engine = _engines.get(key)
    if engine is None:
        with _lock:
            engine = _engines.get(key)
            if engine is None:
                engine = _engines[key] = make_engine(url, autocommit)
    return engine


def dispose_engines() -> None:
    """Forget this process's connections (after a fork)."""
    with _lock:
        for engine in _engines.values():
            engine.dispose(close=False)
        _engines.clear()


@contextmanager
def transaction(url: str | None = None) -> Iterator[sa.Connection]:
    """One transaction: commit on success, roll back on any exception."""
    with get_engine(url).begin() as conn:
        yield conn


@contextmanager
def autocommit(url: str | None = None) -> Iterator[sa.Connection]:
    """A connection on which each statement commits on its own (one round trip, no BEGIN or COMMIT):
    for a single statement that is a whole transaction. SQLite's connections stay as they are."""
    with get_engine(url, autocommit=True).connect() as conn:
        yield conn
        if conn.in_transaction():
            conn.commit()


def insert(name: str, table: Any) -> Any:
    """An INSERT that supports ``on_conflict_*`` on the dialect called ``name``."""
    if name == "postgresql":
        return postgresql.insert(table)
    if name == "sqlite":
        return sqlite.insert(table)
    raise RuntimeError(f"waflow supports PostgreSQL and SQLite, not {name}")
