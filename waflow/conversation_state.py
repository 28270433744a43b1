"""What the inbox shows of a conversation, kept on its row in the transactions that store its messages.

The dashboard's inbox lists 10,000 conversations in a few milliseconds only if it reads each one's state
from the conversation's own row instead of from its messages. So whoever stores a message updates the row
in the same transaction (``models.Conversation`` names the columns):

- core, for a client's message (``inbound``): the last message, the client's message count, and, for a
  message that asks for an answer (``ANSWERABLE_TYPES``), ``waiting_since`` (if nobody waited yet) and
  ``urgent`` (the firm's urgency words, which core checks);
- the sender, for a reply Meta accepted (``outbound``; on PostgreSQL its one-statement twin lives in
  ``waflow.outbound.settle``): the last message, and, for a reply that ends the wait (``ends_wait``: a
  person's words or an approved draft; not a template sent by hand, not a broadcast), ``waiting_since``
  cleared: except for the client's messages stored after the reply was commanded, which the lawyer could
  not have read, and which keep the client waiting from the oldest of them;
- core again, for a reply Meta says it could not deliver (``undelivered``): the client waits again;
- the drafter, for a draft flagged urgent (``flag_urgent``).

Each also records the change in the change log (``message.new``), so an open page sees it.
``recompute`` derives every column from the messages themselves: migration 0006 did the same for the
conversations stored before it, and seeding scripts call it after writing messages directly.
"""
from __future__ import annotations

import functools
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa

from waflow import changelog
from waflow.models import OPEN_DRAFT_STATUSES, Conversation, Draft, Message, OutboundMessage

# How much of a message's text the inbox row keeps.
PREVIEW_LENGTH = 160
# The client's messages that ask for an answer (as waflow.drafts.requests drafts a reply to): a text, an
# interactive or button reply, a file; an edit counts as what it now says (one of those, in practice).
ANSWERABLE_TYPES = ("text", "interactive", "button", "image", "video", "audio", "document", "sticker", "edit")
# The client's messages stored after a reply was commanded are looked for among this many of the newest.
RECENT = 20


def preview(body: str | None) -> str | None:
    """The start of a message's text for the inbox row (whitespace folded), or None."""
    if not body:
        return None
    folded = " ".join(body.split())
    return folded[:PREVIEW_LENGTH] or None


def ends_wait(lane: str, kind: str, approval_id: int | None) -> bool:
    """Whether an accepted reply answers the client: a reply of the firm's (not a broadcast) that is a
    person's words or an approved draft. A template sent by hand is a notice, not an answer."""
    if lane != "reply" or kind == "read":
        return False
    return approval_id is not None or kind != "template"


def _aware(at: datetime | None) -> datetime | None:
    return at.replace(tzinfo=timezone.utc) if at is not None and at.tzinfo is None else at


@functools.cache
def _inbound_at_once() -> Any:
    """``inbound`` on PostgreSQL: the row updated and the change recorded in one round trip."""
    return sa.text("""
WITH updated AS (
  UPDATE conversations SET
    inbound_count = inbound_count + 1,
    last_message_at = CASE WHEN last_message_at IS NULL OR :sent_at >= last_message_at THEN :sent_at
                      ELSE last_message_at END,
    last_message_direction = CASE WHEN last_message_at IS NULL OR :sent_at >= last_message_at THEN 'inbound'
                             ELSE last_message_direction END,
    last_message_type = CASE WHEN last_message_at IS NULL OR :sent_at >= last_message_at THEN :type
                        ELSE last_message_type END,
    last_message_preview = CASE WHEN last_message_at IS NULL OR :sent_at >= last_message_at THEN :preview
                           ELSE last_message_preview END,
    waiting_since = CASE WHEN :answerable AND (waiting_since IS NULL OR :sent_at < waiting_since) THEN :sent_at
                    ELSE waiting_since END,
    urgent = urgent OR (:answerable AND :urgent)
  WHERE id = :conversation_id
  RETURNING id
)
INSERT INTO changes (kind, conversation_id, message_id, key, created_at)
SELECT 'message.new', id, :message_id, :key, :now FROM updated
ON CONFLICT (key) DO NOTHING""")


