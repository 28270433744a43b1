"""What a person decides about a conversation's reply: the plain functions the CLI and the dashboard call.

- ``approve``: as drafted, edited (``text=``), or an approved template instead (``template=``);
- ``reject``: with a reason code (``REJECT_REASONS``);
- ``write_by_hand``: a reply of the lawyer's own words (the open draft goes stale);
- ``redraft``: ask for a new draft.

Each runs in the caller's transaction, takes the conversation's lock, checks, and decides with a
conditional update (``ready``/``failed`` -> ``approved``/``rejected``), so of two people deciding at
once one wins and the other is told who did what (``AlreadyDecided``). Every decision is appended to
``draft_decisions`` (who, when, through what, the original and final words, their edit distance).

An approval is recorded in ``draft_approvals`` with the sha256 of the exact words: it is the outbox of
``wa.ai.draft.approved``. After the commit the caller calls ``publish.approved(result.approval_id)``
(the sweep publishes it again if that is lost); core then hands it to the sender. ``redraft`` returns a
``Requested`` for ``publish.request``. Refusals are ``errors.REFUSALS``; nothing changes when one is raised.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Sequence

import sqlalchemy as sa
from rapidfuzz.distance import Levenshtein

from waflow import changelog, compose, users
from waflow.drafts import requests, stale
from waflow.drafts.errors import (AlreadyDecided, InvalidDecision, NotFound, NothingToDraft, NotReady,
                                  OutsideWindow, Stale)
from waflow.models import (OPEN_DRAFT_STATUSES, REJECT_REASONS, Contact, Draft, DraftApproval, DraftDecision,
                           DraftRequest, User)
from waflow.outbound.claim import window_open

logger = logging.getLogger(__name__)

VIA = ("cli", "dashboard")
# A template's language when none is given: the draft's language, in Meta's codes.
TEMPLATE_LANGUAGES = {"id": "id", "en": "en_US"}


@dataclass(frozen=True)
class Approved:
    """An approval: publish ``approval_id`` after the commit (``publish.approved``)."""

    approval_id: int
    draft_id: int | None
    conversation_id: int
    action: str  # approve | edit | template | write
    by: str


@dataclass(frozen=True)
class Rejected:
    decision_id: int
    draft_id: int
    reason: str
    by: str


Person = users.Person


def _decider(conn: sa.Connection, by: str | Person, via: str = "cli") -> Person:
    """The active user deciding (looked up again: a session may outlive a deactivation)."""
    if via not in VIA:
        raise InvalidDecision(f"via must be one of {', '.join(VIA)}")
    return users.active(conn, by.email if isinstance(by, users.Person) else by)


def _draft(conn: sa.Connection, draft_id: int) -> Any:
    """The draft, read again under its conversation's lock; NotFound if there is none."""
    found = conn.execute(sa.select(Draft.conversation_id).where(Draft.id == draft_id)).first()
    if found is None:
        raise NotFound(f"no draft {draft_id}")
    stale.lock_conversation(conn, found.conversation_id)
    return conn.execute(sa.select(Draft.__table__).where(Draft.id == draft_id)).one()


def _refuse_decided(conn: sa.Connection, draft: Any) -> None:
    """Raise why this draft can no longer be decided on, if it cannot."""
    if draft.status in ("approved", "rejected"):
        last = conn.execute(sa.select(User.email, DraftDecision.action, DraftDecision.decided_at)
                            .join(User, User.id == DraftDecision.user_id)
                            .where(DraftDecision.draft_id == draft.id)
                            .order_by(DraftDecision.id.desc()).limit(1)).first()
        raise AlreadyDecided(last.email if last else None, last.action if last else draft.status,
                             last.decided_at if last else draft.decided_at)
    if draft.status == "superseded":
        raise Stale(draft.status_reason)
    if draft.status == "pending":
        raise NotReady(f"draft {draft.id} is still being written")


def _window_or_refuse(conn: sa.Connection, conversation: Any, now: datetime) -> None:
    """Free-form words go only within 24 hours of the client's last message (Meta's rule)."""
    contact = conn.execute(sa.select(Contact.wa_id, Contact.user_id).where(Contact.id == conversation.contact_id)).one()
    recipient = contact.wa_id or contact.user_id
    if not window_open(conn, conversation.phone_number_id, recipient, now):
        last = conversation.last_inbound_at
        raise OutsideWindow(last.replace(tzinfo=timezone.utc) if last is not None and last.tzinfo is None else last)


