"""Dead-letter queue ``wa.dead_letter``: what could not be processed, kept for a person.

Two kinds of message reach the queue, and the recorder (``Recorder``, run as
``flask --app wsgi dlq record``) stores both in ``dead_letters``:

- **dead-letter records**, JSON documents the failure handler
  (``waflow.tasks._dead_letter_what_failed``) and the ingestor publish, with
  publisher confirms: which queue and task gave up on which arguments, the
  exception, its traceback, the retries, the first and last failure times. A
  record is not a runnable task message, and no Celery worker consumes this queue.
- **the broker's own copies**: every work queue dead-letters through ``wa.dlx``
  into this queue, so a message rejected without requeue (every task failing
  for good is, after its record), or past a quorum queue's delivery limit, is
  here too, headers and ``x-death`` included. It merges with its record into one
  row (the key is the task id); if the record never came, the copy alone names
  the task, its arguments and the broker's reason.

The recorder acknowledges a message only once its row is committed: a database
outage leaves the messages in the queue. It also deletes rows past the retention
period. ``find``, ``replay`` and ``purge`` are the tooling behind the
``flask --app wsgi dlq`` commands.

Design: ``../shared/seed/event-bus-async-workflow.en.md`` section 4; ``docs/reliability.md``.
"""
from __future__ import annotations

import json
import logging
import time
import traceback as traceback_module
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterable

import sqlalchemy as sa
from kombu import Connection
from kombu.mixins import ConsumerMixin

from waflow import queues
from waflow.db import insert, transaction
from waflow.models import DeadLetter, DeadLetterReplay, Redelivery
from waflow.tasks import TRANSIENT_ERRORS, celery_app, describe_args

logger = logging.getLogger(__name__)

RECORD_KIND = "waflow.dead_letter"
DEAD_LETTER_QUEUE = queues.queue(queues.DEAD_LETTER)
# Rows of `redeliveries` only matter while a message can still come back.
REDELIVERY_MEMORY = timedelta(days=7)


def _iso(seconds: float | None) -> str | None:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat() if seconds is not None else None


def _when(value: Any) -> datetime | None:
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value, timezone.utc)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return None
    return None


# --- records ---------------------------------------------------------------------------------------------------


def _record(*, key: str, queue: str, task: str | None, task_id: str | None, args: Any, kwargs: Any,
            error_type: str, error_message: str, traceback: str | None = None, retries: int = 0,
            first_failed_at: float | None = None, received_at: float | None = None,
            detail: str | None = None) -> dict[str, Any]:
    now = time.time()
    return {
        "kind": RECORD_KIND, "key": key, "queue": queue, "task": task, "task_id": task_id,
        "args": list(args) if args is not None else None, "kwargs": dict(kwargs or {}),
        "error_type": error_type, "error_message": error_message, "traceback": traceback, "retries": retries,
        "first_failed_at": _iso(first_failed_at or now), "last_failed_at": _iso(now),
        "received_at": _iso(received_at), "detail": detail,
    }


def failure_record(*, task: str, task_id: str, queue: str, exc: BaseException, args: Any, kwargs: Any,
                   retries: int, first_failed_at: float | None, traceback_text: str | None) -> dict[str, Any]:
    """The record of a task run that failed for good."""
    reason = getattr(exc, "reason", None)
    if isinstance(reason, BaseException):  # Celery's Reject wraps the error that caused it
        exc = reason
    text = traceback_text or "".join(traceback_module.format_exception(exc))
    return _record(key=task_id, queue=queue, task=task, task_id=task_id, args=args, kwargs=kwargs,
                   error_type=type(exc).__name__, error_message=str(reason if isinstance(reason, str) else exc),
                   traceback=text, retries=retries, first_failed_at=first_failed_at)


def input_record(*, task: str, task_id: str | None, queue: str, reason: str, error_type: str, args: Any,
                 received_at: float | None, position: str = "", detail: str | None = None) -> dict[str, Any]:
    """The record of input a task set aside itself (a body that is not a webhook, one unreadable update)."""
    key = f"{task_id}:{position}" if task_id else f"input:{uuid.uuid4()}"
    return _record(key=key, queue=queue, task=task, task_id=task_id, args=args, kwargs={}, error_type=error_type,
                   error_message=reason, received_at=received_at, detail=detail)


