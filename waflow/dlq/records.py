"""Dead-letter records: the diagnosis of a failure, published to ``wa.dead_letter``.

A record is a JSON document, not a runnable task message: which queue and task gave up on
which arguments, the exception, its traceback, the retries, the first and last failure
times. The failure handler (``waflow.tasks``) publishes one for every task that fails for
good; the ingestor publishes one for input it sets aside. Publishes are confirmed by the
broker (RabbitMQ). The recorder (``waflow.dlq.recorder``) stores them.

Also here: the count of a message's redeliveries, which the base task keeps so a message
that keeps killing its worker is dead-lettered instead of run again.
"""
from __future__ import annotations

import logging
import time
import traceback as traceback_module
import uuid
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from celery import Celery

from waflow import failures, queues
from waflow.db import insert
from waflow.models import Redelivery

logger = logging.getLogger(__name__)

RECORD_KIND = "waflow.dead_letter"
DEAD_LETTER_QUEUE = queues.queue(queues.DEAD_LETTER)


def iso(seconds: float | None) -> str | None:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat() if seconds is not None else None


def _record(*, key: str, queue: str, task: str | None, task_id: str | None, args: Any, kwargs: Any,
            error_type: str, error_message: str, traceback: str | None = None, retries: int = 0,
            first_failed_at: float | None = None, received_at: float | None = None,
            detail: str | None = None) -> dict[str, Any]:
    now = time.time()
    return {
        "kind": RECORD_KIND, "key": key, "queue": queue, "task": task, "task_id": task_id,
        "args": list(args) if args is not None else None, "kwargs": dict(kwargs or {}),
        "error_type": error_type, "error_message": error_message, "traceback": traceback, "retries": retries,
        "first_failed_at": iso(first_failed_at or now), "last_failed_at": iso(now),
        "received_at": iso(received_at), "detail": detail,
    }


def failure_record(*, task: str, task_id: str, queue: str, exc: BaseException, args: Any, kwargs: Any,
                   retries: int, first_failed_at: float | None, traceback_text: str | None) -> dict[str, Any]:
    """The record of a task run that failed for good. Its message names the error, never quotes it
    (``waflow.failures``); the original error's text, which may, goes to ``detail``."""
    reason = getattr(exc, "reason", None)
    if isinstance(reason, BaseException):  # Celery's Reject wraps the error that caused it
        exc = reason
    text = traceback_text or "".join(traceback_module.format_exception(exc))
    message = reason if isinstance(reason, str) and failures.speaks_safely(exc) else failures.describe(exc)
    return _record(key=task_id, queue=queue, task=task, task_id=task_id, args=args, kwargs=kwargs,
                   error_type=failures.error_type(exc), error_message=message, traceback=text, retries=retries,
                   first_failed_at=first_failed_at, detail=failures.original_text(exc))


def input_record(*, task: str, task_id: str | None, queue: str, reason: str, error_type: str, args: Any,
                 received_at: float | None, key: str | None = None, kwargs: dict[str, Any] | None = None,
                 detail: str | None = None) -> dict[str, Any]:
    """The record of input a task set aside itself (a body that is not a webhook, one unreadable update).

    ``key`` names the input, not the run (``update:<payload>:<position>``): the same input set aside
    again, by a redelivery or a replay that fails again, updates its record instead of adding one."""
    key = key or (f"{task_id}:" if task_id else f"input:{uuid.uuid4()}")
    return _record(key=key, queue=queue, task=task, task_id=task_id, args=args, kwargs=kwargs, error_type=error_type,
                   error_message=reason, received_at=received_at, detail=detail)


def publish(app: Celery, record: dict[str, Any]) -> None:
    """Publish one record through ``app``'s broker and return once the broker has it (publisher
    confirms on RabbitMQ)."""
    with app.producer_or_acquire() as producer:
        producer.publish(
            record, exchange=queues.EXCHANGE, routing_key=queues.DEAD_LETTER, serializer="json", delivery_mode=2,
            declare=[DEAD_LETTER_QUEUE], retry=True,
            retry_policy={"max_retries": 3, "interval_start": 0, "interval_step": 0.5, "interval_max": 2},
        )
    logger.info("dead_letter: record %s from %s (%s)", record["key"], record["queue"], record["error_type"])


def count_redelivery(conn: sa.Connection, task_id: str) -> int:
    """Count one more redelivery of ``task_id``; return how many there have been."""
    stmt = insert(conn.dialect.name, Redelivery).values(task_id=task_id, count=1, last_at=datetime.now(timezone.utc))
    stmt = stmt.on_conflict_do_update(index_elements=["task_id"], set_={"count": Redelivery.count + 1,
                                                                        "last_at": stmt.excluded.last_at})
    return conn.execute(stmt.returning(Redelivery.count)).scalar_one()
