"""Core: consumes ``wa.incoming.normalized`` and persists each event in one transaction; consumes
``wa.ai.draft.approved`` and hands each approved reply to the sender.

- message: the contact (by ``wa_id`` and/or business-scoped ``user_id``), the
  conversation (contact x business number) and the message, keyed on its wamid,
  so a redelivered webhook leaves one row. A new inbound message updates what the
  dashboard's inbox shows of its conversation and records ``message.new`` in the
  change log (``waflow.conversation_state``), then reaches
  ``on_new_inbound_message``, the one place the AI draft step plugs in: a message
  to answer asks for a draft in the same transaction (``waflow.drafts.requests``).
- status: every status kept as history (also for a wamid waflow has not seen);
  the message's current status only moves forward (``models.STATUS_RANK``), and
  each move is a ``delivery.tick`` in the change log. A reply Meta could not
  deliver puts its client back among the waiting ones.
- error / field: stored in ``webhook_events``.
- approval (``send_approved``): the sender's command, keyed by the approval (``waflow.drafts.sending``).

Design: ``../shared/seed/event-bus-async-workflow.en.md`` section 3.1, step 7.
"""
from __future__ import annotations

import functools
import logging
from datetime import datetime, timezone
from types import SimpleNamespace
from typing import Any

import sqlalchemy as sa
from pydantic import ValidationError
from sqlalchemy.dialects import postgresql

from waflow import changelog, conversation_state, queues
from waflow.config import settings
from waflow.contacts import upsert_contact, upsert_conversation
from waflow.db import insert, transaction
from waflow.drafting.signals import is_urgent
from waflow.drafting.text import words
from waflow.drafts import publish, requests, sending
from waflow.events import InvalidEvent, NormalizedEvent
from waflow.models import STATUS_RANK, Message, MessageStatus, WebhookEvent, status_rank
from waflow.outbound import commands, settle
from waflow.tasks import stage_task

logger = logging.getLogger(__name__)


def _at(seconds: float | int) -> datetime:
    return datetime.fromtimestamp(seconds, timezone.utc)


@functools.cache
def _sql(dialect: str) -> SimpleNamespace:
    """The statements of the hot path, built once per dialect with bound parameters."""
    return SimpleNamespace(
        insert_message=insert(dialect, Message).on_conflict_do_nothing(index_elements=["wamid"])
        .returning(Message.id),
        insert_status=insert(dialect, MessageStatus).on_conflict_do_nothing(index_elements=["wamid", "status"]),
        insert_webhook_event=insert(dialect, WebhookEvent).on_conflict_do_nothing(index_elements=["event_id"]),
        move_status=sa.update(Message).where(Message.wamid == sa.bindparam("s_wamid"),
                                             status_rank(Message.status) < sa.bindparam("rank"))
        .values(status=sa.bindparam("s_status"), status_at=sa.bindparam("s_at"))
        .returning(Message.id, Message.conversation_id, Message.direction, Message.type, Message.sent_at),
    )


# The status moved forward and its tick recorded in the change log, in one round trip (PostgreSQL).
_RANK = str(status_rank(sa.literal_column("status")).compile(dialect=postgresql.dialect(),
                                                             compile_kwargs={"literal_binds": True}))
_MOVE_STATUS_AT_ONCE = sa.text(f"""
WITH moved AS (
  UPDATE messages SET status = :s_status, status_at = :s_at
  WHERE wamid = :s_wamid AND {_RANK} < :rank
  RETURNING id, conversation_id, direction, type, sent_at
), logged AS (
  INSERT INTO changes (kind, conversation_id, message_id, key, created_at)
  SELECT 'delivery.tick', conversation_id, id, 'message:' || id || '\\:' || :s_status, :now FROM moved
  ON CONFLICT (key) DO NOTHING
)
SELECT id, conversation_id, direction, type, sent_at FROM moved""")


def persist_message(conn: sa.Connection, event: NormalizedEvent) -> tuple[int, int] | None:
    """Store an inbound message; return its row id and its conversation's, or None if it was already stored."""
    msg, contact = event.message, event.contact
    assert msg is not None and contact is not None
    phone_number_id = event.phone_number_id or ""
    sent_at = _at(msg.timestamp)
    contact_id = upsert_contact(conn, contact)
    conversation_id = upsert_conversation(conn, contact_id, phone_number_id, event.display_phone_number, sent_at)
    content = msg.model_dump(mode="json", exclude={"wamid", "type", "timestamp", "text"}, exclude_none=True)
    message_id = conn.execute(_sql(conn.dialect.name).insert_message, {
        "wamid": msg.wamid, "conversation_id": conversation_id, "contact_id": contact_id,
        "phone_number_id": phone_number_id, "direction": "inbound", "type": msg.type, "body": msg.text,
        "sent_at": sent_at, "received_at": _at(event.received_at),
        "context_wamid": msg.context.quoted_wamid if msg.context else None, "content": content,
    }).scalar()
    if message_id is None:
        return None
    answerable = requests.draftable(event)
    urgent = answerable and bool(msg.text) and is_urgent(words(msg.text or ""))
    conversation_state.inbound(conn, conversation_id, message_id, sent_at=sent_at, type=msg.type, body=msg.text,
                               answerable=answerable, urgent=urgent)
    return message_id, conversation_id


