"""A file the message sends, uploaded to Meta once (``POST /{phone_number_id}/media``) before its send.

The file is a media row of ours (``waflow.media.outgoing``), stored. Meta's per-kind type and size
limits are checked first; then it is uploaded from the media store, streamed. Meta's id is
recorded on the outbound row, with the request body that now names it, while the message is still
``queued``: a retry after a successful upload sends by that id and never uploads again. An upload
Meta refuses (131053, a type it does not take) fails the message with Meta's code; a transient
failure is retried like a send, and on the last attempt the message fails and is dead-lettered
(a replay uploads again: the id was never recorded).
"""
from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa

from waflow.db import transaction
from waflow.mediastore import Store
from waflow.models import Media
from waflow.outbound.claim import Upload
from waflow.outbound.commands import Queued
from waflow.outbound.outbox import OUTBOUND, C, following
from waflow.tasks import TRANSIENT_ERRORS
from waflow.whatsapp_media import UPLOAD_LIMITS, MediaClient, MediaRefused, upload_kind

logger = logging.getLogger(__name__)


def upload(step: Upload, media: MediaClient, files: Store, database_url: str | None, *,
           last_attempt: bool) -> tuple[str, list[Queued], str | None]:
    """Upload the message's file and record Meta's id. Returns (``uploaded``, ``failed`` or ``retry``,
    the messages its failure sends on, the reason of a retry)."""
    row = step.row
    with transaction(database_url) as conn:
        file = conn.execute(sa.select(Media.status, Media.storage_key, Media.size, Media.mime_type, Media.filename)
                            .where(Media.id == row.media_file_id)).first()
    problem = _problem(file, row.kind)
    if problem is not None:
        return "failed", _fail(database_url, row, error_title=problem), None
    try:
        reader = files.open(file.storage_key)
    except FileNotFoundError:
        return "failed", _fail(database_url, row, error_title="the file to send is no longer in the media store"), None
    except TRANSIENT_ERRORS as exc:  # the object store out of reach
        return _retry(database_url, row, exc, last_attempt)
    try:
        media_id = media.upload(row.phone_number_id, reader, file.size, mime_type=file.mime_type,
                                filename=file.filename or f"file-{row.media_file_id}")
    except MediaRefused as exc:
        answer = exc.answer
        return "failed", _fail(database_url, row, error_code=answer.code,
                               error_title=answer.title or f"upload refused (HTTP {answer.http_status})",
                               error_details=answer.details), None
    except TRANSIENT_ERRORS as exc:
        return _retry(database_url, row, exc, last_attempt)
    finally:
        reader.close()
    payload = dict(row.payload)
    payload[row.kind] = {**payload.get(row.kind, {}), "id": media_id}
    with transaction(database_url) as conn:
        conn.execute(sa.update(OUTBOUND).where(C.id == row.id, C.media_id.is_(None), C.status == "queued")
                     .values(media_id=media_id, payload=payload, updated_at=datetime.now(timezone.utc)))
    logger.info("send_message: outbound %s: file %s uploaded (%d bytes)", row.id, row.media_file_id, file.size)
    return "uploaded", [], None


def _problem(file: Any, kind: str) -> str | None:
    """Why the file cannot be uploaded as ``kind``, checked as Meta would before the call; None if it can."""
    if file is None or file.status != "stored" or not file.storage_key:
        return f"the file to send is {file.status if file is not None else 'missing'}, not stored"
    if upload_kind(file.mime_type or "") != kind:
        return f"Meta does not take {file.mime_type} files as {kind}"
    if file.size > UPLOAD_LIMITS[kind]:
        return f"Meta takes {kind} files of up to {UPLOAD_LIMITS[kind]} bytes; this one has {file.size}"
    return None


def _retry(database_url: str | None, row: Any, exc: BaseException,
           last_attempt: bool) -> tuple[str, list[Queued], str | None]:
    """A transient failure: the retry policy's; on the last attempt the message fails first (then is dead-lettered)."""
    woken = _fail(database_url, row, error_title=f"upload failed: retries exhausted ({exc})") if last_attempt else []
    return "retry", woken, str(exc)


def _fail(database_url: str | None, row: Any, **error: Any) -> list[Queued]:
    """The message fails before its send (only while still queued); returns the messages it sends on."""
    with transaction(database_url) as conn:
        conn.execute(sa.update(OUTBOUND).where(C.id == row.id, C.status == "queued").values(
            status="failed", updated_at=datetime.now(timezone.utc), **error))
        return following(conn, row)