def _newer(at: Any) -> Any:
    return sa.or_(Conversation.last_message_at.is_(None), at >= Conversation.last_message_at)


def inbound(conn: sa.Connection, conversation_id: int, message_id: int, *, sent_at: datetime, type: str,
            body: str | None, answerable: bool, urgent: bool = False) -> None:
    """A client's new message (core, in its transaction): the row and the change log."""
    values = {"conversation_id": conversation_id, "message_id": message_id, "sent_at": sent_at, "type": type,
              "preview": preview(body), "answerable": answerable, "urgent": urgent,
              "key": f"message:{message_id}:new", "now": datetime.now(timezone.utc)}
    if conn.dialect.name == "postgresql":
        conn.execute(_inbound_at_once(), values)
        return
    at = sa.bindparam("sent_at", type_=sa.DateTime(timezone=True))
    newer = _newer(at)
    waits = sa.and_(sa.literal(answerable), sa.or_(Conversation.waiting_since.is_(None),
                                                   at < Conversation.waiting_since))
    conn.execute(sa.update(Conversation).where(Conversation.id == sa.bindparam("conversation_id")).values(
        inbound_count=Conversation.inbound_count + 1,
        last_message_at=sa.case((newer, at), else_=Conversation.last_message_at),
        last_message_direction=sa.case((newer, "inbound"), else_=Conversation.last_message_direction),
        last_message_type=sa.case((newer, sa.bindparam("type")), else_=Conversation.last_message_type),
        last_message_preview=sa.case((newer, sa.bindparam("preview")), else_=Conversation.last_message_preview),
        waiting_since=sa.case((waits, at), else_=Conversation.waiting_since),
        urgent=sa.or_(Conversation.urgent, sa.literal(answerable and urgent)),
    ), {k: values[k] for k in ("conversation_id", "sent_at", "type", "preview")})
    changelog.record(conn, "message.new", conversation_id=conversation_id, message_id=message_id,
                     key=values["key"])


def still_waiting_sql(conversation: str, commanded_at: str) -> str:
    """SQL for when the client's oldest message stored after ``commanded_at`` was sent (NULL: none), among
    the conversation's RECENT newest: what a reply commanded at ``commanded_at`` does not answer. For the
    sender's one-statement acceptance on PostgreSQL (``outbound`` computes the same in Python)."""
    types = ", ".join(f"'{t}'" for t in ANSWERABLE_TYPES)
    return (f"(SELECT min(r.sent_at) FROM (SELECT sent_at, direction, type, created_at FROM messages "
            f"WHERE conversation_id = {conversation} ORDER BY sent_at DESC, id DESC LIMIT {RECENT}) AS r "
            f"WHERE r.direction = 'inbound' AND r.type IN ({types}) AND r.created_at > {commanded_at})")


def _still_waiting(conn: sa.Connection, conversation_id: int, commanded_at: datetime | None) -> datetime | None:
    if commanded_at is None:
        return None
    rows = conn.execute(sa.select(Message.sent_at, Message.direction, Message.type, Message.created_at)
                        .where(Message.conversation_id == conversation_id)
                        .order_by(Message.sent_at.desc(), Message.id.desc()).limit(RECENT)).all()
    later = [_aware(r.sent_at) for r in rows if r.direction == "inbound" and r.type in ANSWERABLE_TYPES
             and r.created_at is not None and _aware(r.created_at) > _aware(commanded_at)]
    return min(later) if later else None  # type: ignore[type-var]