def _words(text: str | None, template: str | None, params: Sequence[str], language: str | None,
           draft_language: str | None) -> tuple[str, str | None]:
    """(kind, words) of what is approved: the text, or the template's canonical form; checked as the
    sender's command API would check it."""
    if text is not None and template is not None:
        raise InvalidDecision("give the text or a template, not both")
    try:
        if template is not None:
            code = language or TEMPLATE_LANGUAGES.get(draft_language or "", "id")
            compose.parse({"kind": "template", "name": template, "language": code, "parameters": list(params)})
            return "template", compose.canonical_template(template, code, list(params))
        if text is not None:
            compose.parse({"kind": "text", "body": text})
    except compose.InvalidCommand as exc:
        raise InvalidDecision(f"Meta would refuse it: {exc}") from None
    return "text", text


def _record(conn: sa.Connection, *, draft_id: int | None, conversation_id: int, person: Person, via: str, action: str,
            original: str | None, final: str | None, approval_id: int | None = None, reason: str | None = None,
            note: str | None = None, now: datetime) -> int:
    """Append the decision to the audit log."""
    distance = Levenshtein.distance(original or "", final) if final is not None and original is not None else None
    return conn.execute(sa.insert(DraftDecision).values(
        draft_id=draft_id, conversation_id=conversation_id, user_id=person.id, via=via, action=action, reason=reason,
        note=note, original_text=original, final_text=final, edit_distance=distance, approval_id=approval_id,
        decided_at=now).returning(DraftDecision.id)).scalar_one()


def _approval(conn: sa.Connection, *, draft_id: int | None, conversation_id: int, person: Person, via: str,
              kind: str, words: str, now: datetime) -> int:
    return conn.execute(sa.insert(DraftApproval).values(
        draft_id=draft_id, conversation_id=conversation_id, user_id=person.id, via=via, kind=kind, text=words,
        sha256=compose.digest(words), created_at=now).returning(DraftApproval.id)).scalar_one()


def approve(conn: sa.Connection, draft_id: int, by_user: str | Person, via: str = "cli", *, text: str | None = None,
            template: str | None = None, params: Sequence[str] = (), language: str | None = None,
            now: datetime | None = None) -> Approved:
    """Approve a draft: as drafted, with ``text`` instead (edit and approve), or an approved ``template``
    with its ``params`` (outside the 24-hour window, the only way). Publish the result after the commit."""
    now = now or datetime.now(timezone.utc)
    person = _decider(conn, by_user, via)
    draft = _draft(conn, draft_id)
    _refuse_decided(conn, draft)
    kind, words = _words(text, template, params, language, draft.language)
    if words is None:
        if draft.status == "failed" or not draft.text:
            raise NotReady(f"drafting failed for draft {draft.id}: give the words (--text) or a template")
        words = draft.text
    conversation = stale.lock_conversation(conn, draft.conversation_id)
    if kind == "text":
        _window_or_refuse(conn, conversation, now)
    decided = conn.execute(sa.update(Draft).where(Draft.id == draft.id, Draft.status.in_(("ready", "failed")))
                           .values(status="approved", decided_at=now))
    if decided.rowcount != 1:  # decided meanwhile (SQLite has no row lock to wait on)
        _refuse_decided(conn, _draft(conn, draft_id))
        raise AlreadyDecided(None, None)
    stale.answered(conn, draft.conversation_id, now)
    approval_id = _approval(conn, draft_id=draft.id, conversation_id=draft.conversation_id, person=person, via=via,
                            kind=kind, words=words, now=now)
    action = "template" if kind == "template" else "approve" if words == draft.text else "edit"
    _record(conn, draft_id=draft.id, conversation_id=draft.conversation_id, person=person, via=via, action=action,
            original=draft.text, final=words, approval_id=approval_id, now=now)
    changelog.record(conn, "draft.approved", conversation_id=draft.conversation_id, draft_id=draft.id,
                     key=f"draft:{draft.id}:decided")
    logger.info("drafts: draft %s approved by user %s (%s, via %s): approval %s", draft.id, person.id, action, via,
                approval_id)
    return Approved(approval_id, draft.id, draft.conversation_id, action, person.email)


