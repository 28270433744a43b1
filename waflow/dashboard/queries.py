"""The placeholder inbox's one query (the inbox issue replaces it with its own, ordered by waiting time)."""
from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from waflow.models import Contact, Conversation, Message

RECENT_LIMIT = 50


def recent_conversations(conn: sa.Connection, limit: int = RECENT_LIMIT) -> list[Any]:
    """The conversations with the newest message first, each with that message (its text, type, direction,
    time) and its contact's name and number."""
    last = (sa.select(Message.conversation_id, sa.func.max(Message.id).label("last_id"))
            .group_by(Message.conversation_id).subquery())
    return conn.execute(
        sa.select(Conversation.id, Contact.name, Contact.wa_id, Message.body, Message.type, Message.direction,
                  Message.sent_at)
        .join(Contact, Contact.id == Conversation.contact_id)
        .join(last, last.c.conversation_id == Conversation.id)
        .join(Message, Message.id == last.c.last_id)
        .order_by(Message.id.desc()).limit(limit)).all()