def outbound(conn: sa.Connection, conversation_id: int, message_id: int | None, *, sent_at: datetime, type: str,
             body: str | None, ends: bool, commanded_at: datetime | None) -> None:
    """A reply of ours that Meta accepted (the sender, in its transaction): the row and the change log.
    ``message_id`` None: its message row was there already (nothing changes)."""
    if message_id is None:
        return
    row = conn.execute(sa.select(Conversation.last_message_at, Conversation.waiting_since)
                       .where(Conversation.id == conversation_id)).first()
    if row is None:
        return
    values: dict[str, Any] = {}
    last = _aware(row.last_message_at)
    if last is None or sent_at >= last:
        values.update(last_message_at=sent_at, last_message_direction="outbound", last_message_type=type,
                      last_message_preview=preview(body))
    if ends and row.waiting_since is not None:
        values["waiting_since"] = _still_waiting(conn, conversation_id, commanded_at)
        values["urgent"] = False
    if values:
        conn.execute(sa.update(Conversation).where(Conversation.id == conversation_id).values(**values))
    changelog.record(conn, "message.new", conversation_id=conversation_id, message_id=message_id,
                     key=f"message:{message_id}:new")


def undelivered(conn: sa.Connection, conversation_id: int, sent_at: datetime) -> None:
    """Meta could not deliver a reply of ours (a ``failed`` status): the client waits again, at the latest
    since that reply, so the conversation is back among the waiting ones."""
    conn.execute(sa.update(Conversation).where(Conversation.id == conversation_id,
                                               Conversation.waiting_since.is_(None))
                 .values(waiting_since=sent_at))


def flag_urgent(conn: sa.Connection, conversation_id: int) -> None:
    """A draft flagged urgent: the conversation is pinned while its client waits."""
    conn.execute(sa.update(Conversation).where(Conversation.id == conversation_id,
                                               Conversation.waiting_since.is_not(None))
                 .values(urgent=True))


def recompute(conn: sa.Connection, conversation_id: int | None = None) -> None:
    """Derive the inbox's columns of one conversation (or of all) from their messages: the last message,
    the client's message count, and the wait since the last reply that ended one (``ends_wait``). Urgency
    comes from the open draft's flag only (core judges the words as messages come)."""
    m, later = Message.__table__.alias("m"), Message.__table__.alias("later")
    c = Conversation.__table__
    mine = m.c.conversation_id == c.c.id

    def last(column: Any) -> Any:
        return sa.select(column).where(mine).order_by(m.c.sent_at.desc(), m.c.id.desc()).limit(1).scalar_subquery()

    approved = sa.exists().where(OutboundMessage.wamid == later.c.wamid, OutboundMessage.approval_id.is_not(None))
    replied = (sa.select(sa.func.max(later.c.sent_at))
               .where(later.c.conversation_id == c.c.id, later.c.direction == "outbound",
                      sa.or_(later.c.type != "template", approved)).correlate(c).scalar_subquery())
    waiting = (sa.select(sa.func.min(m.c.sent_at))
               .where(mine, m.c.direction == "inbound", m.c.type.in_(ANSWERABLE_TYPES),
                      sa.or_(replied.is_(None), m.c.sent_at > replied)).scalar_subquery())
    update = sa.update(c).values(
        inbound_count=sa.select(sa.func.count()).where(mine, m.c.direction == "inbound").scalar_subquery(),
        last_message_at=last(m.c.sent_at), last_message_direction=last(m.c.direction),
        last_message_type=last(m.c.type), last_message_preview=last(sa.func.substr(m.c.body, 1, PREVIEW_LENGTH)),
        waiting_since=waiting)
    if conversation_id is not None:
        update = update.where(c.c.id == conversation_id)
    conn.execute(update)
    flagged = sa.exists().where(Draft.conversation_id == c.c.id, Draft.status.in_(OPEN_DRAFT_STATUSES),
                                sa.cast(Draft.flags, sa.Text).like('%"urgent"%'))
    urgent = sa.update(c).values(urgent=sa.and_(c.c.waiting_since.is_not(None), flagged))
    if conversation_id is not None:
        urgent = urgent.where(c.c.id == conversation_id)
    conn.execute(urgent)

