"""The decisions log as the audit page and its CSV show it: who decided what, when, on which draft.

One ``Decision`` per row of ``draft_decisions`` (the append-only log ``decisions`` writes), with the draft's
provenance (drafter, model, prompt version, knowledge-base sources), the client, and where the approved
reply's send stands. ``Filters`` narrow it to one person, one action and a time range (UTC; the view turns
the firm's local dates into it with ``local_days``). Newest first, by keyset: a page ends with the
``Cursor`` of its last row, and the next page starts after it, so a page costs the same however far back it
is and a decision recorded meanwhile never shifts a row onto two pages.

Plain functions on a connection: no Flask here.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from waflow.drafts.queries import send_state
from waflow.models import (DECISION_ACTIONS, Contact, Conversation, Draft, DraftDecision, Message, OutboundMessage,
                           User)

PAGE_SIZE = 50


@dataclass(frozen=True)
class Filters:
    """Which decisions: ``user_id`` (one person's; a lawyer's view always sets their own), ``action`` (one of
    ``DECISION_ACTIONS``), ``start`` inclusive and ``end`` exclusive (aware datetimes)."""

    user_id: int | None = None
    action: str | None = None
    start: datetime | None = None
    end: datetime | None = None

    def __post_init__(self) -> None:
        if self.action is not None and self.action not in DECISION_ACTIONS:
            raise ValueError(f"action must be one of {', '.join(DECISION_ACTIONS)}")


_CURSOR = re.compile(r"(\d{1,18})\.(\d{1,18})")


@dataclass(frozen=True)
class Cursor:
    """Where a page ended: the last row's time and id. Written in a URL as ``<epoch microseconds>.<id>``."""

    decided_at: datetime
    id: int

    def encode(self) -> str:
        micros = (as_utc(self.decided_at) - _EPOCH) // timedelta(microseconds=1)
        return f"{micros}.{self.id}"

    @classmethod
    def decode(cls, text: str) -> Cursor:
        match = _CURSOR.fullmatch(text or "")
        if match is None:
            raise ValueError("not a page position")
        try:
            at = _EPOCH + timedelta(microseconds=int(match.group(1)))
        except OverflowError:
            raise ValueError("not a page position") from None
        return cls(at, int(match.group(2)))


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True)
class Decision:
    id: int
    decided_at: datetime  # aware, UTC
    user_id: int
    user_name: str
    user_email: str
    via: str
    action: str  # approve | edit | template | reject | write
    reason: str | None
    note: str | None
    original_text: str | None  # the draft's words (None: written by hand with no draft open)
    final_text: str | None  # the approved words (None: rejected)
    edit_distance: int | None
    conversation_id: int
    client_name: str | None
    client_number: str | None  # the wa_id, or the business-scoped user id
    draft_id: int | None
    drafter: str | None
    model: str | None
    prompt_version: str | None
    sources: list[dict[str, Any]]  # [{"entry_id", "score"}]
    send: str | None  # send_state(): queued, sending, accepted, sent, delivered, read, failed, in_doubt, cancelled

    @property
    def sent_words(self) -> str | None:
        """What was approved, as a person reads it: the words, or for a template its name and parameters
        (the approval records a template as JSON, ``compose.canonical_template``)."""
        if self.action == "template" and self.final_text is not None:
            return template_words(self.final_text)
        return self.final_text

    @property
    def change(self) -> float | None:
        """How much of the text the lawyer changed: ``change_ratio`` (None for a template: not words)."""
        if self.action == "template":
            return None
        return change_ratio(self.edit_distance, self.original_text, self.final_text)


@dataclass(frozen=True)
class Page:
    rows: list[Decision]
    older: Cursor | None  # where the next (older) page starts; None: this is the last


def change_ratio(distance: int | None, original: str | int | None, final: str | int | None) -> float | None:
    """The edit distance as a share of the longer text (0: the same words, 1: nothing kept), as the normalised
    Levenshtein distance is defined; None when there are not two texts to compare. The texts, or their lengths
    in characters."""
    if distance is None or original is None or final is None:
        return None
    longer = max(original if isinstance(original, int) else len(original),
                 final if isinstance(final, int) else len(final))
    return distance / longer if longer else 0.0


