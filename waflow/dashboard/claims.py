"""Who has a conversation, who is looking at it, and what each lawyer has read: plain functions, no Flask.

- **Taking** (``take``): a lawyer takes a conversation by acting on it (starting to edit a draft or to write a
  reply, deciding), never by opening it. It stays theirs until they let it go (``release``) or until ``QUIET``
  has passed since they last acted; ``holder`` tells who has it now. A change of holder is a
  ``conversation.assigned`` change, so open pages show it.
- **Presence** (``touch``, ``present``): an open conversation page says every so often that its lawyer is
  viewing it, or editing in it. The row is written only when the state changes or after ``THROTTLE``
  (a page heartbeats more often than that only by mistake), and shown while fresher than ``PRESENCE_TTL``.
  A new viewer or a change to editing is a ``presence`` change.
- **Reading** (``mark_read``): a lawyer who sees a conversation's newest messages has read as many client
  messages as it holds; their unread count is the conversation's ``inbound_count`` less that number.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import sqlalchemy as sa

from waflow import changelog
from waflow.db import insert
from waflow.models import PRESENCE_STATES, Assignment, Conversation, ConversationRead, Presence, User

QUIET = timedelta(minutes=15)
# A holder who acts again within this keeps the row as it is (no write per keystroke).
RETAKE = timedelta(seconds=60)
PRESENCE_TTL = timedelta(seconds=45)
THROTTLE = timedelta(seconds=15)
HEARTBEAT_SECONDS = 20  # how often an open page touches its presence (static/conversation.js reads it)


@dataclass(frozen=True)
class Holder:
    user_id: int
    name: str
    since: datetime


def _now(now: datetime | None) -> datetime:
    return now or datetime.now(timezone.utc)


def _aware(at: datetime) -> datetime:
    return at.replace(tzinfo=timezone.utc) if at.tzinfo is None else at


def holder(conn: sa.Connection, conversation_id: int, now: datetime | None = None) -> Holder | None:
    """Who has the conversation now (None: nobody, or the last one to act has been quiet for ``QUIET``)."""
    row = conn.execute(sa.select(Assignment.user_id, Assignment.assigned_at, User.name)
                       .join(User, User.id == Assignment.user_id)
                       .where(Assignment.conversation_id == conversation_id)).first()
    if row is None or _aware(row.assigned_at) <= _now(now) - QUIET:
        return None
    return Holder(row.user_id, row.name, _aware(row.assigned_at))


def take(conn: sa.Connection, conversation_id: int, user_id: int, now: datetime | None = None) -> bool:
    """The lawyer acts on the conversation: it is theirs from now (taken from whoever had it). Returns
    whether its holder changed."""
    now = _now(now)
    current = holder(conn, conversation_id, now)
    if current is not None and current.user_id == user_id and current.since > now - RETAKE:
        return False
    stmt = insert(conn.dialect.name, Assignment).values(conversation_id=conversation_id, user_id=user_id,
                                                         assigned_at=now)
    conn.execute(stmt.on_conflict_do_update(index_elements=["conversation_id"],
                                            set_={"user_id": stmt.excluded.user_id,
                                                  "assigned_at": stmt.excluded.assigned_at}))
    changed = current is None or current.user_id != user_id
    if changed:
        changelog.record(conn, "conversation.assigned", conversation_id=conversation_id)
    return changed


def release(conn: sa.Connection, conversation_id: int, user_id: int) -> bool:
    """The lawyer lets the conversation go (only their own hold). Returns whether they had it."""
    gone = conn.execute(sa.delete(Assignment).where(Assignment.conversation_id == conversation_id,
                                                    Assignment.user_id == user_id)).rowcount
    if gone:
        changelog.record(conn, "conversation.assigned", conversation_id=conversation_id)
    return bool(gone)


def touch(conn: sa.Connection, conversation_id: int, user_id: int, state: str = "viewing",
          now: datetime | None = None) -> bool:
    """The lawyer's page is open on the conversation (``viewing``) or they are writing in it (``editing``).
    Returns whether others should be told (a new viewer, or a change of state)."""
    if state not in PRESENCE_STATES:
        raise ValueError(f"state must be one of {', '.join(PRESENCE_STATES)}")
    now = _now(now)
    row = conn.execute(sa.select(Presence.state, Presence.seen_at).where(
        Presence.conversation_id == conversation_id, Presence.user_id == user_id)).first()
    fresh = row is not None and _aware(row.seen_at) > now - PRESENCE_TTL
    if fresh and row.state == state and _aware(row.seen_at) > now - THROTTLE:
        return False
    stmt = insert(conn.dialect.name, Presence).values(conversation_id=conversation_id, user_id=user_id,
                                                       state=state, seen_at=now)
    conn.execute(stmt.on_conflict_do_update(index_elements=["conversation_id", "user_id"],
                                            set_={"state": stmt.excluded.state, "seen_at": stmt.excluded.seen_at}))
    told = not fresh or row.state != state
    if told:
        changelog.record(conn, "presence", conversation_id=conversation_id)
    return told


def present(conn: sa.Connection, conversation_id: int, now: datetime | None = None,
            besides: int | None = None) -> list[Any]:
    """Who has the conversation open now (``name``, ``state``, ``user_id``), editors first, but ``besides``."""
    query = (sa.select(User.id.label("user_id"), User.name, Presence.state)
             .join(User, User.id == Presence.user_id)
             .where(Presence.conversation_id == conversation_id, Presence.seen_at > _now(now) - PRESENCE_TTL)
             .order_by(Presence.state.desc(), User.name))  # "viewing" < "editing": editors first
    if besides is not None:
        query = query.where(Presence.user_id != besides)
    return list(conn.execute(query).all())


def mark_read(conn: sa.Connection, conversation_id: int, user_id: int, now: datetime | None = None) -> None:
    """The lawyer has seen every client message the conversation holds now (written only if that changed)."""
    seen = sa.select(Conversation.inbound_count).where(Conversation.id == conversation_id).scalar_subquery()
    stmt = insert(conn.dialect.name, ConversationRead).values(conversation_id=conversation_id, user_id=user_id,
                                                               inbound_seen=seen, read_at=_now(now))
    conn.execute(stmt.on_conflict_do_update(
        index_elements=["user_id", "conversation_id"],
        set_={"inbound_seen": stmt.excluded.inbound_seen, "read_at": stmt.excluded.read_at},
        where=ConversationRead.inbound_seen != stmt.excluded.inbound_seen))
