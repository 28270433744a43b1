"""Media stage: consumes ``wa.media.processing``.

For now it records each attachment as ``pending`` (idempotently, keyed on
Meta's media id) so nothing is dropped; downloading comes with the media issue.
"""
from __future__ import annotations

import logging
from typing import Any

import sqlalchemy as sa

from waflow import queues
from waflow.db import insert, transaction
from waflow.models import Media
from waflow.tasks import stage_task

logger = logging.getLogger(__name__)


def record_pending(conn: sa.Connection, job: dict[str, Any]) -> bool:
    """Record a media attachment as pending; return False if it was already known."""
    stmt = insert(conn.dialect.name, Media).values(
        media_id=job["media_id"],
        wamid=job["wamid"],
        phone_number_id=job.get("phone_number_id"),
        kind=job["kind"],
        mime_type=job.get("mime_type"),
        sha256=job.get("sha256"),
        filename=job.get("filename"),
        url=job.get("url"),
        status="pending",
    )
    result = conn.execute(stmt.on_conflict_do_nothing(index_elements=["media_id"]))
    return result.rowcount == 1


@stage_task(name="waflow.media.record_media", queue=queues.MEDIA_PROCESSING)
def record_media(job: dict[str, Any]) -> None:
    """Record one media attachment as pending download."""
    with transaction() as conn:
        if not record_pending(conn, job):
            logger.info("record_media: media_id=%s already recorded", job["media_id"])