def template_words(canonical: str) -> str:
    """``[template case_update (id)] 2026-114 | Jumat`` from a template's canonical form; the form itself if it
    is not one."""
    try:
        doc = json.loads(canonical)
        name, language, parameters = doc["template"], doc["language"], [str(p) for p in doc["parameters"]]
    except (ValueError, KeyError, TypeError):
        return canonical
    head = f"[template {name} ({language})]"
    return f"{head} {' | '.join(parameters)}" if parameters else head


def local_days(first: date | None, last: date | None, zone: str) -> tuple[datetime | None, datetime | None]:
    """The firm's calendar days ``first`` to ``last`` (both included) as [start, end) in UTC: midnight in
    ``zone`` at the start of ``first``, and at the end of ``last``."""
    tz = ZoneInfo(zone)
    start = datetime.combine(first, time(), tz).astimezone(timezone.utc) if first else None
    end = datetime.combine(last + timedelta(days=1), time(), tz).astimezone(timezone.utc) if last else None
    return start, end


def _query(filters: Filters) -> Any:
    d = DraftDecision
    query = (
        sa.select(d.id, d.decided_at, d.user_id, User.name.label("user_name"), User.email.label("user_email"),
                  d.via, d.action, d.reason, d.note, d.original_text, d.final_text, d.edit_distance,
                  d.conversation_id, d.draft_id, Contact.name.label("client_name"), Contact.wa_id,
                  Contact.user_id.label("client_user_id"), Draft.drafter, Draft.model, Draft.prompt_version,
                  Draft.sources, OutboundMessage.status.label("outbound_status"),
                  Message.status.label("message_status"))
        .join(User, User.id == d.user_id)
        .join(Conversation, Conversation.id == d.conversation_id)
        .join(Contact, Contact.id == Conversation.contact_id)
        .outerjoin(Draft, Draft.id == d.draft_id)
        .outerjoin(OutboundMessage, OutboundMessage.approval_id == d.approval_id)
        .outerjoin(Message, Message.wamid == OutboundMessage.wamid)
    )
    if filters.user_id is not None:
        query = query.where(d.user_id == filters.user_id)
    if filters.action is not None:
        query = query.where(d.action == filters.action)
    if filters.start is not None:
        query = query.where(d.decided_at >= as_utc(filters.start))
    if filters.end is not None:
        query = query.where(d.decided_at < as_utc(filters.end))
    return query.order_by(d.decided_at.desc(), d.id.desc())


def _after(query: Any, cursor: Cursor | None) -> Any:
    if cursor is None:
        return query
    d, at = DraftDecision, as_utc(cursor.decided_at)
    # The first condition alone is what an index on decided_at can serve; the second breaks ties by id.
    return query.where(d.decided_at <= at, sa.or_(d.decided_at < at, d.id < cursor.id))


def page(conn: sa.Connection, filters: Filters, after: Cursor | None = None, size: int | None = None) -> Page:
    """One page of ``size`` decisions (``PAGE_SIZE``), newest first, starting after ``after`` (None: the
    newest)."""
    size = size or PAGE_SIZE
    rows = conn.execute(_after(_query(filters), after).limit(size + 1)).all()
    decisions = [_decision(r) for r in rows[:size]]
    older = Cursor(decisions[-1].decided_at, decisions[-1].id) if len(rows) > size else None
    return Page(decisions, older)


def _decision(row: Any) -> Decision:
    return Decision(
        id=row.id, decided_at=as_utc(row.decided_at), user_id=row.user_id, user_name=row.user_name,
        user_email=row.user_email, via=row.via, action=row.action, reason=row.reason, note=row.note,
        original_text=row.original_text, final_text=row.final_text, edit_distance=row.edit_distance,
        conversation_id=row.conversation_id, client_name=row.client_name,
        client_number=row.wa_id or row.client_user_id, draft_id=row.draft_id, drafter=row.drafter,
        model=row.model, prompt_version=row.prompt_version, sources=_sources(row.sources),
        send=send_state(row.outbound_status, row.message_status))


def _sources(value: Any) -> list[dict[str, Any]]:
    """The draft's sources as recorded ([{"entry_id", "score"}]); anything else recorded there is skipped."""
    found = []
    for item in value or []:
        if isinstance(item, dict) and item.get("entry_id") is not None:
            found.append({"entry_id": str(item["entry_id"]), "score": item.get("score")})
    return found


def as_utc(at: datetime) -> datetime:
    """``at`` as an aware UTC datetime (SQLite hands back naive UTC)."""
    return at.replace(tzinfo=timezone.utc) if at.tzinfo is None else at.astimezone(timezone.utc)
