"""Dead-letter queue ``wa.dead_letter``: where what cannot be processed is kept for a person.

A dead-letter record is a JSON document, not a runnable copy of a task: it says
which queue and task gave up on what, and why. It is published persistently
(with publisher confirms on RabbitMQ) so the failing message can be acknowledged
only once its record is safe.
"""
from __future__ import annotations

import logging
import traceback
import uuid
from datetime import datetime, timezone
from typing import Any

from waflow import queues
from waflow.tasks import celery_app

logger = logging.getLogger(__name__)

DEAD_LETTER_QUEUE = queues.queue(queues.DEAD_LETTER)


def make_record(*, queue: str, task: str, reason: str, error_type: str, payload: Any,
                received_at: float | None = None, retries: int = 0, task_id: str | None = None,
                exc: BaseException | None = None) -> dict[str, Any]:
    """Build a dead-letter record."""
    now = datetime.now(timezone.utc).isoformat()
    return {
        "id": str(uuid.uuid4()),
        "queue": queue,
        "task": task,
        "task_id": task_id,
        "reason": reason,
        "error_type": error_type,
        "traceback": "".join(traceback.format_exception(exc)) if exc is not None else None,
        "retries": retries,
        "first_failed_at": now,
        "last_failed_at": now,
        "received_at": received_at,
        "payload": payload,
    }


def dead_letter(**fields: Any) -> dict[str, Any]:
    """Publish one dead-letter record and wait until the broker has it."""
    record = make_record(**fields)
    with celery_app.producer_or_acquire() as producer:
        producer.publish(
            record,
            exchange=queues.EXCHANGE,
            routing_key=queues.DEAD_LETTER,
            serializer="json",
            delivery_mode=2,
            declare=[DEAD_LETTER_QUEUE],
            retry=True,
            retry_policy={"max_retries": 3, "interval_start": 0, "interval_step": 0.5, "interval_max": 2},
        )
    logger.info("dead_letter: record %s from %s (%s)", record["id"], record["queue"], record["error_type"])
    return record
