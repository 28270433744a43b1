"""The drafter's two transactions: claim a due request (a ``pending`` draft), then store what was drafted.

Claiming is a conditional update (``waiting`` -> ``drafting``, only once due) taken under the
conversation's lock, in the transaction that adds the ``pending`` draft: a redelivered task or a
second drafter finds the request claimed and stands down. A draft left ``pending`` by a drafter that
died mid-draft is taken over by its redelivered task (the same task id), or by any task once the
claim's lease has run out (the sweep queues one).

The model is called between the two transactions, holding no connection and no lock: core can
supersede the draft meanwhile, and storing it then keeps it superseded.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import sqlalchemy as sa

from waflow import conversation_state
from waflow.drafting.types import ClientMessage, Draft as Drafted, DraftInput, HistoryLine
from waflow.drafts import stale
from waflow.models import Contact, Conversation, Draft, DraftRequest, DraftRequestMessage, Message

# Earlier lines of the conversation given to the drafter (the chat drafter bounds them again by size).
HISTORY_LINES = 20


@dataclass(frozen=True)
class Claimed:
    draft_id: int
    request_id: int
    conversation_id: int
    input: DraftInput


@dataclass(frozen=True)
class NotDue:
    seconds: float


@dataclass(frozen=True)
class Skipped:
    reason: str
    announce: int | None = None  # a draft whose wa.ai.draft.created may have been lost: publish it again


def aware(at: datetime) -> datetime:
    return at if at.tzinfo is not None else at.replace(tzinfo=timezone.utc)  # SQLite hands back naive UTC


def claim(conn: sa.Connection, request_id: int, task_id: str | None, *, lease: timedelta,
          now: datetime | None = None) -> Claimed | NotDue | Skipped:
    """Claim the request for drafting by ``task_id`` if it is due (NotDue: when it will be)."""
    now = now or datetime.now(timezone.utc)
    found = conn.execute(sa.select(DraftRequest.conversation_id).where(DraftRequest.id == request_id)).first()
    if found is None:
        return Skipped("no such request")
    stale.lock_conversation(conn, found.conversation_id)
    row = conn.execute(sa.select(DraftRequest.__table__).where(DraftRequest.id == request_id)).one()
    if row.status == "waiting":
        if aware(row.due_at) > now:
            return NotDue((aware(row.due_at) - now).total_seconds())
        claimed = conn.execute(sa.update(DraftRequest).where(DraftRequest.id == request_id,
                                                             DraftRequest.status == "waiting")
                               .values(status="drafting", claimed_by=task_id, claimed_at=now, updated_at=now))
        if claimed.rowcount != 1:
            return Skipped("claimed by another task")
        request, answers = build_input(conn, row.conversation_id, request_id)
        draft_id = conn.execute(sa.insert(Draft).values(
            conversation_id=row.conversation_id, request_id=request_id, status="pending", answers=answers,
            claimed_by=task_id, created_at=now).returning(Draft.id)).scalar_one()
        return Claimed(draft_id, request_id, row.conversation_id, request)
    draft = conn.execute(sa.select(Draft.id, Draft.status, Draft.claimed_by, Draft.announced_at)
                         .where(Draft.request_id == request_id)).first()
    if row.status == "drafting" and draft is not None:
        if draft.status != "pending":  # superseded while its drafter was away
            _done(conn, request_id, now)
            return Skipped(f"draft {draft.id} is {draft.status}")
        if draft.claimed_by != task_id and row.claimed_at is not None and aware(row.claimed_at) > now - lease:
            return Skipped(f"being drafted by task {draft.claimed_by}")
        # The same task again (its worker stopped mid-draft), or the lease ran out: draft it here.
        conn.execute(sa.update(Draft).where(Draft.id == draft.id).values(claimed_by=task_id))
        conn.execute(sa.update(DraftRequest).where(DraftRequest.id == request_id)
                     .values(claimed_by=task_id, claimed_at=now, updated_at=now))
        request, _ = build_input(conn, row.conversation_id, request_id)
        return Claimed(draft.id, request_id, row.conversation_id, request)
    if draft is not None and draft.status in ("ready", "failed") and draft.announced_at is None:
        return Skipped("already drafted", announce=draft.id)
    return Skipped(f"request {row.status}")


def _done(conn: sa.Connection, request_id: int, now: datetime) -> None:
    conn.execute(sa.update(DraftRequest).where(DraftRequest.id == request_id).values(status="done", updated_at=now))


def finish(conn: sa.Connection, claimed: Claimed, task_id: str | None, made: Drafted | None,
           error: str | None = None, now: datetime | None = None) -> str:
    """Store the draft (or why drafting failed) while this task still holds it; ``ready`` or ``failed``
    only if it is still ``pending`` (core may have superseded it meanwhile). Returns its status, or
    ``lost`` when another task took it over."""
    now = now or datetime.now(timezone.utc)
    values: dict[str, Any] = {"finished_at": now}
    if made is not None:
        final = "ready"
        values.update(
            drafter=made.drafter, model=made.model, prompt_version=made.prompt_version, text=made.text,
            language=made.language, flags=list(made.flags), confidence=made.confidence,
            sources=[{"entry_id": s.entry_id, "score": s.score} for s in made.sources],
            latency_ms=made.latency_ms, prompt_tokens=made.prompt_tokens, completion_tokens=made.completion_tokens,
            finish_reason=made.finish_reason, fallback_reason=made.fallback_reason, error=None)
    else:
        final = "failed"
        values["error"] = error or "drafting failed"
    status = sa.case((Draft.status == "pending", final), else_=Draft.status)
    row = conn.execute(sa.update(Draft).where(Draft.id == claimed.draft_id,
                                              Draft.claimed_by.is_not_distinct_from(task_id))
                       .values(status=status, **values).returning(Draft.status)).first()
    if row is None:
        return "lost"
    _done(conn, claimed.request_id, now)
    if row.status == "ready" and made is not None and "urgent" in made.flags:
        conversation_state.flag_urgent(conn, claimed.conversation_id)  # pinned in the dashboard's inbox
    return row.status


def _client_message(row: Any) -> ClientMessage:
    content = row.content or {}
    kind = row.type
    if kind == "edit":  # answered as what it now says
        kind = str((content.get("content") or {}).get("type") or "edit")
    media = content.get("media") if isinstance(content.get("media"), dict) else None
    return ClientMessage(wamid=row.wamid, type=kind, text=row.body, sent_at=aware(row.sent_at),
                         media_kind=media.get("kind") if media else None)


def build_input(conn: sa.Connection, conversation_id: int, request_id: int) -> tuple[DraftInput, list[str]]:
    """What the drafter reads: the request's messages, the conversation's earlier lines, the client's
    name, and whether a reply from the firm ever reached them. Returns it with the answered wamids."""
    rows = conn.execute(sa.select(Message.id, Message.wamid, Message.type, Message.body, Message.sent_at,
                                  Message.content)
                        .join(DraftRequestMessage, DraftRequestMessage.message_id == Message.id)
                        .where(DraftRequestMessage.request_id == request_id)
                        # Meta's timestamps are whole seconds: lines typed in one second keep the order the
                        # gateway received them in (core may store them in another).
                        .order_by(Message.sent_at, Message.received_at, Message.id)).all()
    first = min((r.id for r in rows), default=0)
    earlier = conn.execute(sa.select(Message.direction, Message.body, Message.sent_at)
                           .where(Message.conversation_id == conversation_id, Message.id < first,
                                  Message.body.is_not(None), Message.type != "reaction")
                           .order_by(Message.id.desc()).limit(HISTORY_LINES)).all()
    history = tuple(HistoryLine("client" if r.direction == "inbound" else "firm", r.body, aware(r.sent_at))
                    for r in reversed(earlier))
    name = conn.execute(sa.select(Contact.name).join(Conversation, Conversation.contact_id == Contact.id)
                        .where(Conversation.id == conversation_id)).scalar()
    replied = conn.execute(sa.select(Message.id).where(Message.conversation_id == conversation_id,
                                                       Message.direction == "outbound").limit(1)).first()
    request = DraftInput(conversation_id=conversation_id, messages=tuple(_client_message(r) for r in rows),
                         history=history, contact_name=name, first_contact=replied is None)
    return request, [r.wamid for r in rows]
