"""The dead-letter recorder: consumes ``wa.dead_letter`` into the ``dead_letters`` table.

Two kinds of message reach the queue, and ``Recorder`` (run as ``flask --app wsgi dlq
record``, the Procfile's ``deadletter`` line; not a Celery worker) stores both:

- **dead-letter records** (``waflow.dlq.records``), published by the failure handler and
  the ingestor;
- **the broker's own copies**: every work queue dead-letters through ``wa.dlx`` into this
  queue, so a message rejected without requeue (every task failing for good is, after its
  record), or past a quorum queue's delivery limit, is here too, headers and ``x-death``
  included. It merges with its record into one row (the key is the task id); if the record
  never came, the copy alone names the task, its arguments and the broker's reason.

The recorder acknowledges a message only once its row is committed: a database outage
leaves the messages in the queue. It also deletes rows past the retention period.
"""
from __future__ import annotations

import json
import logging
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import sqlalchemy as sa
from kombu import Connection
from kombu.mixins import ConsumerMixin

from waflow import failures
from waflow.db import insert, transaction
from waflow.dlq.records import DEAD_LETTER_QUEUE, RECORD_KIND, iso
from waflow.models import DeadLetter, DeadLetterReplay, Redelivery
from waflow.tasks import celery_app, is_transient

logger = logging.getLogger(__name__)

# Rows of `redeliveries` only matter while a message can still come back.
REDELIVERY_MEMORY = timedelta(days=7)


def _when(value: Any) -> datetime | None:
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value, timezone.utc)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return None
    return None


def record_from_message(body: bytes, headers: dict[str, Any] | None) -> dict[str, Any]:
    """Turn whatever arrived in ``wa.dead_letter`` into a row's values."""
    headers = headers or {}
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        doc = None
    if isinstance(doc, dict) and doc.get("kind") == RECORD_KIND and doc.get("key"):
        return {**{k: v for k, v in doc.items() if k != "kind"}, "source": "handler"}
    deaths = headers.get("x-death") or []
    death = deaths[0] if deaths and isinstance(deaths[0], dict) else {}
    if headers.get("task") and headers.get("id") and isinstance(doc, list) and len(doc) >= 2:
        # A Celery task message RabbitMQ dead-lettered (protocol 2 body: [args, kwargs, embed]).
        reason = str(death.get("reason", "unknown"))
        return {
            "key": str(headers["id"]), "queue": str(death.get("queue") or headers.get("x-first-death-queue") or "?"),
            "task": str(headers["task"]), "task_id": str(headers["id"]), "args": doc[0], "kwargs": doc[1],
            "error_type": None, "error_message": f"the broker dead-lettered the message ({reason})",
            "retries": headers.get("retries"), "last_failed_at": _death_time(death), "source": "broker",
            "broker_reason": reason,
        }
    # Something waflow did not write: keep it as it came, never drop it.
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)
    return {"key": "unknown:" + uuid.uuid5(uuid.NAMESPACE_OID, text).hex, "queue": str(death.get("queue") or "?"),
            "error_type": None, "error_message": "a message waflow does not recognise", "source": "unknown",
            "broker_reason": str(death["reason"]) if death.get("reason") else None, "raw": text,
            "last_failed_at": iso(time.time())}


def _death_time(death: dict[str, Any]) -> str:
    """When RabbitMQ dead-lettered the message (x-death's time), else now."""
    when = death.get("time")
    if isinstance(when, datetime):
        return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).isoformat()
    return iso(time.time())


def unstorable(body: bytes, values: dict[str, Any], exc: Exception) -> dict[str, Any]:
    """A row for a dead-letter message the database refused as it came: its text escaped (NULs and
    all), no JSON columns, the reason why."""
    text = body.decode("utf-8", "backslashreplace") if isinstance(body, bytes) else str(body)
    return {"key": values["key"], "queue": values.get("queue") or "?", "task": values.get("task"),
            "task_id": values.get("task_id"), "error_type": values.get("error_type"),
            "error_message": f"stored escaped: the database refused it as it came ({type(exc).__name__})",
            "source": "unstorable", "raw": text.replace("\x00", "\\x00"),
            "last_failed_at": values.get("last_failed_at")}


_FILLED_IN = ("task", "task_id", "args", "kwargs", "error_type", "traceback", "detail", "retries", "first_failed_at",
              "received_at", "broker_reason", "raw")