def publish(record: dict[str, Any]) -> None:
    """Publish one record and return once the broker has it (publisher confirms on RabbitMQ)."""
    with celery_app.producer_or_acquire() as producer:
        producer.publish(
            record, exchange=queues.EXCHANGE, routing_key=queues.DEAD_LETTER, serializer="json", delivery_mode=2,
            declare=[DEAD_LETTER_QUEUE], retry=True,
            retry_policy={"max_retries": 3, "interval_start": 0, "interval_step": 0.5, "interval_max": 2},
        )
    logger.info("dead_letter: record %s from %s (%s)", record["key"], record["queue"], record["error_type"])


# --- the recorder ----------------------------------------------------------------------------------------------


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
            "last_failed_at": _iso(time.time())}


def _death_time(death: dict[str, Any]) -> str:
    """When RabbitMQ dead-lettered the message (x-death's time), else now."""
    when = death.get("time")
    if isinstance(when, datetime):
        return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).isoformat()
    return _iso(time.time())


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
    """Insert a dead letter, or merge a second message about the same failure into its row."""
    row = {c: values.get(c) for c in ("key", "queue", "task", "task_id", "args", "kwargs", "error_type",
                                      "error_message", "traceback", "detail", "retries", "source",
                                      "broker_reason", "raw")}
    for column in ("first_failed_at", "last_failed_at", "received_at"):
        row[column] = _when(values.get(column))
    stmt = insert(conn.dialect.name, DeadLetter).values(**row, status="dead", replay_count=0,
                                                        recorded_at=datetime.now(timezone.utc))
    table = DeadLetter.__table__
    merge = {c: sa.func.coalesce(table.c[c], stmt.excluded[c]) for c in _FILLED_IN}
    # The handler's record says more than the broker's copy: its message wins.
    merge["error_message"] = sa.case((stmt.excluded.source == "handler", stmt.excluded.error_message),
                                     else_=table.c.error_message)
    merge["source"] = sa.case((stmt.excluded.source == "handler", stmt.excluded.source), else_=table.c.source)
    # The failure handler knows when the task failed; the broker's copy only when it was moved.
    merge["last_failed_at"] = sa.case((stmt.excluded.source == "handler", stmt.excluded.last_failed_at),
                                      else_=sa.func.coalesce(table.c.last_failed_at, stmt.excluded.last_failed_at))
    conn.execute(stmt.on_conflict_do_update(index_elements=["key"], set_=merge))


def count_redelivery(conn: sa.Connection, task_id: str) -> int:
    """Count one more redelivery of ``task_id``; return how many there have been."""
    stmt = insert(conn.dialect.name, Redelivery).values(task_id=task_id, count=1, last_at=datetime.now(timezone.utc))
    stmt = stmt.on_conflict_do_update(index_elements=["task_id"], set_={"count": Redelivery.count + 1,
                                                                        "last_at": stmt.excluded.last_at})
    return conn.execute(stmt.returning(Redelivery.count)).scalar_one()


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
            except TRANSIENT_ERRORS as exc:
                # Not acknowledged: the message stays in the queue until its row is committed.
                logger.warning("dlq recorder: database unavailable (%s), retrying in %.0fs", type(exc).__name__, wait)
                time.sleep(wait)
                wait = min(self.MAX_BACKOFF, wait * 2)
                continue
            except sa.exc.SQLAlchemyError as exc:
                if values.get("source") == "unstorable":
                    raise  # even the escaped form is refused: stop, loudly, with the message kept
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
            except TRANSIENT_ERRORS as exc:
                logger.warning("dlq recorder: retention sweep skipped (%s)", type(exc).__name__)


def recorder_connection() -> Connection:
    """A broker connection for the recorder: no heartbeats, since a database outage may hold
    the consumer in one message for minutes (the broker would otherwise close the connection)."""
    return celery_app.connection_for_read(heartbeat=0)


# --- tooling ---------------------------------------------------------------------------------------------------

