"""The weekly report: what the lawyers did with the drafts in one week of the firm's calendar, and how long
clients waited for the approved reply.

A week is ISO's (Monday to Sunday) in the firm's time zone (``WAFLOW_TIMEZONE``): from Monday 00:00 there to
the next Monday 00:00, whatever that is in UTC. Every decision made in it (``draft_decisions.decided_at``)
counts once, as:

- **approved unedited**: approved as drafted (``approve``);
- **lightly edited** / **heavily edited**: edited, then approved (``edit``), split by how much changed: the
  edit distance as a share of the longer text (``history.change_ratio``); under ``LIGHT_EDIT_BELOW`` (40%,
  the usual definition of a light edit in drafting tools) is light, the rest heavy;
- **template instead**: an approved template sent in the draft's place (``template``);
- **rejected**, by reason code (``REJECT_REASONS``);
- **written by hand** (``write``).

**Time to the approved reply**: for each approval (all but rejections), from the client's oldest message it
answers to the approval. The messages a draft answers are its request's (``draft_request_messages``); a
reply written with no draft open answers the client's messages since the conversation's previous reply (a
person's message, or an approval; a template is none). Its p50 and p95 are by the nearest-rank method (the
smallest time that at least that share of the replies took: always a time some reply took), computed here in
Python, so PostgreSQL and SQLite agree.

Plain functions on a connection: no Flask here.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from typing import Any, Sequence
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.orm import aliased

from waflow.drafts.history import as_utc, change_ratio
from waflow.models import REJECT_REASONS, DraftApproval, DraftDecision, DraftRequestMessage, Draft, Message

LIGHT_EDIT_BELOW = 0.40
APPROVALS = ("approve", "edit", "template", "write")
_WEEK = re.compile(r"(\d{4})-W(\d{1,2})")


@dataclass(frozen=True)
class Week:
    """One ISO week in a time zone: ``start`` (Monday 00:00 there) inclusive, ``end`` exclusive."""

    year: int
    number: int
    zone: str

    def __post_init__(self) -> None:
        date.fromisocalendar(self.year, self.number, 1)  # ValueError for a week the year does not have

    @classmethod
    def parse(cls, text: str, zone: str) -> Week:
        """``2026-W10`` (what a browser's week field sends) in ``zone``; ValueError if it is no week."""
        match = _WEEK.fullmatch((text or "").strip())
        if match is None:
            raise ValueError("a week is written 2026-W10")
        return cls(int(match.group(1)), int(match.group(2)), zone)

    @classmethod
    def containing(cls, moment: datetime, zone: str) -> Week:
        year, number, _ = moment.astimezone(ZoneInfo(zone)).isocalendar()
        return cls(year, number, zone)

    @property
    def label(self) -> str:
        return f"{self.year}-W{self.number:02d}"

    @property
    def first_day(self) -> date:
        return date.fromisocalendar(self.year, self.number, 1)

    @property
    def last_day(self) -> date:
        return self.first_day + timedelta(days=6)

    @property
    def start(self) -> datetime:
        return datetime.combine(self.first_day, time(), ZoneInfo(self.zone)).astimezone(timezone.utc)

    @property
    def end(self) -> datetime:
        return datetime.combine(self.first_day + timedelta(days=7), time(), ZoneInfo(self.zone)).astimezone(
            timezone.utc)

    def shifted(self, weeks: int) -> Week:
        year, number, _ = (self.first_day + timedelta(weeks=weeks)).isocalendar()
        return Week(year, number, self.zone)


@dataclass(frozen=True)
class Report:
    week: Week
    user_id: int | None
    approved_unedited: int = 0
    lightly_edited: int = 0
    heavily_edited: int = 0
    templates: int = 0
    rejected: dict[str, int] = field(default_factory=dict)  # every reason code, 0 included
    written: int = 0
    reply_seconds: tuple[float, ...] = ()  # each approval's time to reply, smallest first

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    @property
    def total(self) -> int:
        return (self.approved_unedited + self.lightly_edited + self.heavily_edited + self.templates
                + self.rejected_total + self.written)

    @property
    def p50(self) -> float | None:
        return nearest_rank(self.reply_seconds, 50)

    @property
    def p95(self) -> float | None:
        return nearest_rank(self.reply_seconds, 95)


def nearest_rank(ordered: Sequence[float], percent: float) -> float | None:
    """The ``percent`` percentile of ``ordered`` (sorted) by nearest rank: its ⌈percent/100 × n⌉-th value."""
    if not ordered:
        return None
    return ordered[max(1, math.ceil(percent / 100 * len(ordered))) - 1]


def weekly(conn: sa.Connection, week: Week, user_id: int | None = None) -> Report:
    """The report for ``week``: everyone's decisions, or ``user_id``'s only."""
    d = DraftDecision
    # The texts' lengths, not the texts: a week's decisions are megabytes of words.
    query = (sa.select(d.id, d.action, d.reason, sa.func.length(d.original_text).label("original_length"),
                       sa.func.length(d.final_text).label("final_length"), d.edit_distance, d.draft_id,
                       d.conversation_id, d.approval_id, d.decided_at, Draft.request_id)
             .outerjoin(Draft, Draft.id == d.draft_id)
             .where(d.decided_at >= week.start, d.decided_at < week.end).order_by(d.id))
    if user_id is not None:
        query = query.where(d.user_id == user_id)
    rows = conn.execute(query).all()
    counts = {"approve": 0, "light": 0, "heavy": 0, "template": 0, "write": 0}
    rejected = dict.fromkeys(REJECT_REASONS, 0)
    for row in rows:
        if row.action == "reject":
            rejected[row.reason if row.reason in rejected else "other"] += 1
        elif row.action == "edit":
            ratio = change_ratio(row.edit_distance, row.original_length, row.final_length)
            counts["light" if ratio is not None and ratio < LIGHT_EDIT_BELOW else "heavy"] += 1
        elif row.action in counts:
            counts[row.action] += 1
    replies = sorted(_reply_seconds(conn, [r for r in rows if r.action in APPROVALS]))
    return Report(week, user_id, approved_unedited=counts["approve"], lightly_edited=counts["light"],
                  heavily_edited=counts["heavy"], templates=counts["template"], rejected=rejected,
                  written=counts["write"], reply_seconds=tuple(replies))


def _reply_seconds(conn: sa.Connection, approvals: list[Any]) -> list[float]:
    """Each approval's time from the client's oldest message it answers (module docstring); approvals whose
    messages cannot be found (none recorded) are left out. Two queries, whatever the number of approvals."""
    oldest: dict[Any, datetime] = {}
    requests = sorted({r.request_id for r in approvals if r.request_id is not None})
    for chunk in _chunks(requests, 500):
        found = conn.execute(
            sa.select(DraftRequestMessage.request_id, sa.func.min(Message.sent_at))
            .join(Message, Message.id == DraftRequestMessage.message_id)
            .where(DraftRequestMessage.request_id.in_(chunk), Message.direction == "inbound")
            .group_by(DraftRequestMessage.request_id)).all()
        oldest.update({("request", request_id): as_utc(at) for request_id, at in found if at is not None})
    undrafted = sorted(r.id for r in approvals if r.request_id is None)
    for chunk in _chunks(undrafted, 500):
        found = conn.execute(sa.select(DraftDecision.id, _unanswered_since()).where(DraftDecision.id.in_(chunk)))
        oldest.update({("decision", decision_id): as_utc(at) for decision_id, at in found if at is not None})
    seconds = []
    for row in approvals:
        first = oldest.get(("request", row.request_id) if row.request_id is not None else ("decision", row.id))
        if first is not None:
            seconds.append(max(0.0, (as_utc(row.decided_at) - first).total_seconds()))
    return seconds


_LONG_AGO = sa.literal(datetime(1970, 1, 1, tzinfo=timezone.utc), sa.DateTime(timezone=True))


def _unanswered_since() -> Any:
    """For a reply written with no draft (a row of ``draft_decisions``): the client's oldest message, up to the
    reply, after the conversation's previous reply (a person's message or an approval before this one; a
    template is no reply). A correlated subquery, so one query serves every such reply."""
    d, sent, replied = DraftDecision, aliased(Message), aliased(Message)
    last_reply = (sa.select(sa.func.max(replied.sent_at))
                  .where(replied.conversation_id == d.conversation_id, replied.direction == "outbound",
                         replied.type != "template", replied.sent_at < d.decided_at).correlate(d).scalar_subquery())
    last_approval = (sa.select(sa.func.max(DraftApproval.created_at))
                     .where(DraftApproval.conversation_id == d.conversation_id,
                            DraftApproval.created_at < d.decided_at).correlate(d).scalar_subquery())
    return (sa.select(sa.func.min(sent.sent_at))
            .where(sent.conversation_id == d.conversation_id, sent.direction == "inbound",
                   sent.sent_at <= d.decided_at, sent.sent_at > sa.func.coalesce(last_reply, _LONG_AGO),
                   sent.sent_at > sa.func.coalesce(last_approval, _LONG_AGO))
            .correlate(d).scalar_subquery())


def _chunks(items: list[int], size: int) -> list[list[int]]:
    return [items[i:i + size] for i in range(0, len(items), size)]
