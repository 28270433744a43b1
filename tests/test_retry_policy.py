"""The retry policy judges a database error by what the database said (issue 15, item 5).

Every error here is a real one, raised by a real PostgreSQL (when WAFLOW_TEST_DATABASE_URL is set) or
SQLite: an index row too large, a value the type refuses, a broken constraint, a serialization
failure, a deadlock, a terminated backend, a refused connection, a locked database.
"""
from __future__ import annotations

import contextlib
import sqlite3
import threading

import pytest
import sqlalchemy as sa

from conftest import SKIP_PG
from hostile_bodies import MARKER, random_id
from support import PG_URL, compact, migrate, text_webhook
from waflow import config, failures
from waflow.tasks import is_transient

UNREACHABLE = "postgresql+psycopg2://postgres@127.0.0.1:1/nowhere"


@pytest.fixture
def pg() -> sa.Engine:
    if not PG_URL:
        pytest.skip(SKIP_PG)
    from waflow.db import make_engine

    engine = make_engine(config.load({"DATABASE_URL": PG_URL}).database_url)
    yield engine
    engine.dispose()


def raised(engine: sa.Engine, *statements: str, **params) -> sa.exc.DBAPIError:
    with pytest.raises(sa.exc.DBAPIError) as caught, engine.connect() as conn:
        for statement in statements:
            conn.execute(sa.text(statement), params)
    return caught.value


PERMANENT_ON_POSTGRESQL = {
    # An index row past 2,704 bytes: PostgreSQL's program limit, which SQLAlchemy calls OperationalError.
    "54000": (("CREATE TEMP TABLE t (k text UNIQUE)", "INSERT INTO t VALUES (:v)"), {"v": random_id(6000)},
              sa.exc.OperationalError),
    "22P02": (("SELECT CAST(:v AS integer)",), {"v": MARKER}, sa.exc.DataError),
    "22001": (("CREATE TEMP TABLE t (k varchar(3))", "INSERT INTO t VALUES (:v)"), {"v": MARKER}, sa.exc.DataError),
    "23505": (("CREATE TEMP TABLE t (k text UNIQUE)", "INSERT INTO t VALUES (:v)", "INSERT INTO t VALUES (:v)"),
              {"v": MARKER}, sa.exc.IntegrityError),
    "23502": (("CREATE TEMP TABLE t (k text, n text NOT NULL)", "INSERT INTO t VALUES (:v, NULL)"), {"v": MARKER},
              sa.exc.IntegrityError),
    "42P01": (("SELECT * FROM no_such_table",), {}, sa.exc.ProgrammingError),
}


@pytest.mark.parametrize("state", list(PERMANENT_ON_POSTGRESQL))
def test_a_postgresql_data_integrity_or_limit_error_is_permanent(pg, state):
    statements, params, kind = PERMANENT_ON_POSTGRESQL[state]
    exc = raised(pg, *statements, **params)
    assert isinstance(exc, kind) and failures.sqlstate(exc) == state
    assert not is_transient(exc)
    assert MARKER not in failures.describe(exc) and state in failures.describe(exc)


def test_a_serialization_failure_is_transient(pg):
    with pg.begin() as conn:
        conn.execute(sa.text("DROP TABLE IF EXISTS h2_serial; CREATE TABLE h2_serial (id int PRIMARY KEY, n int);"
                             "INSERT INTO h2_serial VALUES (1, 0)"))
    first, second = pg.connect(), pg.connect()
    try:
        first.execute(sa.text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
        first.execute(sa.text("SELECT n FROM h2_serial WHERE id = 1")).scalar()
        with second.begin():
            second.execute(sa.text("UPDATE h2_serial SET n = n + 1 WHERE id = 1"))
        with pytest.raises(sa.exc.OperationalError) as caught:
            first.execute(sa.text("UPDATE h2_serial SET n = n + 1 WHERE id = 1"))
    finally:
        first.close()
        second.close()
    assert failures.sqlstate(caught.value) == "40001" and is_transient(caught.value)


def test_a_deadlock_is_transient(pg):
    with pg.begin() as conn:
        conn.execute(sa.text("DROP TABLE IF EXISTS h2_lock; CREATE TABLE h2_lock (id int PRIMARY KEY, n int);"
                             "INSERT INTO h2_lock VALUES (1, 0), (2, 0)"))
    errors: list[BaseException] = []
    both_hold_one = threading.Barrier(2)

    def lock(first: int, then: int) -> None:
        try:
            with pg.begin() as conn:
                conn.execute(sa.text("SET LOCAL deadlock_timeout = '100ms'"))
                conn.execute(sa.text("UPDATE h2_lock SET n = 1 WHERE id = :i"), {"i": first})
                both_hold_one.wait(10)
                conn.execute(sa.text("UPDATE h2_lock SET n = 1 WHERE id = :i"), {"i": then})
        except sa.exc.DBAPIError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=lock, args=(1, 2)), threading.Thread(target=lock, args=(2, 1))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    [exc] = errors
    assert failures.sqlstate(exc) == "40P01" and is_transient(exc)