def store(conn: sa.Connection, values: dict[str, Any]) -> None:
    """Insert a dead letter, or merge a second message about the same failure into its row.

    A handler's record for a row that was replayed means the replay failed again (the ingestor keys
    what it sets aside by the input, not the run): the row takes the new failure's values and is
    ``dead`` again, keeping its first failure time and its replay history."""
    row = {c: values.get(c) for c in ("key", "queue", "task", "task_id", "args", "kwargs", "error_type",
                                      "error_message", "traceback", "detail", "retries", "source",
                                      "broker_reason", "raw")}
    for column in ("first_failed_at", "last_failed_at", "received_at"):
        row[column] = _when(values.get(column))
    stmt = insert(conn.dialect.name, DeadLetter).values(**row, status="dead", replay_count=0,
                                                        recorded_at=datetime.now(timezone.utc))
    table = DeadLetter.__table__
    failed_again = sa.and_(table.c.status == "replayed", stmt.excluded.source == "handler")
    merge: dict[str, Any] = {c: sa.case((failed_again, stmt.excluded[c]),
                                        else_=sa.func.coalesce(table.c[c], stmt.excluded[c]))
                             for c in _FILLED_IN if c != "first_failed_at"}
    merge["first_failed_at"] = sa.func.coalesce(table.c.first_failed_at, stmt.excluded.first_failed_at)
    merge["status"] = sa.case((failed_again, "dead"), else_=table.c.status)
    # The handler's record says more than the broker's copy: its message wins.
    merge["error_message"] = sa.case((stmt.excluded.source == "handler", stmt.excluded.error_message),
                                     else_=table.c.error_message)
    merge["source"] = sa.case((stmt.excluded.source == "handler", stmt.excluded.source), else_=table.c.source)
    # The failure handler knows when the task failed; the broker's copy only when it was moved.
    merge["last_failed_at"] = sa.case((stmt.excluded.source == "handler", stmt.excluded.last_failed_at),
                                      else_=sa.func.coalesce(table.c.last_failed_at, stmt.excluded.last_failed_at))
    conn.execute(stmt.on_conflict_do_update(index_elements=["key"], set_=merge))


def expire(conn: sa.Connection, retention: timedelta) -> int:
    """Delete dead letters recorded longer ago than ``retention``; return how many."""
    now = datetime.now(timezone.utc)
    conn.execute(sa.delete(Redelivery).where(Redelivery.last_at < now - REDELIVERY_MEMORY))
    old = sa.select(DeadLetter.id).where(DeadLetter.recorded_at < now - retention)
    conn.execute(sa.delete(DeadLetterReplay).where(DeadLetterReplay.dead_letter_id.in_(old)))
    return conn.execute(sa.delete(DeadLetter).where(DeadLetter.recorded_at < now - retention)).rowcount


class Recorder(ConsumerMixin):
    """Consume ``wa.dead_letter`` into ``dead_letters``; acknowledge only what is committed."""

    # How long a database outage may hold one message before the recorder looks again.
    MAX_BACKOFF = 30.0
    EXPIRY_INTERVAL = 3600.0

    def __init__(self, connection: Connection, retention: timedelta, database_url: str | None = None) -> None:
        self.connection = connection
        self.retention = retention
        self.database_url = database_url
        self.recorded = 0
        self._next_expiry = 0.0

    def get_consumers(self, Consumer, channel):  # noqa: N803 - kombu's signature
        return [Consumer(queues=[DEAD_LETTER_QUEUE], on_message=self.on_message, prefetch_count=20)]

    def on_message(self, message) -> None:
        values = record_from_message(message.body, message.headers)
        wait = 1.0
        while not self.should_stop:
            try:
                with transaction(self.database_url) as conn:
                    store(conn, values)
            except sa.exc.SQLAlchemyError as exc:
                if is_transient(exc):
                    # Not acknowledged: the message stays in the queue until its row is committed.
                    logger.warning("dlq recorder: database unavailable (%s), retrying in %.0fs",
                                   type(exc).__name__, wait)
                    time.sleep(wait)
                    wait = min(self.MAX_BACKOFF, wait * 2)
                    continue
                if values.get("source") == "unstorable":
                    # Even the escaped form is refused: stop, loudly, with the message kept (and the
                    # database's text, which quotes the row, kept out of the log).
                    raise failures.PermanentFailure.of(exc).with_traceback(exc.__traceback__) from None
                # The database refuses it as it came (a NUL, JSON it will not take): keep it escaped.
                logger.error("dlq recorder: %s refused as it came (%s); kept escaped", values["key"],
                             type(exc).__name__)
                values = unstorable(message.body, values, exc)
                continue
            message.ack()
            self.recorded += 1
            logger.info("dlq recorder: recorded %s from %s (%s)", values["key"], values["queue"], values["source"])
            return

    def on_iteration(self) -> None:
        if time.monotonic() >= self._next_expiry:
            self._next_expiry = time.monotonic() + self.EXPIRY_INTERVAL
            try:
                with transaction(self.database_url) as conn:
                    gone = expire(conn, self.retention)
                if gone:
                    logger.info("dlq recorder: deleted %d dead letter(s) past the retention period", gone)
            except sa.exc.SQLAlchemyError as exc:
                logger.warning("dlq recorder: retention sweep skipped (%s)", type(exc).__name__)


def recorder_connection() -> Connection:
    """A broker connection for the recorder: no heartbeats, since a database outage may hold
    the consumer in one message for minutes (the broker would otherwise close the connection)."""
    return celery_app.connection_for_read(heartbeat=0)
