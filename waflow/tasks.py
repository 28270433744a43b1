"""The Celery app, its base task and ``stage_task``, the one way a stage declares a task.

Tasks stay thin: unpack plain arguments, open a transaction, call one plain function
(tested on its own), queue the next step. The decorator fixes the project's
defaults in one place:

- ``acks_late``: a task acknowledges only after it ran; every stage is idempotent
  (the database judges "already done"), so redelivery after a crash is safe.
- ``autoretry_for`` transient errors only (database unreachable, timeouts), with
  exponential backoff; permanent errors are never retried.
- the wire name and the queue are pinned on every task, so a rename shows.
- ``argsrepr``: what Flower, events and log lines show of a task's arguments is
  ids and sizes, never a client's text.
"""
from __future__ import annotations

import functools
import logging
import time
from typing import Any, Callable

import amqp.exceptions
from celery import Celery, Task, signals
from celery.exceptions import Reject
from kombu import exceptions as kombu_exc
from sqlalchemy import exc as sa_exc

logger = logging.getLogger(__name__)

celery_app = Celery("waflow")
celery_app.config_from_object("celeryconfig")


@signals.worker_process_init.connect
def _fresh_connections_in_child(**_: Any) -> None:
    """A prefork child must not reuse the connections it inherited from its parent."""
    from waflow.db import dispose_engines

    dispose_engines()


@signals.after_setup_logger.connect
def _one_line_per_task_is_too_many(loglevel: int = logging.INFO, **_: Any) -> None:
    """Keep Celery's "Task … received" and "… succeeded" lines (two per task, thousands a second
    under load) out of INFO logs; ``-l DEBUG`` shows them again. Failures still log at ERROR and
    retries at WARNING (``StageTask.on_retry``)."""
    if loglevel >= logging.INFO:
        for name in ("celery.app.trace", "celery.worker.strategy"):
            logging.getLogger(name).setLevel(logging.WARNING)


# Errors that may pass by themselves: a dropped or refused database connection.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.TimeoutError,
    ConnectionError,
    TimeoutError,
)


# Errors of the broker itself, met while a task publishes its next step. Retrying by
# publishing would fail the same way, and dead-lettering too: the message goes back
# to the queue unacknowledged instead, and the broker hands it out again.
BROKER_ERRORS: tuple[type[BaseException], ...] = (
    kombu_exc.OperationalError,
    amqp.exceptions.ConnectionError,
    amqp.exceptions.MessageNacked,
)
# A pause before handing the message back, so a broker outage is not a hot loop.
REQUEUE_PAUSE = 1.0


def describe(value: Any) -> str:
    """Return a representation of a task argument that carries no client text."""
    if isinstance(value, dict):
        ident = value.get("event_id") or value.get("id")
        return f"<{ident}>" if ident else f"<dict of {len(value)} keys>"
    if isinstance(value, (str, bytes)):
        return f"<{len(value)} {'chars' if isinstance(value, str) else 'bytes'}>"
    if isinstance(value, (int, float, bool)) or value is None:
        return repr(value)
    if isinstance(value, (list, tuple)):
        return f"<{type(value).__name__} of {len(value)}>"
    return f"<{type(value).__name__}>"


def describe_args(args: tuple | list) -> str:
    return "(" + ", ".join(describe(a) for a in args) + ")"


class StageTask(Task):
    """Base task: redacted argument representations on every publish, retries included,
    and a failure handler that keeps what failed for good in the dead-letter queue."""

    def apply_async(self, args=None, kwargs=None, **options):  # type: ignore[override]
        options.setdefault("argsrepr", describe_args(args or ()))
        options.setdefault("kwargsrepr", "{" + ", ".join(f"{k}: {describe(v)}" for k, v in (kwargs or {}).items()) + "}")
        return super().apply_async(args, kwargs, **options)

    def on_retry(self, exc, task_id, args, kwargs, einfo) -> None:  # type: ignore[override]
        logger.warning("%s[%s] retry %d of %d after %s: %s", self.name, task_id, self.request.retries + 1,
                       self.max_retries, type(exc).__name__, exc)

    def on_failure(self, exc, task_id, args, kwargs, einfo) -> None:  # type: ignore[override]
        """Publish a dead-letter record for a task that failed for good (retries spent, or a permanent error).

        It runs before the message is acknowledged, so normally the record is on the broker first. If
        this publish fails too, Celery acknowledges the message all the same: a known gap, written down
        in docs/reliability.md, that the reliability issue closes.
        """
        from waflow import dlq

        logger.error("%s[%s] failed for good after %d retries (%s): dead-lettered",
                     self.name, task_id, self.request.retries, type(exc).__name__)
        dlq.dead_letter(queue=self.queue, task=self.name, task_id=task_id, reason=f"{type(exc).__name__}: {exc}",
                        error_type=type(exc).__name__, payload={"args": list(args), "kwargs": kwargs},
                        retries=self.request.retries, exc=exc)


def stage_task(*, name: str, queue: str, **options: Any) -> Callable[[Callable[..., Any]], Task]:
    """Declare a pipeline task consumed from ``queue`` under the wire name ``name``."""
    options.setdefault("acks_late", True)
    options.setdefault("ignore_result", True)
    options.setdefault("autoretry_for", TRANSIENT_ERRORS)
    options.setdefault("max_retries", 3)
    # 2, 4, 8 s: the three waits together (14 s) ride out a 10 s database outage.
    options.setdefault("retry_backoff", 2)
    options.setdefault("retry_backoff_max", 60)
    options.setdefault("retry_jitter", False)

    def decorate(fn: Callable[..., Any]) -> Task:
        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except BROKER_ERRORS as exc:
                logger.warning("%s: broker unavailable (%s), message goes back to the queue", name, exc)
                time.sleep(REQUEUE_PAUSE)
                raise Reject(exc, requeue=True) from exc

        return celery_app.task(name=name, queue=queue, base=StageTask, **options)(run)

    return decorate
