"""Drafts as the CLI and the dashboard show them: one plain dict per draft.

An approved draft's send is read from the send itself, never copied onto the draft: the outbound
message (queued, sending, accepted, failed with Meta's code, in doubt) and, once Meta accepted it,
the message's own status from Meta's webhooks (sent, delivered, read, failed).
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa

from waflow.models import (Contact, Conversation, Draft, DraftApproval, DraftDecision, Message, MessageStatus,
                           OutboundMessage, User)

LIST_LIMIT = 50


def send_state(outbound_status: str | None, message_status: str | None) -> str | None:
    """Where an approved reply stands, in one word: queued, sending, accepted, sent, delivered, read,
    failed, in_doubt or cancelled (None: no send yet)."""
    if outbound_status is None:
        return None
    if outbound_status == "accepted":
        return message_status or "accepted"
    return outbound_status


def _query() -> Any:
    failed_code = (sa.select(MessageStatus.error_code).where(MessageStatus.wamid == OutboundMessage.wamid,
                                                             MessageStatus.status == "failed")
                   .limit(1).scalar_subquery())
    return (sa.select(Draft.__table__, Contact.wa_id, Contact.user_id, Contact.name.label("contact_name"),
                      DraftApproval.id.label("approval_id"), OutboundMessage.id.label("outbound_id"),
                      OutboundMessage.status.label("outbound_status"), OutboundMessage.wamid.label("sent_wamid"),
                      OutboundMessage.error_code.label("outbound_error_code"),
                      OutboundMessage.error_title.label("outbound_error_title"),
                      Message.status.label("message_status"), failed_code.label("status_error_code"))
            .join(Conversation, Conversation.id == Draft.conversation_id)
            .join(Contact, Contact.id == Conversation.contact_id)
            .outerjoin(DraftApproval, DraftApproval.draft_id == Draft.id)
            .outerjoin(OutboundMessage, OutboundMessage.approval_id == DraftApproval.id)
            .outerjoin(Message, Message.wamid == OutboundMessage.wamid))


def _decisions(conn: sa.Connection, draft_ids: list[int]) -> dict[int, dict[str, Any]]:
    """The latest decision on each draft."""
    if not draft_ids:
        return {}
    rows = conn.execute(sa.select(DraftDecision.__table__, User.email).join(User, User.id == DraftDecision.user_id)
                        .where(DraftDecision.draft_id.in_(draft_ids)).order_by(DraftDecision.id)).all()
    return {r.draft_id: {"by": r.email, "action": r.action, "via": r.via, "at": _iso(r.decided_at),
                         "reason": r.reason, "note": r.note, "edit_distance": r.edit_distance} for r in rows}


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at is not None else None


def _as_dict(row: Any, decision: dict[str, Any] | None) -> dict[str, Any]:
    send = None
    if row.outbound_id is not None:
        state = send_state(row.outbound_status, row.message_status)
        send = {"outbound_id": row.outbound_id, "state": state, "outbound_status": row.outbound_status,
                "wamid": row.sent_wamid,
                "error_code": row.status_error_code if state == "failed" and row.status_error_code is not None
                else row.outbound_error_code,
                "error_title": row.outbound_error_title}
    return {
        "id": row.id, "conversation_id": row.conversation_id, "wa_id": row.wa_id, "user_id": row.user_id,
        "name": row.contact_name, "status": row.status, "status_reason": row.status_reason,
        "language": row.language, "flags": list(row.flags or []), "text": row.text, "answers": list(row.answers or []),
        "drafter": row.drafter, "model": row.model, "prompt_version": row.prompt_version,
        "sources": list(row.sources or []), "confidence": row.confidence, "latency_ms": row.latency_ms,
        "prompt_tokens": row.prompt_tokens, "completion_tokens": row.completion_tokens,
        "finish_reason": row.finish_reason, "fallback_reason": row.fallback_reason, "error": row.error,
        "created_at": _iso(row.created_at), "finished_at": _iso(row.finished_at), "decided_at": _iso(row.decided_at),
        "decision": decision, "approval_id": row.approval_id, "send": send,
    }


def list_drafts(conn: sa.Connection, status: str | None = None, conversation_id: int | None = None,
                limit: int = LIST_LIMIT) -> list[dict[str, Any]]:
    """The newest drafts first, optionally only those in one status or of one conversation."""
    query = _query().order_by(Draft.id.desc()).limit(limit)
    if status:
        query = query.where(Draft.status == status)
    if conversation_id is not None:
        query = query.where(Draft.conversation_id == conversation_id)
    rows = conn.execute(query).all()
    decisions = _decisions(conn, [r.id for r in rows])
    return [_as_dict(r, decisions.get(r.id)) for r in rows]


def show_draft(conn: sa.Connection, draft_id: int) -> dict[str, Any] | None:
    """One draft with everything recorded about it, or None."""
    row = conn.execute(_query().where(Draft.id == draft_id)).first()
    if row is None:
        return None
    return _as_dict(row, _decisions(conn, [row.id]).get(row.id))


def open_draft(conn: sa.Connection, conversation_id: int) -> dict[str, Any] | None:
    """The conversation's open draft (pending, ready or failed), or None: the dashboard's draft panel."""
    found = list_drafts(conn, conversation_id=conversation_id, limit=1)
    return found[0] if found and found[0]["status"] in ("pending", "ready", "failed") else None
