"""A conversation as its page shows it: the client, a page of messages with their files and ticks, the
replies still on their way, the 24-hour window. Plain functions, no Flask.

Messages are read by keyset, newest first, on ``(sent_at, id)`` (``ix_messages_conversation_sent``): the
newest page of a 2,000-message conversation reads 51 index entries, and an older page starts from the
first message of the page after it (``before``), never counting what lies behind it. Each page then takes
one query for its files and one for Meta's reasons of its failed replies, whatever its length.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import sqlalchemy as sa

from waflow.models import Contact, Conversation, Media, Message, MessageStatus, OutboundMessage

PAGE = 50
WINDOW = timedelta(hours=24)
# Replies commanded but not (yet) accepted by Meta, shown under the newest page: the latest few.
PENDING_LIMIT = 10


@dataclass
class Page:
    messages: list[dict[str, Any]]
    older: int | None  # the id to ask for the page before this one (``before=``), None at the start
    newest: bool  # this is the newest page (live updates refresh it)
    pending: list[Any] = field(default_factory=list)  # our replies not accepted by Meta (newest page only)


def _aware(at: datetime | None) -> datetime | None:
    return at.replace(tzinfo=timezone.utc) if at is not None and at.tzinfo is None else at


def header(conn: sa.Connection, conversation_id: int) -> Any | None:
    """The conversation with its client's name and ids, or None."""
    return conn.execute(
        sa.select(Conversation.id, Conversation.phone_number_id, Conversation.last_inbound_at,
                  Conversation.waiting_since, Conversation.urgent, Conversation.inbound_count,
                  Contact.name, Contact.wa_id, Contact.user_id)
        .join(Contact, Contact.id == Conversation.contact_id).where(Conversation.id == conversation_id)).first()


def window_left(last_inbound_at: datetime | None, now: datetime | None = None) -> timedelta | None:
    """How long free-form replies may still go (Meta's 24 hours from the client's last message); None when
    the window is closed."""
    last = _aware(last_inbound_at)
    if last is None:
        return None
    left = last + WINDOW - (now or datetime.now(timezone.utc))
    return left if left > timedelta(0) else None


def messages(conn: sa.Connection, conversation_id: int, before: int | None = None, limit: int = PAGE) -> Page:
    """A page of the conversation's messages, oldest first: the newest ones, or those before message
    ``before`` (an id of this conversation; an unknown one gives the newest page)."""
    m = Message
    query = (sa.select(m.id, m.wamid, m.direction, m.type, m.body, m.sent_at, m.status, m.status_at, m.content)
             .where(m.conversation_id == conversation_id))
    anchor = None
    if before is not None:
        anchor = conn.execute(sa.select(m.sent_at, m.id).where(m.id == before,
                                                                m.conversation_id == conversation_id)).first()
    if anchor is not None:
        query = query.where(sa.tuple_(m.sent_at, m.id) < sa.tuple_(sa.literal(anchor.sent_at, m.sent_at.type),
                                                                   sa.literal(anchor.id)))
    rows = conn.execute(query.order_by(m.sent_at.desc(), m.id.desc()).limit(limit + 1)).all()
    shown = list(reversed(rows[:limit]))
    found = [_as_dict(r) for r in shown]
    _attach_media(conn, found)
    _attach_failures(conn, found)
    return Page(found, shown[0].id if len(rows) > limit and shown else None, anchor is None)


def _as_dict(row: Any) -> dict[str, Any]:
    content = row.content if isinstance(row.content, dict) else {}
    inner = content.get("content") if isinstance(content.get("content"), dict) else {}
    return {"id": row.id, "wamid": row.wamid, "direction": row.direction, "type": row.type, "body": row.body,
            "sent_at": _aware(row.sent_at), "status": row.status, "status_at": _aware(row.status_at),
            "content": inner, "outbound_id": content.get("outbound_id"),
            "declared_media": content.get("media") if isinstance(content.get("media"), dict) else None,
            "media": None, "failure": None}


def _attach_media(conn: sa.Connection, found: list[dict[str, Any]]) -> None:
    """Each message's file, as the media stage recorded it: a client's by wamid, ours by its outbound row."""
    inbound = {m["wamid"]: m for m in found if m["direction"] == "inbound" and m["declared_media"]}
    outbound = {m["outbound_id"]: m for m in found if m["direction"] == "outbound" and m["outbound_id"]}
    if inbound:
        for row in conn.execute(_MEDIA.where(Media.wamid.in_(list(inbound)))).all():
            inbound[row.wamid]["media"] = row
    if outbound:
        for row in conn.execute(_MEDIA.add_columns(OutboundMessage.id.label("outbound_id"))
                                .join(OutboundMessage, OutboundMessage.media_file_id == Media.id)
                                .where(OutboundMessage.id.in_(list(outbound)))).all():
            outbound[row.outbound_id]["media"] = row


_MEDIA = sa.select(Media.id, Media.wamid, Media.kind, Media.status, Media.error, Media.filename, Media.size,
                   Media.mime_type, Media.detected_mime_type)


def _attach_failures(conn: sa.Connection, found: list[dict[str, Any]]) -> None:
    """Meta's code and words for each of our replies it could not deliver (its ``failed`` status webhook)."""
    failed = {m["wamid"]: m for m in found if m["direction"] == "outbound" and m["status"] == "failed"}
    if not failed:
        return
    for row in conn.execute(sa.select(MessageStatus.wamid, MessageStatus.error_code, MessageStatus.content)
                            .where(MessageStatus.wamid.in_(list(failed)), MessageStatus.status == "failed")).all():
        errors = (row.content or {}).get("errors") if isinstance(row.content, dict) else None
        first = errors[0] if isinstance(errors, list) and errors and isinstance(errors[0], dict) else {}
        failed[row.wamid]["failure"] = {"code": row.error_code, "title": first.get("title") or first.get("message")}


def pending(conn: sa.Connection, conversation: Any, since: datetime | None = None) -> list[dict[str, Any]]:
    """Our replies to this client that Meta has not accepted, commanded after ``since`` (the first message
    of the newest page): queued, being sent, in doubt, failed before Meta took them (its code and words),
    cancelled. Oldest first, the latest PENDING_LIMIT at most."""
    recipients = [r for r in (conversation.wa_id, f"+{conversation.wa_id}" if conversation.wa_id else None,
                              conversation.user_id) if r]
    if not recipients:
        return []
    o = OutboundMessage
    query = (sa.select(o.id, o.kind, o.text, o.status, o.error_code, o.error_title, o.created_at, o.approval_id)
             .where(o.phone_number_id == conversation.phone_number_id, o.recipient.in_(recipients),
                    o.status != "accepted", o.kind != "read", o.lane == "reply"))
    if since is not None:
        query = query.where(o.created_at >= since)
    rows = conn.execute(query.order_by(o.id.desc()).limit(PENDING_LIMIT)).all()
    return [{**row._mapping, "created_at": _aware(row.created_at)} for row in reversed(rows)]
