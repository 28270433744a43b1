"""Core: consumes ``wa.incoming.normalized`` and persists each event in one transaction.

- message: the contact (by ``wa_id`` and/or business-scoped ``user_id``), the
  conversation (contact x business number) and the message, keyed on its wamid,
  so a redelivered webhook leaves one row. A new inbound message then reaches
  ``on_new_inbound_message``, the one place the AI draft step plugs in.
- status: every status kept as history (also for a wamid waflow has not seen);
  the message's current status only moves forward (``models.STATUS_RANK``).
- error / field: stored in ``webhook_events``.

Design: ``../shared/seed/event-bus-async-workflow.en.md`` section 3.1, step 7.
"""
from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from waflow import queues
from waflow.db import insert, session_scope
from waflow.events import ContactInfo, NormalizedEvent
from waflow.models import STATUS_RANK, Contact, Conversation, Message, MessageStatus, WebhookEvent
from waflow.tasks import stage_task

logger = logging.getLogger(__name__)


def _at(seconds: float | int) -> datetime:
    return datetime.fromtimestamp(seconds, timezone.utc)


def upsert_contact(session: Session, info: ContactInfo) -> int:
    """Return the contact's id, creating it or filling in what it lacked."""
    keys = [c for c in ((Contact.wa_id, info.wa_id), (Contact.user_id, info.user_id)) if c[1]]
    condition = sa.or_(*(col == value for col, value in keys))
    for _attempt in range(3):
        found = session.execute(
            sa.select(Contact.id, Contact.wa_id, Contact.user_id, Contact.name, Contact.username)
            .where(condition).order_by(Contact.wa_id.is_(None)).limit(1)
        ).first()
        if found is None:
            stmt = insert(session, Contact).values(
                wa_id=info.wa_id, user_id=info.user_id, parent_user_id=info.parent_user_id,
                name=info.name, username=info.username,
            ).on_conflict_do_nothing().returning(Contact.id)
            new_id = session.execute(stmt).scalar()
            if new_id is not None:
                return new_id
            continue  # another worker created it a moment ago: read it back
        changes = {
            k: v for k, v in (("name", info.name), ("username", info.username)) if v and v != getattr(found, k)
        }
        # Fill in an id the row lacked, unless another contact already holds it.
        if info.wa_id and not found.wa_id and not _taken(session, Contact.wa_id, info.wa_id):
            changes["wa_id"] = info.wa_id
        if info.user_id and not found.user_id and not _taken(session, Contact.user_id, info.user_id):
            changes["user_id"] = info.user_id
            changes["parent_user_id"] = info.parent_user_id
        if changes:
            changes["updated_at"] = datetime.now(timezone.utc)
            session.execute(sa.update(Contact).where(Contact.id == found.id).values(**changes))
        return found.id
    raise RuntimeError(f"could not create or find contact {info.wa_id or info.user_id}")


def _taken(session: Session, column: Any, value: str) -> bool:
    return session.execute(sa.select(sa.literal(1)).where(column == value)).first() is not None


def upsert_conversation(session: Session, contact_id: int, phone_number_id: str,
                        display_phone_number: str | None, inbound_at: datetime | None) -> int:
    """Return the id of the conversation between a contact and a business number."""
    stmt = insert(session, Conversation).values(
        contact_id=contact_id, phone_number_id=phone_number_id,
        display_phone_number=display_phone_number, last_inbound_at=inbound_at,
    )
    latest = sa.case(
        (Conversation.last_inbound_at.is_(None), stmt.excluded.last_inbound_at),
        (stmt.excluded.last_inbound_at > Conversation.last_inbound_at, stmt.excluded.last_inbound_at),
        else_=Conversation.last_inbound_at,
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=["contact_id", "phone_number_id"], set_={"last_inbound_at": latest}
    ).returning(Conversation.id)
    return session.execute(stmt).scalar_one()


