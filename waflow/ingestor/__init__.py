"""Ingestor: consumes ``wa.incoming.raw``, produces ``wa.incoming.normalized`` and media jobs.

One webhook body in, one normalized event (``waflow.events``) out per update:
Meta batches up to 1000 updates per POST as ``entry[] x changes[] x
messages[]/statuses[]``, mixed. The body is stored verbatim for audit first.

- A body that is not a WhatsApp webhook at all (broken JSON, a foreign
  envelope) goes to the dead-letter queue at once with its reason; it is never
  retried and never blocks the queue.
- A single update inside a good envelope that cannot be read (a message with no
  id, an id too long, a value nested too deep), or that raises anything at all,
  is dead-lettered on its own; the rest of the batch goes on. Its record holds
  that update in a webhook of its own (its entry, change and metadata), its
  position and the key of the stored body, so a replay re-ingests that update
  alone, and a replay that fails again updates the same record.
- Reasons, logs and dead-letter messages name positions, types and sizes, never
  what the body says.
- A message type waflow does not know is kept as a message with its raw object.
- Any other webhook field (account, templates, calls, ...) becomes a ``field``
  event and is stored, not dropped.

Design: ``../shared/seed/event-bus-async-workflow.en.md`` section 3.1.
"""
from __future__ import annotations

import hashlib
import json
import logging
from datetime import datetime, timezone
from typing import Any

from waflow import limiter, queues
from waflow.db import insert, transaction
from waflow.dlq import records
from waflow.ingestor.splitting import (Batch, BadUpdate, NotAWebhook, Origin, Position, Rejected,  # noqa: F401
                                       media_job, parse_envelope, split_webhook)
from waflow.models import WebhookPayload
from waflow.tasks import celery_app, dispatch, stage_task

logger = logging.getLogger(__name__)


def store_payload(conn: Any, raw: bytes, sha256: str, received_at: float) -> None:
    """Keep the body verbatim for audit; a redelivered body is stored once."""
    stmt = insert(conn.dialect.name, WebhookPayload).values(
        sha256=sha256,
        body=raw,
        size=len(raw),
        received_at=datetime.fromtimestamp(received_at, timezone.utc),
    )
    conn.execute(stmt.on_conflict_do_nothing(index_elements=["sha256"]))


def _debit_inbound(batch: Batch) -> None:
    """Meta counts inbound messages against the number's throughput too: take them out of the
    send limiter's budget. Best effort: inbound work never waits on, or fails for, the limiter."""
    per_number: dict[str, int] = {}
    for event in batch.events:
        if event.kind == "message" and event.phone_number_id:
            per_number[event.phone_number_id] = per_number.get(event.phone_number_id, 0) + 1
    for number, n in per_number.items():
        try:
            limiter.default_store().debit(number, n)
        except Exception as exc:  # noqa: BLE001 - the limiter is advisory here
            logger.warning("ingest_raw: inbound not debited from the send budget (%s)", type(exc).__name__)


# --- the task --------------------------------------------------------------------------------------------------

# The next stages, by wire name (waflow/stages.py routes them): core persists, media downloads.
NORMALIZED_TASK = "waflow.core.handle_normalized"
MEDIA_TASK = "waflow.media.record_media"


@stage_task(name="waflow.ingestor.ingest_raw", queue=queues.INCOMING_RAW)
def ingest_raw(body: str, received_at: float, payload_sha256: str | None = None,
               position: dict[str, Any] | None = None) -> int:
    """Split one raw webhook into normalized events and media jobs; return how many events.

    ``payload_sha256`` and ``position``: ``body`` is the one-update webhook of a dead letter being
    replayed, cut from the body stored under that key (which is not stored again)."""
    # The gateway sent the bytes as text with undecodable bytes escaped; this restores them exactly.
    raw = body.encode("utf-8", "surrogateescape")
    origin = Origin(payload_sha256, Position.from_json(position)) if payload_sha256 and position else None
    try:
        batch = split_webhook(raw, received_at, origin)
    except NotAWebhook as exc:
        logger.warning("ingest_raw: not a WhatsApp webhook (%s), dead-lettered", exc)
        records.publish(celery_app, records.input_record(
            task=ingest_raw.name, task_id=ingest_raw.request.id, queue=queues.INCOMING_RAW, reason=str(exc),
            error_type="NotAWebhook", args=[body, received_at], received_at=received_at,
            key=f"body:{hashlib.sha256(raw).hexdigest()}"))
        return 0
    if origin is None:
        with transaction() as conn:
            store_payload(conn, raw, batch.sha256, received_at)
    for wire in batch.wire:
        dispatch(NORMALIZED_TASK, (wire,))
    for job in batch.media_jobs:
        dispatch(MEDIA_TASK, (job,))
    _debit_inbound(batch)
    for rejected in batch.rejected:
        logger.warning("ingest_raw: payload %s: %s set aside (%s), dead-lettered", batch.sha256[:12],
                       rejected.position, rejected.reason)
        records.publish(celery_app, rejected_record(rejected, batch.sha256, received_at, ingest_raw.request.id))
    return len(batch.events)


def rejected_record(rejected: Rejected, payload_sha256: str, received_at: float,
                    task_id: str | None) -> dict[str, Any]:
    """The dead-letter record of one update set aside: the update in a webhook of its own, replayed
    with its origin (the stored body's key and its position there), keyed by that origin so that
    setting it aside again updates this record."""
    where = f"{rejected.position} of the body stored in webhook_payloads as {payload_sha256}"
    try:
        args: list[Any] | None = [json.dumps(rejected.envelope, ensure_ascii=False, separators=(",", ":")),
                                  received_at]
        kwargs = {"payload_sha256": payload_sha256, "position": rejected.position.to_json()}
    except (TypeError, ValueError, RecursionError):
        # Nested past what the JSON encoder writes: not replayable; the stored body still has it.
        args, kwargs, where = None, {}, where + " (too deeply nested to copy here)"
    return records.input_record(
        task=ingest_raw.name, task_id=task_id, queue=queues.INCOMING_RAW, error_type="BadUpdate",
        reason=f"{rejected.position}: {rejected.reason}", args=args, kwargs=kwargs, received_at=received_at,
        key=f"update:{payload_sha256}:{rejected.position}", detail=where)
