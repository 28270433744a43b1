"""The media task: record the attachment, then download, verify and store it.

``record_media`` (wire name ``waflow.media.record_media``, kept from when the stage only recorded
rows: dead letters name it) records the row as ``pending`` in its own transaction first, so the
attachment is known whatever happens next, then runs one attempt (``fetch``) outside any
transaction and records the outcome:

- ``stored``: the file is durably in the store and its row says so;
- ``failed`` with the reason for what cannot change (expired id, over 100 MB, a second SHA-256
  mismatch); a refusal a person can fix (an expired token) is dead-lettered too, for a replay;
- a transient failure is retried by the retry policy; on the last attempt the row says
  ``failed`` ("retries exhausted") and the job is dead-lettered. Replaying it
  (``flask --app wsgi dlq replay``) puts the row back to ``pending`` first (``rows.reopen``).

A row already ``stored`` or ``failed`` is left as it is: the task is idempotent under redelivery.
The message the attachment came with is stored by core, whatever happens here.
"""
from __future__ import annotations

import logging
from typing import Any

from waflow import queues
from waflow.config import settings
from waflow.db import transaction
from waflow.media import rows
from waflow.media.fetch import Refused, fetch
from waflow.mediastore import Store, default_store
from waflow.tasks import TRANSIENT_ERRORS, stage_task
from waflow.whatsapp_media import MediaClient, default_client

logger = logging.getLogger(__name__)

TASK = "waflow.media.record_media"


def process(job: dict[str, Any], *, last_attempt: bool = False, client: MediaClient | None = None,
            store: Store | None = None, database_url: str | None = None, rate: float | None = None) -> str:
    """Record one attachment and make one attempt at storing it; return where its row stands.
    ``rate``: bytes a second the download may take (default: ``WAFLOW_MEDIA_DOWNLOAD_RATE``; 0: no limit)."""
    media_id = str(job["media_id"])
    with transaction(database_url) as conn:
        rows.record_pending(conn, job)
        status = rows.status_of(conn, media_id)
    if status != "pending":
        logger.info("record_media: media %s already %s", media_id, status)
        return str(status)
    store = store or default_store()
    try:
        fetched = fetch(client or default_client(), store, media_id, declared_sha256=job.get("sha256"),
                        rate=settings.media_download_rate * 10**6 if rate is None else rate)
    except Refused as exc:
        with transaction(database_url) as conn:
            rows.mark_failed(conn, media_id, exc.reason)
        logger.warning("record_media: media %s failed: %s", media_id, exc.reason)
        if exc.replayable:
            raise
        return "failed"
    except TRANSIENT_ERRORS as exc:
        if last_attempt:
            _fail_exhausted(media_id, exc, database_url)
        raise
    with transaction(database_url) as conn:
        stored = rows.mark_stored(conn, media_id, fetched, store)
    logger.info("record_media: media %s %s (%d bytes, %s)", media_id, "stored" if stored else "settled meanwhile",
                fetched.size, fetched.detected_mime_type or "type unknown")
    return "stored"


def _fail_exhausted(media_id: str, exc: BaseException, database_url: str | None) -> None:
    reason = f"retries exhausted (last: {exc})"
    try:
        with transaction(database_url) as conn:
            rows.mark_failed(conn, media_id, reason)
    except TRANSIENT_ERRORS as again:
        # The database is away too: the row stays pending, and `media requeue-pending` finds it.
        logger.error("record_media: media %s not marked failed (%s)", media_id, type(again).__name__)


@stage_task(name=TASK, queue=queues.MEDIA_PROCESSING, prepare_replay=rows.reopen)
def record_media(job: dict[str, Any]) -> str:
    """Record one media attachment, download it, verify it and store it."""
    retries = record_media.request.retries or 0
    return process(job, last_attempt=retries >= record_media.max_retries)
