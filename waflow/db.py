"""Engine, transactions and the declarative base (SQLAlchemy 2.0).

The caller owns the transaction: a task opens ``transaction()`` (one per
message) and hands the connection to plain functions. Stages write through
SQLAlchemy Core statements on a ``Connection``, not the ORM ``Session``: every
write is an idempotent ``INSERT … ON CONFLICT`` or a conditional ``UPDATE``,
which need no identity map, and skipping the ORM's unit of work roughly halves
the CPU a message costs (measured in ``docs/benchmarks.md``). The models in
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


def make_engine(url: str) -> sa.Engine:
    """Build an engine for ``url`` with waflow's connection settings."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            from pathlib import Path

            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, hide_parameters=True, connect_args={"timeout": 30})
        sa.event.listen(engine, "connect", _on_sqlite_connect)
        return engine
    return sa.create_engine(
        url,
        # No pre-ping: it costs a round trip per message. A connection found dead raises
        # OperationalError, the pool drops it, and the task's transient-error retry runs
        # again on a fresh one.
        # Bound parameters are client text: keep them out of exception messages and logs.
        hide_parameters=True,
        pool_size=5,
        max_overflow=5,
        # Fail fast when the database is unreachable; the task's retry policy waits.
        connect_args={"connect_timeout": 5},
    )


def get_engine(url: str | None = None) -> sa.Engine:
    """Return this process's engine for ``url`` (default: ``DATABASE_URL``)."""
    url = url or settings.database_url
    engine = _engines.get(url)
    if engine is None:
        with _lock:
            engine = _engines.get(url)
            if engine is None:
                engine = _engines[url] = make_engine(url)
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


def insert(name: str, table: Any) -> Any:
    """An INSERT that supports ``on_conflict_*`` on the dialect called ``name``."""
    if name == "postgresql":
        return postgresql.insert(table)
    if name == "sqlite":
        return sqlite.insert(table)
    raise RuntimeError(f"waflow supports PostgreSQL and SQLite, not {name}")
