"""Core's side of ``wa.ai.draft.approved``: an approval handed to the sender's command API.

The send is commanded under the key ``approval:<id>``, so a redelivered or replayed message sends
once, and a later approval (of a new draft) is a new send. It carries the approval's id: the sender
checks, just before it posts, that the words are still exactly the approved ones (``outbound.claim``).
An approval whose words no longer match its own digest is refused here and never reaches the sender.
"""
from __future__ import annotations

import json
import logging
from datetime import datetime, timezone

import sqlalchemy as sa

from waflow import compose
from waflow.models import Contact, Conversation, DraftApproval, OutboundMessage
from waflow.outbound import commands

logger = logging.getLogger(__name__)


def message_of(kind: str, words: str) -> dict:
    """The command's message for approved words: a text, or a template from its canonical form."""
    if kind == "template":
        template = json.loads(words)
        return {"kind": "template", "name": template["template"], "language": template["language"],
                "parameters": template["parameters"]}
    return {"kind": "text", "body": words}


def command_approved(conn: sa.Connection, approval_id: int) -> list[commands.Queued]:
    """Command the approved send (once per approval); return what to queue after the commit."""
    row = conn.execute(
        sa.select(DraftApproval.__table__, Conversation.phone_number_id, Contact.wa_id, Contact.user_id)
        .join(Conversation, Conversation.id == DraftApproval.conversation_id)
        .join(Contact, Contact.id == Conversation.contact_id)
        .where(DraftApproval.id == approval_id)).first()
    if row is None:
        logger.error("send_approved: no approval %s, nothing sent", approval_id)
        return []
    now = datetime.now(timezone.utc)
    if compose.digest(row.text) != row.sha256:
        logger.error("send_approved: approval %s: its words do not match what was approved; refused", approval_id)
        conn.execute(sa.update(DraftApproval).where(DraftApproval.id == approval_id, DraftApproval.handed_at.is_(None))
                     .values(handed_at=now, refused="its words no longer match the approved digest"))
        return []
    queued, new = commands.command(conn, key=f"approval:{approval_id}", recipient=row.wa_id or row.user_id,
                                   message=message_of(row.kind, row.text), phone_number_id=row.phone_number_id,
                                   approval_id=approval_id)
    conn.execute(sa.update(DraftApproval).where(DraftApproval.id == approval_id, DraftApproval.handed_at.is_(None))
                 .values(handed_at=now))
    status = conn.execute(sa.select(OutboundMessage.status).where(OutboundMessage.id == queued.id)).scalar_one()
    if not new:
        logger.info("send_approved: approval %s was handed over before (outbound %s, %s)", approval_id, queued.id,
                    status)
    # Queued and not yet sent (new, or its send task's publish was lost): queue it; a second task is harmless.
    return [queued] if status == "queued" else []
