"""The inbox's one query: conversations in the order a lawyer should answer them. No Flask here.

Urgent ones first (``urgent`` is only ever set while the client waits), then the longest wait (the client's
oldest unanswered message, ``waiting_since``), then the rest by their newest message. Everything a row
shows is on the conversation's own row (``waflow.conversation_state`` keeps it) or one primary-key lookup
away (the contact, the lawyer's read count, the open draft, who has it), so a page of rows costs the same
with 10,000 conversations as with 10. On PostgreSQL the order is an index's (``ix_conversations_inbox``):
the query walks it and stops after a page.

Filters: ``all``; ``mine`` (held by the lawyer: ``claims``); ``unassigned`` (held by nobody now);
``urgent``; with any of them a search in the client's name or number.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa

from waflow.dashboard.claims import QUIET
from waflow.models import (OPEN_DRAFT_STATUSES, Assignment, Contact, Conversation, ConversationRead, Draft,
                           User)

FILTERS = ("all", "mine", "unassigned", "urgent")
PAGE = 50
MAX_SEARCH = 100


@dataclass(frozen=True)
class InboxPage:
    rows: list[Any]
    more: bool  # there are rows after these
    counts: dict[str, int]  # waiting, urgent, mine


def _search(query: Any, text: str) -> Any:
    text = text.strip()[:MAX_SEARCH]
    if not text:
        return query
    terms = [Contact.name.icontains(text, autoescape=True)]
    digits = "".join(ch for ch in text if ch.isdigit())
    if digits and len(digits) >= 3 and not any(ch.isalpha() for ch in text):
        if digits.startswith("0"):  # how Indonesian clients write their numbers: 0812... is 62812...
            terms.append(Contact.wa_id.contains(digits[1:], autoescape=True))
        terms.append(Contact.wa_id.contains(digits, autoescape=True))
    return query.where(sa.or_(*terms))


def inbox_query(user_id: int, *, filter: str = "all", search: str = "", now: datetime | None = None) -> Any:
    """The inbox's SELECT for this lawyer (``inbox`` pages it)."""
    now = now or datetime.now(timezone.utc)
    held_since = now - QUIET
    c = Conversation
    query = (
        sa.select(c.id, c.waiting_since, c.urgent, c.last_message_at, c.last_message_direction, c.last_message_type,
                  c.last_message_preview, c.last_inbound_at, Contact.name, Contact.wa_id, Contact.user_id,
                  (c.inbound_count - sa.func.coalesce(ConversationRead.inbound_seen, 0)).label("unread"),
                  Draft.id.label("draft_id"), Draft.status.label("draft_status"), Draft.flags.label("draft_flags"),
                  Assignment.user_id.label("holder_id"), User.name.label("holder_name"))
        .join(Contact, Contact.id == c.contact_id)
        .outerjoin(ConversationRead, sa.and_(ConversationRead.conversation_id == c.id,
                                             ConversationRead.user_id == user_id))
        .outerjoin(Draft, sa.and_(Draft.conversation_id == c.id, Draft.status.in_(OPEN_DRAFT_STATUSES)))
        .outerjoin(Assignment, sa.and_(Assignment.conversation_id == c.id, Assignment.assigned_at > held_since))
        .outerjoin(User, User.id == Assignment.user_id)
        .order_by(c.urgent.desc(), c.waiting_since.asc().nulls_last(), c.last_message_at.desc(), c.id.desc())
    )
    if filter == "mine":
        query = query.where(Assignment.user_id == user_id)
    elif filter == "unassigned":
        # NOT EXISTS rather than "the outer join found nobody": the planner then walks the inbox's index and
        # stops after a page, instead of joining every unassigned conversation before sorting them.
        other = Assignment.__table__.alias("held")
        query = query.where(~sa.exists().where(other.c.conversation_id == c.id, other.c.assigned_at > held_since))
    elif filter == "urgent":
        query = query.where(c.urgent.is_(True))
    return _search(query, search)


def inbox(conn: sa.Connection, user_id: int, *, filter: str = "all", search: str = "", limit: int | None = None,
          offset: int = 0, now: datetime | None = None) -> InboxPage:
    """A page of the inbox for this lawyer (``limit`` rows, PAGE by default)."""
    now = now or datetime.now(timezone.utc)
    limit = limit or PAGE
    rows = conn.execute(inbox_query(user_id, filter=filter, search=search, now=now)
                        .limit(limit + 1).offset(offset)).all()
    return InboxPage(rows[:limit], len(rows) > limit, counts(conn, user_id, now))


def counts(conn: sa.Connection, user_id: int, now: datetime | None = None) -> dict[str, int]:
    """How many clients wait, how many of them urgently, and how many conversations the lawyer holds."""
    now = now or datetime.now(timezone.utc)
    waiting = conn.execute(sa.select(sa.func.count(), sa.func.count().filter(Conversation.urgent.is_(True)))
                           .where(Conversation.waiting_since.is_not(None))).one()
    mine = conn.execute(sa.select(sa.func.count()).select_from(Assignment).where(
        Assignment.user_id == user_id, Assignment.assigned_at > now - QUIET)).scalar_one()
    return {"waiting": waiting[0], "urgent": waiting[1], "mine": mine}