def test_a_terminated_backend_and_a_refused_connection_are_transient(pg):
    victim = pg.connect()
    pid = victim.execute(sa.text("SELECT pg_backend_pid()")).scalar()
    with pg.connect() as admin:
        admin.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid})
    with pytest.raises(sa.exc.DBAPIError) as terminated:
        victim.execute(sa.text("SELECT 1"))
    victim.invalidate()
    assert is_transient(terminated.value)
    with pytest.raises(sa.exc.OperationalError) as refused:
        sa.create_engine(UNREACHABLE).connect()
    assert failures.sqlstate(refused.value) is None and is_transient(refused.value)


@pytest.fixture
def send_path(pg) -> sa.Engine:
    """The send path's engine: autocommit connections with the sender's prepared statements."""
    import waflow.outbound  # noqa: F401 - registers the statements, which name the outbox's tables
    from waflow.db import make_engine

    migrate(pg.url.render_as_string(hide_password=False))
    engine = make_engine(pg.url.render_as_string(hide_password=False), autocommit=True)
    yield engine
    engine.dispose()


def _claim(conn: sa.Connection, outbound_id) -> list:
    from datetime import datetime, timezone

    from waflow.db import execute_prepared
    from waflow.outbound import claim

    return execute_prepared(conn, claim.CLAIM_AT_ONCE, outbound_id, None, datetime.now(timezone.utc))


def test_a_prepared_send_statement_on_a_lost_connection_is_transient_and_no_connection_of_that_server_is_reused(
        pg, send_path):
    """A server restart kills every connection the pool holds: the first one found dead retires the others
    too, so the next send opens a fresh connection instead of failing on the next dead one."""
    first, second = send_path.connect(), send_path.connect()
    pids = [c.exec_driver_sql("SELECT pg_backend_pid()").scalar() for c in (first, second)]
    first.close(), second.close()  # both idle in the pool
    with pg.connect() as admin:
        for pid in pids:
            admin.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid})
    with send_path.connect() as victim, pytest.raises(sa.exc.OperationalError) as lost:
        _claim(victim, -1)
    assert lost.value.connection_invalidated and is_transient(lost.value)
    with send_path.connect() as again:
        assert _claim(again, -1) == []
        assert again.exec_driver_sql("SELECT pg_backend_pid()").scalar() not in pids


def test_a_prepared_send_statement_the_server_refuses_is_permanent_and_keeps_its_connection(send_path):
    with send_path.connect() as conn:
        pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        with pytest.raises(sa.exc.DataError) as refused:
            _claim(conn, MARKER)  # not a bigint
        assert failures.sqlstate(refused.value) == "22P02" and not is_transient(refused.value)
        assert not refused.value.connection_invalidated
        assert _claim(conn, -1) == [] and conn.exec_driver_sql("SELECT pg_backend_pid()").scalar() == pid


def test_sqlite_is_transient_only_when_locked(tmp_path):
    url = f"sqlite:///{tmp_path}/locked.db"
    holder = sqlite3.connect(tmp_path / "locked.db", isolation_level=None)
    holder.execute("CREATE TABLE t (k text UNIQUE)")
    holder.execute("BEGIN EXCLUSIVE")
    engine = sa.create_engine(url, connect_args={"timeout": 0})
    locked = raised(engine, "INSERT INTO t VALUES ('x')")
    assert "database is locked" in str(locked.orig) and is_transient(locked)
    holder.execute("ROLLBACK")
    duplicate = raised(engine, "INSERT INTO t VALUES (:v)", "INSERT INTO t VALUES (:v)", v=MARKER)
    missing = raised(engine, "SELECT * FROM no_such_table")
    assert not is_transient(duplicate) and not is_transient(missing)
    assert failures.describe(duplicate) == "IntegrityError: SQLITE_CONSTRAINT_UNIQUE"
    holder.close()
    engine.dispose()


