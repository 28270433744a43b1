"""``flask --app wsgi drafts audit``: every send that carries out an approval, against that approval.

What went to Meta is read from the sender's own records, not from the approval: the digest of the
words it posted (``outbound_messages.posted_sha256``, written as it marked the send ``sending``), and,
once Meta accepted it, the request body it kept on the message (``messages.content.request``). A send
is listed when either record differs from the sha256 the approval recorded, when the approval's words
no longer match its own sha256, or when a send keyed as an approval's has no approval at all. A send
that never left (refused before sending, still queued) is not: nothing of it reached Meta.

It should always list none. Listed sends name ids and reasons, never the words.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import sqlalchemy as sa

from waflow import compose
from waflow.models import DraftApproval, Message, OutboundMessage

# What may have gone to Meta: a send marked sending at least once (posted_sha256), or settled as if it had.
MAY_HAVE_LEFT = ("sending", "accepted", "in_doubt")


@dataclass(frozen=True)
class Finding:
    outbound_id: int
    approval_id: int | None
    draft_id: int | None
    status: str
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def audit(conn: sa.Connection) -> list[Finding]:
    """Every approval-linked send whose words, as the sender recorded them, are not what was approved."""
    o, a = OutboundMessage, DraftApproval
    rows = conn.execute(
        sa.select(o.id, o.status, o.approval_id, o.payload, o.posted_sha256, a.id.label("found_approval"),
                  a.draft_id, a.text, a.sha256, Message.content.label("message_content"))
        .outerjoin(a, a.id == o.approval_id)
        .outerjoin(Message, sa.and_(Message.wamid == o.wamid, o.wamid.is_not(None)))
        .where(sa.or_(o.approval_id.is_not(None), o.idempotency_key.like("approval:%")))
        .where(sa.or_(o.posted_sha256.is_not(None), o.status.in_(MAY_HAVE_LEFT)))
        .order_by(o.id)).all()
    findings = []
    for row in rows:
        reason = _problem(row)
        if reason:
            findings.append(Finding(row.id, row.approval_id, row.draft_id, row.status, reason))
    return findings


def _problem(row: Any) -> str | None:
    if row.found_approval is None:
        return "sent as an approval's, with no approval"
    if compose.digest(row.text) != row.sha256:
        return "the approval's words no longer match its digest"
    posted = row.posted_sha256 or compose.digest(compose.approved_text(row.payload) or "")
    if posted != row.sha256:
        return "the words posted to Meta are not the approved words"
    request = (row.message_content or {}).get("request") if isinstance(row.message_content, dict) else None
    if request is not None and compose.digest(compose.approved_text(request) or "") != row.sha256:
        return "the request Meta accepted is not the approved words"
    return None
