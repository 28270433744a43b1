"""The media table's statements: a row recorded, stored, failed, reopened for a replay.

Every change is a conditional UPDATE from ``pending``, checked by its row count: a redelivered
or duplicated task changes nothing that another copy settled. A stored file and the retention
command that may delete it take the same lock on its key (``hold``), so a file is never deleted
between the moment a download finds it in the store and the moment its row says ``stored``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa

from waflow.db import insert
from waflow.dlq.tooling import NotReplayable
from waflow.mediastore import Store
from waflow.models import Media
from waflow.tasks import TransientError

logger = logging.getLogger(__name__)

M = Media.__table__


@dataclass(frozen=True)
class Fetched:
    """A file in the media store, as the media stage verified it."""

    key: str
    size: int
    sha256: str  # hex
    detected_mime_type: str | None


def now() -> datetime:
    return datetime.now(timezone.utc)


def record_pending(conn: sa.Connection, job: dict[str, Any]) -> bool:
    """Record an inbound attachment as pending; return False if it was already known."""
    at = now()
    stmt = insert(conn.dialect.name, Media).values(
        media_id=job["media_id"],
        wamid=job["wamid"],
        direction="inbound",
        phone_number_id=job.get("phone_number_id"),
        kind=job["kind"],
        mime_type=job.get("mime_type"),
        declared_sha256=job.get("sha256"),
        filename=job.get("filename"),
        url=job.get("url"),
        status="pending",
        created_at=at,
        updated_at=at,
    )
    result = conn.execute(stmt.on_conflict_do_nothing(index_elements=["media_id"]))
    return result.rowcount == 1


def status_of(conn: sa.Connection, media_id: str) -> str | None:
    return conn.execute(sa.select(M.c.status).where(M.c.media_id == media_id)).scalar()


def hold(conn: sa.Connection, key: str) -> None:
    """Lock ``key`` until the transaction ends (PostgreSQL's advisory lock). On SQLite the first write
    of a transaction locks the whole database, which serializes the same transactions."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"), {"key": key})


def mark_stored(conn: sa.Connection, media_id: str, fetched: Fetched, store: Store) -> bool:
    """The file is durably in the store: the row says so (only if still pending). Raises TransientError
    if the file is no longer there (retention deleted its last copy meanwhile): the download runs again."""
    hold(conn, fetched.key)
    at = now()
    done = conn.execute(sa.update(M).where(M.c.media_id == media_id, M.c.status == "pending").values(
        status="stored", size=fetched.size, sha256=fetched.sha256, storage_key=fetched.key,
        detected_mime_type=fetched.detected_mime_type, error=None, stored_at=at, updated_at=at)).rowcount == 1
    if done and not store.exists(fetched.key):
        raise TransientError(f"media {media_id}: its file left the store before the row was marked stored")
    return done


def mark_failed(conn: sa.Connection, media_id: str, reason: str) -> bool:
    """The media cannot be had (only while pending); ``reason`` is Meta's code or ours, never client content."""
    return conn.execute(sa.update(M).where(M.c.media_id == media_id, M.c.status == "pending").values(
        status="failed", error=reason, updated_at=now())).rowcount == 1


def reopen(conn: sa.Connection, args: list[Any], _kwargs: dict[str, Any]) -> None:
    """Before a dead-lettered media job is replayed: its row goes back to ``pending``. One stored
    meanwhile is refused (nothing to do); one not recorded yet is recorded by the replay itself."""
    job = args[0] if args and isinstance(args[0], dict) else {}
    media_id = job.get("media_id")
    if not media_id:
        raise NotReplayable("the dead letter names no media id")
    conn.execute(sa.update(M).where(M.c.media_id == str(media_id), M.c.status == "failed").values(
        status="pending", error=None, updated_at=now()))
    if status_of(conn, str(media_id)) == "stored":
        raise NotReplayable(f"media {media_id} is stored already: nothing to download again")
    return None