# --- in the core stage ----------------------------------------------------------------------------------------


def _event() -> dict:
    from waflow.ingestor import split_webhook

    [event] = split_webhook(compact(text_webhook(["wamid.POLICY"])), 1764000000.0).events
    return event.model_dump(mode="json", exclude_none=True)


def _drain_dead_letters() -> list[dict]:
    from waflow.dlq.records import DEAD_LETTER_QUEUE
    from waflow.tasks import celery_app

    found = []
    with celery_app.connection_for_write() as conn:
        simple = conn.SimpleQueue(DEAD_LETTER_QUEUE)
        while True:
            try:
                message = simple.get(block=False)
            except simple.Empty:
                return found
            message.ack()
            found.append(message.payload)


def _run_core_on(monkeypatch, url: str, after_persisting: tuple[str, dict] | None = None) -> tuple[int, dict]:
    """Run core's task in-process on the database ``url``; after its writes, run one more statement (the
    error under test). Return how often core opened a transaction, and the dead-letter record."""
    from waflow import core
    from waflow.db import transaction

    opened = []
    real_persist = core.persist_event

    @contextlib.contextmanager
    def counted():
        opened.append(1)
        with transaction(url) as conn:
            yield conn

    def persist_then_fail(conn, event, *rest):
        stored = real_persist(conn, event, *rest)
        if after_persisting is not None:
            conn.execute(sa.text(after_persisting[0]), after_persisting[1])
        return stored

    monkeypatch.setattr(core, "transaction", counted)
    monkeypatch.setattr(core, "persist_event", persist_then_fail)
    _drain_dead_letters()
    assert core.handle_normalized.apply(args=(_event(),)).failed()
    [record] = _drain_dead_letters()
    return len(opened), record


@pytest.mark.parametrize(("statement", "params", "error_type", "state"), [
    ("INSERT INTO contacts (wa_id, created_at, updated_at) VALUES (:v, now(), now())", {"v": random_id(6000)},
     "OperationalError", "54000"),
    ("SELECT CAST(:v AS integer)", {"v": MARKER}, "DataError", "22P02"),
    # A contact with neither id: PostgreSQL's message quotes the failing row, the client's name included.
    ("INSERT INTO contacts (name, created_at, updated_at) VALUES (:v, now(), now())", {"v": MARKER},
     "IntegrityError", "23514"),
])
def test_a_permanent_database_error_in_core_is_dead_lettered_without_retries(monkeypatch, default_db, pg, statement,
                                                                              params, error_type, state):
    from support import wipe

    wipe(pg.url.render_as_string(hide_password=False))
    attempts, record = _run_core_on(monkeypatch, pg.url.render_as_string(hide_password=False), (statement, params))
    assert (attempts, record["retries"], record["error_type"]) == (1, 0, error_type)
    assert f"SQLSTATE {state}" in record["error_message"]
    assert MARKER not in record["error_message"] + record["traceback"]
    assert record["detail"].startswith(error_type)  # the database's own words, for operators
    if MARKER in params.values():
        assert MARKER in record["detail"]  # ...which quote the client: kept out of the message


def test_a_connection_error_in_core_is_retried_three_times_then_dead_lettered(monkeypatch, default_db):
    attempts, record = _run_core_on(monkeypatch, UNREACHABLE)
    assert (attempts, record["retries"], record["error_type"]) == (4, 3, "OperationalError")


def test_a_locked_sqlite_database_in_core_is_retried(monkeypatch, default_db, tmp_path):
    from waflow import core

    holder = sqlite3.connect(tmp_path / "busy.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    engine = sa.create_engine(f"sqlite:///{tmp_path}/busy.db", connect_args={"timeout": 0})
    opened = []

    @contextlib.contextmanager
    def locked():
        opened.append(1)
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE IF NOT EXISTS t (k text)"))
            yield conn

    monkeypatch.setattr(core, "transaction", locked)
    _drain_dead_letters()
    try:
        assert core.handle_normalized.apply(args=(_event(),)).failed()
    finally:
        holder.close()
        engine.dispose()
    [record] = _drain_dead_letters()
    assert (len(opened), record["retries"], record["error_message"]) == (4, 3, "OperationalError: SQLITE_BUSY")