def persist_message(session: Session, event: NormalizedEvent) -> int | None:
    """Store an inbound message; return its row id, or None if it was already stored."""
    msg, contact = event.message, event.contact
    assert msg is not None and contact is not None
    phone_number_id = event.phone_number_id or ""
    sent_at = _at(msg.timestamp)
    contact_id = upsert_contact(session, contact)
    conversation_id = upsert_conversation(
        session, contact_id, phone_number_id, event.display_phone_number, sent_at
    )
    content = msg.model_dump(mode="json", exclude={"wamid", "type", "timestamp", "text"}, exclude_none=True)
    stmt = insert(session, Message).values(
        wamid=msg.wamid, conversation_id=conversation_id, contact_id=contact_id,
        phone_number_id=phone_number_id, direction="inbound", type=msg.type, body=msg.text,
        sent_at=sent_at, received_at=_at(event.received_at),
        context_wamid=msg.context.quoted_wamid if msg.context else None, content=content,
    ).on_conflict_do_nothing(index_elements=["wamid"]).returning(Message.id)
    return session.execute(stmt).scalar()


def _rank(column: Any) -> Any:
    return sa.case(*((column == name, rank) for name, rank in STATUS_RANK.items()), else_=0)


def persist_status(session: Session, event: NormalizedEvent) -> bool:
    """Keep a status in the history and move the message's status forward; False if already known."""
    st = event.status
    assert st is not None
    stmt = insert(session, MessageStatus).values(
        wamid=st.wamid, status=st.status, timestamp=_at(st.timestamp),
        phone_number_id=event.phone_number_id, recipient_id=st.recipient_id,
        recipient_user_id=st.recipient_user_id, biz_opaque_callback_data=st.biz_opaque_callback_data,
        error_code=st.errors[0].code if st.errors else None,
        content=st.model_dump(mode="json", exclude={"wamid", "status", "timestamp"}, exclude_none=True),
        received_at=_at(event.received_at),
    ).on_conflict_do_nothing(index_elements=["wamid", "status"])
    new = session.execute(stmt).rowcount == 1
    rank = STATUS_RANK.get(st.status)
    if rank is not None:
        # Conditional write: a status only ever replaces a lower-ranked one.
        session.execute(
            sa.update(Message)
            .where(Message.wamid == st.wamid, _rank(Message.status) < rank)
            .values(status=st.status, status_at=_at(st.timestamp))
        )
    return new


def persist_webhook_event(session: Session, event: NormalizedEvent) -> bool:
    """Store a payload-level error or another webhook field; False if already stored."""
    content = (event.error.model_dump(mode="json", exclude_none=True) if event.error is not None
               else {"value": event.update.value if event.update else None})
    stmt = insert(session, WebhookEvent).values(
        event_id=event.event_id, kind=event.kind, field=event.field, waba_id=event.waba_id,
        phone_number_id=event.phone_number_id, content=content, received_at=_at(event.received_at),
    ).on_conflict_do_nothing(index_elements=["event_id"])
    return session.execute(stmt).rowcount == 1


def on_new_inbound_message(session: Session, message_id: int, event: NormalizedEvent) -> None:
    """Plug-in point for the AI draft step: runs once per new inbound message, inside its transaction.

    The AI issue replaces this body with: record a draft request for ``message_id``
    and, after commit, publish to ``wa.ai.draft.created``. Today it only logs.
    """
    logger.debug("core: new inbound message id=%s wamid=%s", message_id, event.message and event.message.wamid)


def persist_event(session: Session, event: NormalizedEvent) -> bool:
    """Persist one normalized event; return False when it had been persisted before."""
    if event.kind == "message":
        message_id = persist_message(session, event)
        if message_id is None:
            return False
        on_new_inbound_message(session, message_id, event)
        return True
    if event.kind == "status":
        return persist_status(session, event)
    return persist_webhook_event(session, event)


@stage_task(name="waflow.core.handle_normalized", queue=queues.INCOMING_NORMALIZED)
def handle_normalized(event: dict[str, Any]) -> None:
    """Persist one normalized event."""
    parsed = NormalizedEvent.model_validate(event)
    with session_scope() as session:
        if not persist_event(session, parsed):
            logger.info("handle_normalized: %s already persisted, skipped", parsed.event_id)
