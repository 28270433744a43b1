"""The sender's one command API: store a message to send, then queue its send task.

The CLI (``send``, ``broadcast``), core (a status that wakes a waiting message), the draft
stage and the dashboard all send through ``command`` and ``enqueue``. A command is stored
under an idempotency key in ``outbound_messages``: the same key never sends twice. The
send task is queued by name on its lane's queue (``wa.outgoing.command`` for replies,
``wa.outgoing.broadcast`` for bulk, so a broadcast never holds up a reply), with the
headers the paced consumer reads.

A reply commanded here that is not a lawyer's approval (``send``, a template sent by hand) reaches the
client another way than the conversation's draft: that draft goes stale (``waflow.drafts.stale``).
A command made from an approval carries ``approval_id``; the sender then sends it only while its words
are exactly the approved ones (``waflow.outbound.claim``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

import sqlalchemy as sa

from waflow import compose, queues
from waflow.config import settings
from waflow.db import insert
from waflow.drafts import stale
from waflow.models import OutboundMessage
from waflow import tasks

SEND_TASK = "waflow.outbound.send_message"
LANES = {"reply": queues.OUTGOING_COMMAND, "broadcast": queues.OUTGOING_BROADCAST}


class KeyReused(ValueError):
    """The idempotency key was given before for a different message; nothing was stored."""


@dataclass(frozen=True)
class Queued:
    """What the send task needs to be queued for one message."""

    id: int
    lane: str
    phone_number_id: str
    # The broadcast's token (``Broadcast.token``): the paced consumer skips the slot of a cancelled one.
    broadcast: str | None = None


def command(conn: sa.Connection, *, key: str, recipient: str, message: Any, lane: str = "reply",
            phone_number_id: str | None = None, broadcast_id: int | None = None,
            broadcast_token: str | None = None, approval_id: int | None = None) -> tuple[Queued, bool]:
    """Store a message to send under ``key``; return it and whether it is new (False: the same
    key was commanded before, and nothing changes). Queue it with ``enqueue`` after the commit.

    ``recipient`` is checked and normalised first (``compose.normalize_recipient``: a number with a
    leading 0 gets the default country code); a malformed one raises ``compose.InvalidCommand``. The same
    key with the same message is the same command; with a different message (another text, another
    recipient) it raises ``KeyReused``: reporting the old message as if it were the new one would hide
    that the new one was never sent.

    ``approval_id``: the lawyer's approval this send carries out (``waflow.drafts``)."""
    if lane not in LANES:
        raise ValueError(f"lane must be one of {', '.join(LANES)}")
    if isinstance(message, dict):
        message = compose.parse(message)
    recipient = compose.normalize_recipient(recipient, settings.default_country_code)
    number = phone_number_id or settings.phone_number_id
    payload = compose.request_body(message, recipient)
    now = datetime.now(timezone.utc)
    new_id = conn.execute(insert(conn.dialect.name, OutboundMessage).values(
        idempotency_key=key, phone_number_id=number, recipient=recipient, lane=lane, kind=message.kind,
        payload=payload, text=message.text, broadcast_id=broadcast_id,
        media_file_id=getattr(message, "file", None), approval_id=approval_id,
        status="queued",
        created_at=now, updated_at=now,
    ).on_conflict_do_nothing(index_elements=["idempotency_key"]).returning(OutboundMessage.id)).scalar()
    if new_id is not None:
        if lane == "reply" and approval_id is None and message.kind != "read":
            stale.reply_sent(conn, number, recipient)
        return Queued(new_id, lane, number, broadcast_token), True
    row = conn.execute(sa.select(OutboundMessage.id, OutboundMessage.lane, OutboundMessage.phone_number_id,
                                 OutboundMessage.payload, OutboundMessage.kind)
                       .where(OutboundMessage.idempotency_key == key)).one()
    stored = dict(row.payload)
    if row.kind in stored and isinstance(stored[row.kind], dict):
        # The sender adds Meta's media id to a file's request once it has uploaded it (outbound.attach).
        stored[row.kind] = {k: v for k, v in stored[row.kind].items() if k != "id" or "id" in payload.get(row.kind, {})}
    # Compared as stored: JSON has no tuples, and the database may have reordered the keys.
    if stored != json.loads(json.dumps(payload)) or row.phone_number_id != number:
        raise KeyReused(f"the key {key!r} was given to outbound {row.id}, a different message; "
                        "a key names one message: choose another")
    return Queued(row.id, row.lane, row.phone_number_id, broadcast_token), False


def headers(m: Queued) -> dict[str, str]:
    """What the paced consumer reads of a send message (``waflow.consumer``)."""
    values = {"lane": m.lane, "phone_number_id": m.phone_number_id}
    if m.broadcast is not None:
        values["broadcast_id"] = m.broadcast
    return values


def enqueue(messages: list[Queued], countdown: float | None = None, retries: int = 0, *,
            dispatch: Callable[..., Any] | None = None) -> None:
    """Queue the send task of each message on its lane, with what the paced consumer reads
    (through ``dispatch``, by default ``waflow.tasks.dispatch``)."""
    dispatch = dispatch or tasks.dispatch
    for m in messages:
        dispatch(SEND_TASK, (m.id,), queue=LANES[m.lane], headers=headers(m), countdown=countdown,
                 retries=retries)