def reject(conn: sa.Connection, draft_id: int, by_user: str | Person, via: str = "cli", *, reason: str,
           note: str | None = None, now: datetime | None = None) -> Rejected:
    """Reject a draft with a reason code (``other`` needs a ``note``). Nothing is sent."""
    now = now or datetime.now(timezone.utc)
    if reason not in REJECT_REASONS:
        raise InvalidDecision(f"the reason must be one of {', '.join(REJECT_REASONS)}")
    if reason == "other" and not (note or "").strip():
        raise InvalidDecision("reason 'other' needs a note saying why")
    person = _decider(conn, by_user, via)
    draft = _draft(conn, draft_id)
    _refuse_decided(conn, draft)
    decided = conn.execute(sa.update(Draft).where(Draft.id == draft.id, Draft.status.in_(("ready", "failed")))
                           .values(status="rejected", decided_at=now))
    if decided.rowcount != 1:
        _refuse_decided(conn, _draft(conn, draft_id))
        raise AlreadyDecided(None, None)
    decision_id = _record(conn, draft_id=draft.id, conversation_id=draft.conversation_id, person=person, via=via,
                          action="reject", original=draft.text, final=None, reason=reason, note=note, now=now)
    changelog.record(conn, "draft.rejected", conversation_id=draft.conversation_id, draft_id=draft.id,
                     key=f"draft:{draft.id}:decided")
    logger.info("drafts: draft %s rejected by user %s (%s, via %s)", draft.id, person.id, reason, via)
    return Rejected(decision_id, draft.id, reason, person.email)


def write_by_hand(conn: sa.Connection, conversation_id: int, by_user: str | Person, via: str = "cli", *,
                  text: str, now: datetime | None = None) -> Approved:
    """A reply in the lawyer's own words: approved as written, sent like an approved draft; the open draft
    (compared with it in the audit log) goes stale, and a waiting request is cancelled."""
    now = now or datetime.now(timezone.utc)
    person = _decider(conn, by_user, via)
    _, words = _words(text, None, (), None, None)
    if not words or not words.strip():
        raise InvalidDecision("a reply needs words")
    conversation = stale.lock_conversation(conn, conversation_id)
    if conversation is None:
        raise NotFound(f"no conversation {conversation_id}")
    _window_or_refuse(conn, conversation, now)
    open_draft = conn.execute(sa.select(Draft.id, Draft.text).where(Draft.conversation_id == conversation_id,
                                                                   Draft.status.in_(OPEN_DRAFT_STATUSES))).first()
    stale.cancel_waiting(conn, conversation_id, now)
    stale.supersede(conn, conversation_id, "replied", now)
    stale.answered(conn, conversation_id, now)
    approval_id = _approval(conn, draft_id=None, conversation_id=conversation_id, person=person, via=via,
                            kind="text", words=words, now=now)
    _record(conn, draft_id=open_draft.id if open_draft else None, conversation_id=conversation_id, person=person,
            via=via, action="write", original=open_draft.text if open_draft else None, final=words,
            approval_id=approval_id, now=now)
    changelog.record(conn, "reply.written", conversation_id=conversation_id,
                     draft_id=open_draft.id if open_draft else None, key=f"approval:{approval_id}:written")
    logger.info("drafts: reply written by user %s for conversation %s (via %s): approval %s", person.id,
                conversation_id, via, approval_id)
    return Approved(approval_id, None, conversation_id, "write", person.email)


def redraft(conn: sa.Connection, conversation_id: int, by_user: str | Person | None = None,
            now: datetime | None = None) -> requests.Requested:
    """Ask for a new draft of the conversation's reply, answering what its latest draft answered (unless
    a reply reached the client since: an approval, a reply by hand, ``send``). Queue the result with
    ``publish.request``."""
    now = now or datetime.now(timezone.utc)
    if by_user is not None:
        _decider(conn, by_user)
    if stale.lock_conversation(conn, conversation_id) is None:
        raise NotFound(f"no conversation {conversation_id}")
    latest = conn.execute(sa.select(Draft.id, Draft.request_id, Draft.status, Draft.status_reason,
                                    DraftRequest.answered_at)
                          .join(DraftRequest, DraftRequest.id == Draft.request_id)
                          .where(Draft.conversation_id == conversation_id).order_by(Draft.id.desc()).limit(1)).first()
    waiting = conn.execute(sa.select(DraftRequest.id).where(DraftRequest.conversation_id == conversation_id,
                                                            DraftRequest.status == "waiting")).first()
    redoable = latest is not None and latest.answered_at is None and (
        latest.status in ("pending", "ready", "failed", "rejected") or latest.status_reason == "redraft")
    if not redoable and not waiting:
        raise NothingToDraft(f"conversation {conversation_id} has no unanswered message to draft a reply to")
    ids = requests.messages_of(conn, [latest.request_id]) if redoable else []
    stale.supersede(conn, conversation_id, "redraft", now)
    return requests.request_again(conn, conversation_id, ids, now)
