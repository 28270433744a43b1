"""When a conversation's open draft stops answering it: superseded, and why.

A draft is open while ``pending``, ``ready`` or ``failed``. It is superseded when
- the client writes again (``client_wrote``: core, ``waflow.drafts.requests``; a new draft follows
  and answers the old messages too);
- a reply reaches the client another way (``replied``): a reply commanded through the sender's
  command API that is not an approval (``flask --app wsgi send``, a template sent by hand), or a reply
  written by hand (``decisions.write_by_hand``); a request still waiting is cancelled with it, since
  that reply answers the messages it holds. Broadcasts do not count: a bulk template is not an answer
  to what the client asked;
- a person asks for a new draft (``redraft``).

Every change to a conversation's drafts takes the conversation's row lock first (core holds it from
its upsert of the conversation), so core, the drafters and the deciders change one conversation's
drafts one at a time. This module imports no other stage: the sender imports it.
"""
from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa

from waflow import changelog, compose
from waflow.models import OPEN_DRAFT_STATUSES, Contact, Conversation, Draft, DraftRequest

logger = logging.getLogger(__name__)


def lock_conversation(conn: sa.Connection, conversation_id: int) -> Any:
    """The conversation's row, locked for the rest of the transaction (PostgreSQL), or None."""
    return conn.execute(sa.select(Conversation.__table__).where(Conversation.id == conversation_id)
                        .with_for_update()).first()


def supersede(conn: sa.Connection, conversation_id: int, reason: str, now: datetime | None = None) -> list[Any]:
    """Supersede the conversation's open draft (there is at most one); return the rows superseded
    (``id``, ``request_id``, ``status`` as it was). The caller holds the conversation's lock."""
    now = now or datetime.now(timezone.utc)
    rows = conn.execute(sa.select(Draft.id, Draft.request_id, Draft.status)
                        .where(Draft.conversation_id == conversation_id, Draft.status.in_(OPEN_DRAFT_STATUSES))
                        .with_for_update()).all()
    for row in rows:
        conn.execute(sa.update(Draft).where(Draft.id == row.id).values(
            status="superseded", status_reason=reason, decided_at=now))
        changelog.record(conn, "draft.superseded", conversation_id=conversation_id, draft_id=row.id,
                         key=f"draft:{row.id}:superseded")
        logger.info("drafts: draft %s of conversation %s superseded (%s)", row.id, conversation_id, reason)
    return list(rows)


def cancel_waiting(conn: sa.Connection, conversation_id: int, now: datetime | None = None) -> int:
    """Cancel the conversation's waiting request (a reply answered its messages); return how many."""
    return conn.execute(sa.update(DraftRequest).where(
        DraftRequest.conversation_id == conversation_id, DraftRequest.status == "waiting",
    ).values(status="cancelled", updated_at=now or datetime.now(timezone.utc))).rowcount


def answered(conn: sa.Connection, conversation_id: int, now: datetime | None = None) -> None:
    """A reply reached (or is on its way to) the client: the messages of every request of the conversation
    so far are answered (``decisions.redraft`` asks for no new draft of them)."""
    conn.execute(sa.update(DraftRequest).where(
        DraftRequest.conversation_id == conversation_id, DraftRequest.answered_at.is_(None),
        DraftRequest.status != "waiting",
    ).values(answered_at=now or datetime.now(timezone.utc)))


def conversation_of(conn: sa.Connection, phone_number_id: str, recipient: str) -> int | None:
    """The conversation between this business number and the recipient (a phone number or a
    business-scoped user id), or None if they never talked."""
    who = Contact.user_id == recipient if compose.is_user_id(recipient) else Contact.wa_id == recipient.lstrip("+")
    return conn.execute(sa.select(Conversation.id).join(Contact, Contact.id == Conversation.contact_id)
                        .where(who, Conversation.phone_number_id == phone_number_id)).scalar()


def reply_sent(conn: sa.Connection, phone_number_id: str, recipient: str) -> None:
    """A reply to the recipient was commanded another way than by an approval: the conversation's open
    draft is stale, and a request still waiting is cancelled. In the command's transaction."""
    conversation_id = conversation_of(conn, phone_number_id, recipient)
    if conversation_id is None:
        return
    lock_conversation(conn, conversation_id)
    now = datetime.now(timezone.utc)
    cancel_waiting(conn, conversation_id, now)
    supersede(conn, conversation_id, "replied", now)
    answered(conn, conversation_id, now)