def persist_status(conn: sa.Connection, event: NormalizedEvent, following: list | None = None) -> bool:
    """Keep a status in the history and move the message's status forward; False if already known.

    A status of one of our own sends that was left in doubt settles it as accepted; the
    messages that then go on are added to ``following``, to be queued after the commit."""
    st = event.status
    assert st is not None
    new = conn.execute(_sql(conn.dialect.name).insert_status, {
        "wamid": st.wamid, "status": st.status, "timestamp": _at(st.timestamp),
        "phone_number_id": event.phone_number_id, "recipient_id": st.recipient_id,
        "recipient_user_id": st.recipient_user_id, "biz_opaque_callback_data": st.biz_opaque_callback_data,
        "error_code": st.errors[0].code if st.errors else None,
        "content": st.model_dump(mode="json", exclude={"wamid", "status", "timestamp"}, exclude_none=True),
        "received_at": _at(event.received_at),
    }).rowcount == 1
    rank = STATUS_RANK.get(st.status)
    if rank is not None:
        _move_status(conn, st.wamid, st.status, rank, _at(st.timestamp))
    settled = settle.reconcile(conn, st.biz_opaque_callback_data, st.wamid)
    if following is not None:
        following.extend(settled)
    return new


def _move_status(conn: sa.Connection, wamid: str, status: str, rank: int, at: datetime) -> None:
    """Move the message's status forward (a status only ever replaces a lower-ranked one), record the tick
    for the dashboard, and put the client back among the waiting ones when a reply of ours failed."""
    values = {"s_wamid": wamid, "s_status": status, "s_at": at, "rank": rank}
    if conn.dialect.name == "postgresql":
        moved = conn.execute(_MOVE_STATUS_AT_ONCE, {**values, "now": datetime.now(timezone.utc)}).first()
    else:
        moved = conn.execute(_sql(conn.dialect.name).move_status, values).first()
        if moved is not None:
            changelog.record(conn, "delivery.tick", conversation_id=moved.conversation_id, message_id=moved.id,
                             key=f"message:{moved.id}:{status}")
    if moved is not None and status == "failed" and moved.direction == "outbound" and moved.type != "template":
        conversation_state.undelivered(conn, moved.conversation_id, moved.sent_at)


def persist_webhook_event(conn: sa.Connection, event: NormalizedEvent) -> bool:
    """Store a payload-level error or another webhook field; False if already stored."""
    content = (event.error.model_dump(mode="json", exclude_none=True) if event.error is not None
               else event.update.model_dump(mode="json", exclude={"field"}) if event.update else {})
    return conn.execute(_sql(conn.dialect.name).insert_webhook_event, {
        "event_id": event.event_id, "kind": event.kind, "field": event.field, "waba_id": event.waba_id,
        "phone_number_id": event.phone_number_id, "content": content, "received_at": _at(event.received_at),
    }).rowcount == 1


def on_new_inbound_message(conn: sa.Connection, message_id: int, conversation_id: int,
                           event: NormalizedEvent) -> requests.Requested | None:
    """Plug-in point for the AI draft step: runs once per new inbound message, inside its transaction.

    A message that asks for a reply supersedes the conversation's open draft and joins its waiting
    draft request (``waflow.drafts.requests``); returns the drafting task to queue after the commit."""
    if not requests.draftable(event):
        return None
    return requests.request_draft(conn, conversation_id, message_id, quiet=settings.draft_quiet_seconds)


def persist_event(conn: sa.Connection, event: NormalizedEvent, following: list | None = None,
                  drafts: list | None = None) -> bool:
    """Persist one normalized event; return False when it had been persisted before.

    ``following`` gathers the sends to queue after the commit, ``drafts`` the drafting tasks."""
    if event.kind == "message":
        stored = persist_message(conn, event)
        if stored is None:
            # Redelivered: its drafting task may never have been queued (a crash after the commit).
            again = requests.waiting_for(conn, event.message.wamid) if event.message else None
            if again is not None and drafts is not None:
                drafts.append(again)
            return False
        requested = on_new_inbound_message(conn, *stored, event)
        if requested is not None and drafts is not None:
            drafts.append(requested)
        return True
    if event.kind == "status":
        return persist_status(conn, event, following)
    return persist_webhook_event(conn, event)


@stage_task(name="waflow.core.handle_normalized", queue=queues.INCOMING_NORMALIZED)
def handle_normalized(event: dict[str, Any]) -> None:
    """Persist one normalized event."""
    try:
        parsed = NormalizedEvent.model_validate(event)
    except ValidationError as exc:
        raise InvalidEvent.from_validation(exc) from None  # pydantic's own text quotes the input
    following: list = []
    drafts: list = []
    with transaction() as conn:
        if not persist_event(conn, parsed, following, drafts):
            logger.info("handle_normalized: %s already persisted, skipped", parsed.event_id)
    commands.enqueue(following)
    for requested in drafts:
        if requested.new:  # a message that joined a waiting request: its task is already on its way
            publish.request(requested)


@stage_task(name=publish.APPROVED_TASK, queue=queues.AI_DRAFT_APPROVED)
def send_approved(approval_id: int) -> None:
    """Hand a lawyer's approved reply to the sender, once per approval."""
    with transaction() as conn:
        queued = sending.command_approved(conn, approval_id)
    commands.enqueue(queued)
