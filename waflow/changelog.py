"""The change log: what changed, in order, for pages that ask "what changed since N".

Any stage records a change in its own transaction (``record``), so the change is visible exactly
when what it describes is: a draft ready, approved, superseded, a new message, a delivery
tick. A page keeps the last ``N`` it saw and asks ``since(conn, N)``: the changes after it, and the
``N`` to ask with next time (the dashboard's ``GET /dashboard/changes?since=N``).

Ids come from the table's sequence, in the order rows were inserted, but on PostgreSQL transactions
commit in their own order: id 10 can be visible while id 9's transaction has not committed yet (and
a rolled-back insert leaves id 9 missing for good). A reader that jumped to 10 would never see 9. So
``since`` hands out the changes only up to the first missing id, unless the change after that gap
was recorded more than ``GAP_PATIENCE`` ago: by then the missing id was rolled back, or its
transaction runs far longer than any of waflow's. A gap usually closes within milliseconds.

``key`` makes a change recorded twice (a redelivered task) one row.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import sqlalchemy as sa

from waflow.db import insert
from waflow.models import Change

# How long a missing id holds back the changes after it (see the module's docstring). Every waflow
# transaction that records a change is short (one message, one draft, one decision).
GAP_PATIENCE = timedelta(seconds=5)
PAGE = 500


@dataclass(frozen=True)
class Changes:
    """The changes after the ``N`` asked with, oldest first, and the ``N`` to ask with next."""

    rows: list[Any]
    cursor: int


@functools.cache
def _insert(dialect: str) -> Any:
    return insert(dialect, Change).on_conflict_do_nothing(index_elements=["key"])


def record(conn: sa.Connection, kind: str, *, conversation_id: int | None = None, draft_id: int | None = None,
           message_id: int | None = None, key: str | None = None) -> None:
    """Record a change in the caller's transaction (once per ``key``, when one is given).

    ``kind`` is a dotted name: ``draft.ready``, ``draft.failed``, ``draft.approved``, ``draft.rejected``,
    ``draft.superseded``, ``reply.written`` (the drafts), ``message.new`` (core, the sender: a message stored),
    ``delivery.tick`` (core: a reply's status moved), ``conversation.assigned`` and ``presence`` (the
    dashboard: who has a conversation, who has it open)."""
    conn.execute(_insert(conn.dialect.name), {
        "kind": kind, "conversation_id": conversation_id, "draft_id": draft_id, "message_id": message_id,
        "key": key, "created_at": datetime.now(timezone.utc)})


def latest(conn: sa.Connection) -> int:
    """The newest change's id (0 when there is none): where a page that has just loaded starts."""
    return conn.execute(sa.select(sa.func.coalesce(sa.func.max(Change.id), 0))).scalar_one()


def since(conn: sa.Connection, after: int, limit: int = PAGE, now: datetime | None = None) -> Changes:
    """The changes with ids after ``after``, up to the first gap that may still fill (module docstring)."""
    now = now or datetime.now(timezone.utc)
    rows = conn.execute(sa.select(Change.__table__).where(Change.id > after).order_by(Change.id)
                        .limit(limit)).all()
    handed: list[Any] = []
    expected = after + 1
    for row in rows:
        if row.id != expected and _aware(row.created_at) > now - GAP_PATIENCE:
            break  # an earlier id may still commit: wait for it (or for the patience to run out)
        handed.append(row)
        expected = row.id + 1
    return Changes(handed, handed[-1].id if handed else after)


def _aware(at: datetime) -> datetime:
    return at.replace(tzinfo=timezone.utc) if at.tzinfo is None else at  # SQLite hands back naive UTC


def prune(conn: sa.Connection, before: datetime) -> int:
    """Delete the changes recorded before ``before``; return how many.

    Open pages ask for changes seconds old, so days of the log are plenty (a page hidden for longer has no
    session left to poll with: 12 idle hours end it, and the login page brings a fresh page). The newest change always stays:
    ``latest`` never goes back, so a page's cursor stays valid (and SQLite, which numbers a row after the
    highest id left, never hands out an id a page has already passed)."""
    newest = sa.select(sa.func.max(Change.id)).scalar_subquery()
    return conn.execute(sa.delete(Change).where(Change.created_at < before, Change.id < newest)).rowcount
