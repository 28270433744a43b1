"""The announcer stage: consumes ``wa.ai.draft.created`` and records each draft in the change log.

A draft is announced when it is ready, and when drafting failed (so a person still sees the client
waiting). The record (``draft.ready`` or ``draft.failed``, ``waflow.changelog``) is what the lawyers'
dashboard reads as "what changed since N"; ``announced_at`` on the draft tells the drafter's sweep
the announcement arrived. A redelivered message records nothing twice (the change's key).
"""
from __future__ import annotations

import logging
from datetime import datetime, timezone

import sqlalchemy as sa

from waflow import changelog, queues
from waflow.db import transaction
from waflow.drafts import publish
from waflow.models import Draft
from waflow.tasks import stage_task

logger = logging.getLogger(__name__)


def announce(conn: sa.Connection, draft_id: int) -> str | None:
    """Record the draft in the change log; return the change's kind, or None for an unknown draft."""
    row = conn.execute(sa.select(Draft.id, Draft.conversation_id, Draft.error, Draft.finished_at)
                       .where(Draft.id == draft_id)).first()
    if row is None or row.finished_at is None:
        return None  # no such draft, or not drafted yet: nothing to announce
    kind = "draft.failed" if row.error else "draft.ready"
    changelog.record(conn, kind, conversation_id=row.conversation_id, draft_id=row.id, key=f"draft:{row.id}:created")
    conn.execute(sa.update(Draft).where(Draft.id == draft_id, Draft.announced_at.is_(None))
                 .values(announced_at=datetime.now(timezone.utc)))
    return kind


@stage_task(name=publish.CREATED_TASK, queue=queues.AI_DRAFT_CREATED)
def announce_draft(draft_id: int) -> str | None:
    """Record a ready or failed draft in the change log."""
    with transaction() as conn:
        kind = announce(conn, draft_id)
    logger.info("announce_draft: draft %s %s", draft_id, kind or "unknown, skipped")
    return kind
