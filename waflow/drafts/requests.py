"""Draft requests: core asks for a conversation's reply in the client message's own transaction.

A client's text, interactive or button reply, or media message (a new message or an edit) adds itself
to the conversation's one ``waiting`` request, and pushes its due time to ``DRAFT_QUIET_SECONDS`` from
now: a client typing three lines gets one draft that answers all three. Reactions, statuses, other
webhook fields, our own outbound messages and the rest of Meta's types (locations, contacts, orders,
system notices, deletions, unsupported types) start none.

The same message supersedes the conversation's open draft (``stale.supersede``): its messages join the
new request, so the next draft answers everything the client is still waiting on.

After the commit, core queues the drafting task with a countdown of the quiet period
(``publish.request``), once per request: for the message that made it. A task that comes before its
request's (pushed) due time goes back on the queue until then, so the next lines of a burst cost core
no publish. A publish lost after the commit is made good by the redelivered core task (``waiting_for``)
or by the drafter's sweep.
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable

import sqlalchemy as sa

from waflow.db import insert
from waflow.drafts import stale
from waflow.events import NormalizedEvent
from waflow.models import DraftRequest, DraftRequestMessage, Message

logger = logging.getLogger(__name__)

MEDIA_TYPES = frozenset({"image", "video", "audio", "document", "sticker"})
# What a client writes to be answered; media get a draft that acknowledges the attachment.
DRAFTABLE_TYPES = frozenset({"text", "interactive", "button"}) | MEDIA_TYPES


@dataclass(frozen=True)
class Requested:
    """A request a message joined; when ``new`` (the message made it), queue its drafting task after the
    commit, ``countdown`` seconds later (``publish.request``)."""

    request_id: int
    messages: int  # how many messages it holds now
    countdown: float
    new: bool = True


def draftable(event: NormalizedEvent) -> bool:
    """Whether this inbound message asks for a reply (an edit counts by the type of its new version)."""
    message = event.message
    if message is None:
        return False
    kind = message.type
    if kind == "edit":
        kind = str(message.content.get("type") or "")
    return kind in DRAFTABLE_TYPES


@functools.cache
def _upsert(dialect: str, sooner: bool) -> Any:
    """INSERT the conversation's waiting request, or update the one there: its messages counted, its due
    time pushed later (a client message) or brought forward (``sooner``: a person asking now)."""
    stmt = insert(dialect, DraftRequest).values(
        conversation_id=sa.bindparam("conversation_id"), status="waiting", due_at=sa.bindparam("due_at"),
        messages=sa.bindparam("count"), origin=sa.bindparam("origin"), created_at=sa.bindparam("now"),
        updated_at=sa.bindparam("now"))
    moved = (stmt.excluded.due_at < DraftRequest.due_at) if sooner else (stmt.excluded.due_at > DraftRequest.due_at)
    due = sa.case((moved, stmt.excluded.due_at), else_=DraftRequest.due_at)
    return stmt.on_conflict_do_update(
        index_elements=["conversation_id"], index_where=DraftRequest.status == "waiting",
        set_={"due_at": due, "messages": DraftRequest.messages + stmt.excluded.messages,
              "updated_at": stmt.excluded.updated_at},
    ).returning(DraftRequest.id, DraftRequest.messages, DraftRequest.due_at)


@functools.cache
def _link(dialect: str) -> Any:
    return insert(dialect, DraftRequestMessage).on_conflict_do_nothing(
        index_elements=["request_id", "message_id"])


def _waiting(conn: sa.Connection, conversation_id: int, message_ids: list[int], due_at: datetime, now: datetime,
             origin: str) -> Requested:
    """Add ``message_ids`` to the conversation's waiting request (made if there is none), due no sooner
    than ``due_at``."""
    row = conn.execute(_upsert(conn.dialect.name, origin == "person"), {
        "conversation_id": conversation_id, "due_at": due_at, "count": len(message_ids), "origin": origin,
        "now": now}).one()
    if message_ids:
        conn.execute(_link(conn.dialect.name), [{"request_id": row.id, "message_id": m} for m in message_ids])
    due = row.due_at if row.due_at.tzinfo else row.due_at.replace(tzinfo=timezone.utc)
    return Requested(row.id, row.messages, max(0.0, (due - now).total_seconds()), row.messages == len(message_ids))


def messages_of(conn: sa.Connection, request_ids: Iterable[int]) -> list[int]:
    """The message ids the given requests hold."""
    ids = list(request_ids)
    if not ids:
        return []
    return list(conn.execute(sa.select(DraftRequestMessage.message_id)
                             .where(DraftRequestMessage.request_id.in_(ids))).scalars())


# request_draft() in one statement, on PostgreSQL: the open draft superseded (with its change-log
# row), its messages and this one added to the conversation's waiting request (made, or its due time
# pushed). One round trip where the statements one by one take four: it runs for every client message,
# on core's hot path.
_REQUEST_AT_ONCE = sa.text("""
WITH sup AS (
  UPDATE drafts SET status = 'superseded', status_reason = 'client_wrote', decided_at = :now
  WHERE conversation_id = :conversation_id AND status IN ('pending', 'ready', 'failed')
  RETURNING id, request_id
), carried AS (
  SELECT l.message_id FROM draft_request_messages AS l
  WHERE l.request_id IN (SELECT request_id FROM sup) AND l.message_id <> :message_id
), req AS (
  INSERT INTO draft_requests AS r (conversation_id, status, due_at, messages, origin, created_at, updated_at)
  VALUES (:conversation_id, 'waiting', :due_at, 1 + (SELECT count(*) FROM carried), 'client', :now, :now)
  ON CONFLICT (conversation_id) WHERE status = 'waiting' DO UPDATE
  SET due_at = CASE WHEN excluded.due_at > r.due_at THEN excluded.due_at ELSE r.due_at END,
      messages = r.messages + excluded.messages, updated_at = excluded.updated_at
  RETURNING r.id, r.messages, r.due_at
), linked AS (
  INSERT INTO draft_request_messages (request_id, message_id)
  SELECT req.id, ms.message_id FROM req, (SELECT CAST(:message_id AS bigint) AS message_id
                                          UNION SELECT message_id FROM carried) AS ms
  ON CONFLICT DO NOTHING
), logged AS (
  INSERT INTO changes (kind, conversation_id, draft_id, key, created_at)
  SELECT 'draft.superseded', :conversation_id, sup.id, 'draft:' || sup.id || '\\:superseded', :now FROM sup
  ON CONFLICT (key) DO NOTHING
)
SELECT id, messages, due_at, (SELECT 1 + count(*) FROM carried) AS added, (SELECT count(*) FROM sup) AS superseded
FROM req""")


def request_draft(conn: sa.Connection, conversation_id: int, message_id: int, *, quiet: float,
                  now: datetime | None = None) -> Requested:
    """A client message to answer (core, in the message's transaction, which holds the conversation's
    lock): supersede the open draft and add its messages and this one to the waiting request."""
    now = now or datetime.now(timezone.utc)
    if conn.dialect.name == "postgresql":
        row = conn.execute(_REQUEST_AT_ONCE, {"conversation_id": conversation_id, "message_id": message_id,
                                              "due_at": now + timedelta(seconds=quiet), "now": now}).one()
        if row.superseded:
            logger.info("drafts: conversation %s: the client wrote again, its open draft is superseded",
                        conversation_id)
        return Requested(row.id, row.messages, max(0.0, (row.due_at - now).total_seconds()), row.messages == row.added)
    superseded = stale.supersede(conn, conversation_id, "client_wrote", now)
    carried = messages_of(conn, [row.request_id for row in superseded])
    ids = [message_id] + [m for m in carried if m != message_id]
    requested = _waiting(conn, conversation_id, ids, now + timedelta(seconds=quiet), now, "client")
    logger.debug("drafts: message %s -> request %s (%d messages)", message_id, requested.request_id,
                 requested.messages)
    return requested


def request_again(conn: sa.Connection, conversation_id: int, message_ids: list[int],
                  now: datetime | None = None) -> Requested:
    """A person asks for a new draft answering ``message_ids``: due now."""
    now = now or datetime.now(timezone.utc)
    return _waiting(conn, conversation_id, message_ids, now, now, "person")


def waiting_for(conn: sa.Connection, wamid: str) -> Requested | None:
    """The waiting request that holds this message (its task to queue again after a redelivery: its first
    one may have been lost), or None."""
    row = conn.execute(
        sa.select(DraftRequest.id, DraftRequest.messages, DraftRequest.due_at)
        .join(DraftRequestMessage, DraftRequestMessage.request_id == DraftRequest.id)
        .join(Message, Message.id == DraftRequestMessage.message_id)
        .where(Message.wamid == wamid, DraftRequest.status == "waiting")).first()
    if row is None:
        return None
    due = row.due_at if row.due_at.tzinfo else row.due_at.replace(tzinfo=timezone.utc)
    return Requested(row.id, row.messages, max(0.0, (due - datetime.now(timezone.utc)).total_seconds()))