# Replaying some tasks must first reopen their own state (an outbound message marked failed when
# its retries ran out). A hook may refuse (NotReplayable: nothing changes), settle the dead letter
# another way ({"skip": reason}: its changes are kept, nothing is published), or say how to publish
# the replay ({"queue": ..., "headers": ...}); stages register hooks here, keyed by task name.
REPLAY_HOOKS: dict[str, Callable[[sa.Connection, list[Any], dict[str, Any]], dict[str, Any] | None]] = {}


def find(conn: sa.Connection, *, queue: str | None = None, error_type: str | None = None,
         older_than: timedelta | None = None, newer_than: timedelta | None = None, status: str | None = None,
         ids: Iterable[int] = (), limit: int | None = None) -> list[Any]:
    """Dead letters that match every filter given, oldest first."""
    now = datetime.now(timezone.utc)
    query = sa.select(DeadLetter).order_by(DeadLetter.id)
    if ids:
        query = query.where(DeadLetter.id.in_(list(ids)))
    if queue:
        query = query.where(DeadLetter.queue == queue)
    if error_type:
        query = query.where(DeadLetter.error_type == error_type)
    if older_than is not None:
        query = query.where(DeadLetter.recorded_at <= now - older_than)
    if newer_than is not None:
        query = query.where(DeadLetter.recorded_at >= now - newer_than)
    if status:
        query = query.where(DeadLetter.status == status)
    return list(conn.execute(query.limit(limit)).all())


class NotReplayable(ValueError):
    """This dead letter names no waflow task to send again; the message says why."""


def replay(conn: sa.Connection, dead_letter: Any, by: str) -> str | None:
    """Send a dead letter's task back to its original queue with a fresh retry budget; record
    the replay; return the new task id, or None when its stage settled it another way (logged).
    The caller commits."""
    if dead_letter.task and dead_letter.task not in celery_app.tasks:
        celery_app.loader.import_default_modules()  # a command-line process has not loaded the stages yet
    if not dead_letter.task or dead_letter.task not in celery_app.tasks or dead_letter.args is None:
        raise NotReplayable(f"dead letter {dead_letter.id} names no waflow task to replay")
    if dead_letter.queue not in queues.WORK_QUEUES:
        raise NotReplayable(f"dead letter {dead_letter.id} came from {dead_letter.queue!r}, not a waflow queue")
    args, kwargs = list(dead_letter.args), dict(dead_letter.kwargs or {})
    hook = REPLAY_HOOKS.get(dead_letter.task)
    publish_as = (hook(conn, args, kwargs) if hook is not None else None) or {}
    if publish_as.get("skip"):
        logger.warning("dlq: dead letter %s not replayed: %s", dead_letter.id, publish_as["skip"])
        return None
    queue = publish_as.get("queue", dead_letter.queue)
    task_id = str(uuid.uuid4())
    conn.execute(sa.insert(DeadLetterReplay).values(dead_letter_id=dead_letter.id, task_id=task_id,
                                                    queue=queue, replayed_by=by))
    conn.execute(sa.update(DeadLetter).where(DeadLetter.id == dead_letter.id)
                 .values(status="replayed", replay_count=DeadLetter.replay_count + 1))
    # Published before the commit: a replay that could not be sent is not recorded as done.
    celery_app.send_task(dead_letter.task, args=args, kwargs=kwargs, task_id=task_id, queue=queue,
                         argsrepr=describe_args(args), kwargsrepr="{}",
                         headers={**publish_as.get("headers", {}), "waflow_replay_of": dead_letter.id})
    logger.info("dlq: replayed dead letter %s as %s[%s] by %s", dead_letter.id, dead_letter.task, task_id, by)
    return task_id


def purge(conn: sa.Connection, ids: Iterable[int]) -> int:
    """Delete the given dead letters (and their replay history); return how many."""
    ids = list(ids)
    if not ids:
        return 0
    conn.execute(sa.delete(DeadLetterReplay).where(DeadLetterReplay.dead_letter_id.in_(ids)))
    return conn.execute(sa.delete(DeadLetter).where(DeadLetter.id.in_(ids))).rowcount
