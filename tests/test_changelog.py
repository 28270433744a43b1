"""The change log the dashboard reads as "what changed since N" (issue 17, item 5): every change exactly once,
in order, even while transactions commit out of order."""
from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from waflow import changelog
from waflow.db import get_engine, transaction
from waflow.models import Change


def test_changes_since_n_come_in_order_with_the_cursor_to_ask_with_next(db_url):
    with transaction(db_url) as conn:
        assert changelog.latest(conn) == 0
        for n in range(3):
            changelog.record(conn, "draft.ready", conversation_id=7, draft_id=n + 1)
    with transaction(db_url) as conn:
        first = changelog.since(conn, 0)
        assert [r.draft_id for r in first.rows] == [1, 2, 3] and first.cursor == changelog.latest(conn)
        assert changelog.since(conn, first.cursor) == changelog.Changes([], first.cursor)
        assert [r.draft_id for r in changelog.since(conn, first.rows[0].id).rows] == [2, 3]


def test_a_change_recorded_twice_under_one_key_is_one_row(db_url):
    for _ in range(3):
        with transaction(db_url) as conn:
            changelog.record(conn, "draft.ready", draft_id=1, key="draft:1:created")
    with transaction(db_url) as conn:
        assert len(changelog.since(conn, 0).rows) == 1


def test_a_missing_id_holds_back_later_changes_until_its_patience_runs_out(db_url):
    now = datetime.now(timezone.utc)
    with transaction(db_url) as conn:  # id 2 is missing: still uncommitted somewhere, or rolled back
        conn.execute(sa.insert(Change), [{"id": 1, "kind": "a", "created_at": now},
                                         {"id": 3, "kind": "c", "created_at": now}])
    with transaction(db_url) as conn:
        held = changelog.since(conn, 0, now=now)
        assert ([r.id for r in held.rows], held.cursor) == ([1], 1)
        assert changelog.since(conn, 1, now=now).rows == []
        late = changelog.since(conn, 1, now=now + changelog.GAP_PATIENCE + timedelta(seconds=1))
        assert ([r.id for r in late.rows], late.cursor) == ([3], 3)


# Concurrent writers: only PostgreSQL runs them at the same time (SQLite serializes writers).
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_reader_never_skips_a_change_whose_transaction_commits_after_a_later_one(db_url):
    engine = get_engine(db_url)
    slow = engine.connect()
    slow_tx = slow.begin()
    changelog.record(slow, "draft.ready", draft_id=1)  # takes the lower id, commits last
    with transaction(db_url) as conn:
        changelog.record(conn, "draft.ready", draft_id=2)
    with transaction(db_url) as conn:
        seen = changelog.since(conn, 0)
    assert seen.rows == [] and seen.cursor == 0  # not past the uncommitted id
    slow_tx.commit()
    slow.close()
    with transaction(db_url) as conn:
        assert [r.draft_id for r in changelog.since(conn, seen.cursor).rows] == [1, 2]


# Concurrent writers: only PostgreSQL runs them at the same time (SQLite serializes writers).
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_changes_recorded_by_many_writers_at_once_each_reach_a_polling_reader_once(db_url):
    seen: list[int] = []
    stop = threading.Event()

    def poll() -> None:
        cursor = 0
        while not stop.is_set() or cursor < 200:
            with transaction(db_url) as conn:
                got = changelog.since(conn, cursor)
            seen.extend(r.draft_id for r in got.rows)
            cursor = got.cursor
            if stop.is_set() and not got.rows:
                with transaction(db_url) as conn:
                    if cursor >= changelog.latest(conn):
                        break

    def write(n: int) -> None:
        for i in range(25):
            with transaction(db_url) as conn:
                changelog.record(conn, "draft.ready", draft_id=n * 100 + i)

    reader = threading.Thread(target=poll)
    reader.start()
    writers = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    stop.set()
    reader.join(30)
    assert sorted(seen) == sorted(n * 100 + i for n in range(8) for i in range(25))


def _recorded(db_url: str, *ages: timedelta) -> list[int]:
    """Record one change per age, oldest first, dated that long ago; their ids."""
    now = datetime.now(timezone.utc)
    with transaction(db_url) as conn:
        for n in range(len(ages)):
            changelog.record(conn, "draft.ready", draft_id=n + 1)
        ids = [r.id for r in changelog.since(conn, 0, now=now).rows]
        for id_, age in zip(ids, ages):
            conn.execute(sa.update(Change).where(Change.id == id_).values(created_at=now - age))
    return ids


def test_prune_deletes_old_changes_but_always_keeps_the_newest(db_url):
    now = datetime.now(timezone.utc)
    old, older, recent = _recorded(db_url, timedelta(days=9), timedelta(days=8), timedelta(hours=1))
    with transaction(db_url) as conn:
        assert changelog.prune(conn, now - timedelta(days=2)) == 2
        assert [r.id for r in changelog.since(conn, 0, now=now).rows] == [recent]
    with transaction(db_url) as conn:  # everything old: the newest stays, so the cursor never goes back
        assert changelog.prune(conn, now + timedelta(days=1)) == 0
        assert changelog.latest(conn) == recent
        changelog.record(conn, "draft.ready", draft_id=9)
    with transaction(db_url) as conn:
        assert [r.draft_id for r in changelog.since(conn, recent).rows] == [9]


def test_the_prune_command_keeps_the_days_it_is_given(default_db):
    from support import wipe
    from waflow import config, create_app

    db_url = default_db  # the database CLI commands use in this process
    wipe(db_url)
    kept = _recorded(db_url, timedelta(days=5), timedelta(days=1), timedelta(0))[1:]
    app = create_app({"TESTING": True, "WAFLOW_SETTINGS": config.settings})
    runner = app.test_cli_runner()
    assert runner.invoke(args=["changes", "prune"]).output == "deleted 1 change(s) older than 2 day(s)\n"
    assert runner.invoke(args=["changes", "prune", "--days", "0"]).exit_code == 2
    with transaction(db_url) as conn:
        assert [r.id for r in changelog.since(conn, 0).rows] == kept
