"""Dead-letter tooling behind ``flask --app wsgi dlq``: find, replay, purge.

Replaying some tasks must first reopen their own state (an outbound message marked
failed when its retries ran out). Such a task declares its hook with the task itself
(``stage_task(..., prepare_replay=hook)``): the hook may refuse (``NotReplayable``:
nothing changes), settle the dead letter another way (``{"skip": reason}``: its changes
are kept, nothing is published), or say how to publish the replay (``{"queue": ...,
"headers": ...}``).
"""
from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable

import sqlalchemy as sa

from waflow import queues
from waflow.models import DeadLetter, DeadLetterReplay
from waflow.tasks import celery_app, dispatch

logger = logging.getLogger(__name__)


class NotReplayable(ValueError):
    """This dead letter names no waflow task to send again; the message says why."""


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
    hook = getattr(celery_app.tasks[dead_letter.task], "prepare_replay", None)
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
    dispatch(dead_letter.task, args, kwargs, task_id=task_id, queue=queue,
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
