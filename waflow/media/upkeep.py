"""Keeping the media table and the store in step: rows left pending, files past their retention.

- ``requeue_pending``: inbound rows still ``pending`` and idle (recorded before the media stage
  downloaded anything, or whose worker died past the retry budget): those younger than Meta's 7
  days are queued again, older ones are failed as expired (Meta no longer has them).
- ``purge_expired``: with ``WAFLOW_MEDIA_RETENTION_DAYS`` set, stored rows older than that become
  ``deleted`` and their files are deleted, except a file that an unexpired row still points at
  (content-addressed files are shared by every row of the same bytes). Each file is deleted under
  the same lock a download takes to mark its row stored (``rows.hold``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Callable, ContextManager

import sqlalchemy as sa

from waflow.media import rows
from waflow.mediastore import Store
from waflow.models import Media, Message

logger = logging.getLogger(__name__)

M = Media.__table__
META_KEEPS = timedelta(days=7)


def requeue_pending(conn: sa.Connection, now: datetime, idle: timedelta) -> tuple[list[dict[str, Any]], int]:
    """Inbound rows pending for longer than ``idle``: the jobs to queue again (after the commit), and
    how many were failed as expired. Meta's 7 days count from the message's time when it is known."""
    sent_at = sa.func.coalesce(Message.sent_at, M.c.created_at)
    stale = sa.func.coalesce(M.c.updated_at, M.c.created_at) < now - idle
    found = conn.execute(
        sa.select(M.c.id, M.c.media_id, M.c.wamid, M.c.phone_number_id, M.c.kind, M.c.mime_type,
                  M.c.declared_sha256, M.c.filename, sent_at.label("sent_at"))
        .outerjoin(Message, Message.wamid == M.c.wamid)
        .where(M.c.status == "pending", M.c.direction == "inbound", M.c.media_id.is_not(None), stale)
        .order_by(M.c.id)).all()
    jobs, expired = [], []
    for row in found:
        at = row.sent_at if row.sent_at.tzinfo else row.sent_at.replace(tzinfo=now.tzinfo)
        if now - at >= META_KEEPS:
            expired.append(row.id)
        else:
            jobs.append({"event_id": f"media:{row.media_id}", "media_id": row.media_id, "wamid": row.wamid,
                         "phone_number_id": row.phone_number_id, "kind": row.kind, "mime_type": row.mime_type,
                         "sha256": row.declared_sha256, "filename": row.filename, "url": None})
    if expired:
        conn.execute(sa.update(M).where(M.c.id.in_(expired), M.c.status == "pending").values(
            status="failed", error="media id expired: still pending after Meta's 7 days", updated_at=now))
    if jobs:
        # Marked as touched, so a second run right after does not queue them again.
        conn.execute(sa.update(M).where(M.c.media_id.in_([j["media_id"] for j in jobs]), M.c.status == "pending")
                     .values(updated_at=now))
    return jobs, len(expired)


@dataclass
class Purged:
    rows: int = 0  # rows that became `deleted`
    files: int = 0  # files deleted from the store
    kept: int = 0  # files kept: an unexpired row still points at them


def purge_expired(transaction: Callable[[], ContextManager[sa.Connection]], store: Store, days: int,
                  now: datetime) -> Purged:
    """Delete the files of stored rows older than ``days`` days, and mark those rows ``deleted``."""
    purged = Purged()
    cutoff = now - timedelta(days=days)
    with transaction() as conn:
        purged.rows = conn.execute(sa.update(M).where(M.c.status == "stored", M.c.created_at < cutoff).values(
            status="deleted", deleted_at=now, updated_at=now)).rowcount
    # A deleted row keeps its key until its file is dealt with: a run cut short is finished by the next.
    with transaction() as conn:
        keys = conn.execute(sa.select(M.c.storage_key).where(M.c.status == "deleted", M.c.storage_key.is_not(None))
                            .distinct()).scalars().all()
    for key in keys:
        with transaction() as conn:
            rows.hold(conn, key)
            # First a write: on SQLite it takes the database's write lock, as marking a row stored does.
            conn.execute(sa.update(M).where(M.c.status == "deleted", M.c.storage_key == key)
                         .values(storage_key=None))
            shared = conn.execute(sa.select(sa.func.count()).select_from(M)
                                  .where(M.c.storage_key == key, M.c.status == "stored")).scalar()
            if shared:
                purged.kept += 1
            elif store.delete(key):
                purged.files += 1
    logger.info("media retention (%d days): %d row(s) deleted, %d file(s) deleted, %d kept for newer rows",
                days, purged.rows, purged.files, purged.kept)
    return purged
