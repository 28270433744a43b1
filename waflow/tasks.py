"""The Celery app, its base task and ``stage_task``, the one way a stage declares a task.

Tasks stay thin: unpack plain arguments, open a transaction, call one plain function
(tested on its own), queue the next step. The decorator fixes the project's
defaults in one place:

- ``acks_late``: a task acknowledges only after it ran; every stage is idempotent
  (the database judges "already done"), so redelivery after a crash is safe.
- the retry policy (below, the one place it is defined): transient errors only
  (database unreachable, a serialization failure or deadlock, HTTP timeouts and
  5xx; a database error is judged by its SQLSTATE, not its class), 3 retries with
  exponential backoff and a bounded jitter; permanent errors are never retried;
  broker errors hand the message back to the broker instead.
- another library's error leaves a task as a ``StageFailure`` (``waflow.failures``)
  that names its type and SQLSTATE, never its text: a driver quotes the values it
  was given, and Celery logs, and Flower shows, what a task raised.
- what fails for good is rejected to the broker's dead-letter exchange after the
  failure handler has published a dead-letter record (``docs/reliability.md``).
- the wire name and the queue are pinned on every task, so a rename shows.
- ``argsrepr``: what Flower, events and log lines show of a task's arguments is
  ids and sizes, never a client's text.
"""
from __future__ import annotations

import functools
import logging
import os
import random
import sqlite3
import time
from typing import Any, Callable

import amqp.exceptions
import requests
from celery import Celery, Task, signals
from celery.exceptions import Reject, TaskPredicate
from kombu import exceptions as kombu_exc
from sqlalchemy import exc as sa_exc

from waflow import embedded, failures, stages
from waflow.db import dispose_engines, transaction
from waflow.dlq import records
from waflow.limiter import LimiterUnavailable

logger = logging.getLogger(__name__)

celery_app = Celery("waflow")
celery_app.config_from_object("celeryconfig")


@signals.worker_process_init.connect
def _fresh_connections_in_child(**_: Any) -> None:
    """A prefork child must not reuse the connections it inherited from its parent."""
    dispose_engines()


@signals.worker_process_init.connect
def _leave_the_parents_process_group(**_: Any) -> None:
    """A prefork child moves to a process group of its own, so a signal to the worker's whole group (honcho's
    SIGTERM on Ctrl-C, ``kill -- -PGID``) reaches only the main process, which then stops its pool in order:
    running tasks finish, held messages go back to the queue. Left in the group, the children died of the
    SIGTERM mid-task ("ForkPoolWorker exited with 'signal 15'") and the main process outlasted honcho's grace.
    Billiard signals its children one by one, and they die with the main process (``PR_SET_PDEATHSIG``)."""
    try:
        os.setpgid(0, 0)
    except OSError as exc:  # not fatal: the child then shares the group's signals, as stock Celery's do
        logger.warning("pool child could not leave the worker's process group: %s", exc)


@signals.worker_shutting_down.connect
def _stop_polling_the_embedded_broker(**_: Any) -> None:
    """Shutting down: the embedded broker's poll returns at once instead of waiting out its 2-second timeout."""
    embedded.stop_polling()


@signals.worker_ready.connect
def _declare_the_dead_letter_queue(**_: Any) -> None:
    """Every worker declares ``wa.dead_letter`` and its binding to ``wa.dlx`` as it starts, so the
    broker has somewhere to dead-letter a message before any record was ever published."""
    with celery_app.connection_for_write() as conn:
        records.DEAD_LETTER_QUEUE(conn.default_channel).declare()


@signals.after_setup_logger.connect
def _one_line_per_task_is_too_many(loglevel: int = logging.INFO, **_: Any) -> None:
    """Keep Celery's "Task … received" and "… succeeded" lines (two per task, thousands a second
    under load) out of INFO logs; ``-l DEBUG`` shows them again. Failures still log at ERROR and
    retries at WARNING (``StageTask.on_retry``)."""
    if loglevel >= logging.INFO:
        for name in ("celery.app.trace", "celery.worker.strategy"):
            logging.getLogger(name).setLevel(logging.WARNING)


class TransientError(Exception):
    """An outside service failed in a way that may pass by itself (an HTTP 5xx, a timeout).

    Stages wrap such failures in this one domain error so the retry policy below
    needs to know no client library."""


# --- the retry policy: the one place it is defined; stage_task() applies it to every task ------------------

# Errors that may pass by themselves: a dropped, refused or timed-out database connection,
# an HTTP call that timed out or could not connect, a 5xx (wrapped in TransientError), the send
# limiter's store out of reach. A database error of these classes is transient only if
# is_transient() says so (its SQLSTATE, or SQLite's "database is locked"): SQLAlchemy reports
# PostgreSQL's program limits (an index row too large) as OperationalError too.
# Anything else is permanent (bad input, a 4xx that will not change) and never retried.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.TimeoutError,
    ConnectionError,
    TimeoutError,
    requests.ConnectionError,
    requests.Timeout,
    TransientError,
    LimiterUnavailable,
)
# PostgreSQL errors (SQLSTATE, appendix A of its manual) that may pass by themselves: connection
# exceptions (class 08), insufficient resources (53: too many connections, out of memory or disk),
# the server shutting down or starting (57P01-57P05), a lock not available (55P03), a statement
# cancelled (57014), a serialization failure (40001) and a deadlock (40P01), which PostgreSQL asks
# the client to retry. Every other SQLSTATE is permanent: data exceptions (22), integrity
# violations (23), program limits (54), a statement the schema refuses (42)...
TRANSIENT_SQLSTATE_CLASSES = ("08", "53")
TRANSIENT_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "57P04", "57P05", "55P03", "57014", "40001", "40P01"})
# SQLite: busy or locked (another writer past busy_timeout) may pass; anything else is permanent.
SQLITE_TRANSIENT_CODES = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def is_transient(exc: BaseException) -> bool:
    """True if ``exc`` may pass by itself and its task should be retried (the policy above)."""
    if isinstance(exc, failures.StageFailure):
        return isinstance(exc, failures.TransientFailure)
    if isinstance(exc, sa_exc.DBAPIError):
        return _transient_database_error(exc)
    return isinstance(exc, TRANSIENT_ERRORS)


def _transient_database_error(exc: sa_exc.DBAPIError) -> bool:
    if exc.connection_invalidated:  # SQLAlchemy recognised a lost connection
        return True
    state = failures.sqlstate(exc)
    if state:
        return state[:2] in TRANSIENT_SQLSTATE_CLASSES or state in TRANSIENT_SQLSTATES
    if isinstance(exc.orig, sqlite3.Error):
        code = getattr(exc.orig, "sqlite_errorcode", None)
        if isinstance(code, int):
            return code & 0xFF in SQLITE_TRANSIENT_CODES  # the primary code of an extended one
        return "database is locked" in str(exc.orig)
    # No SQLSTATE: the driver failed on the client side (refused, reset, closed), before or after
    # the server had a say.
    return isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError))


# What autoretry catches: a foreign error judged transient arrives as a TransientFailure; waflow's
# own transient errors arrive as themselves.
RETRIED: tuple[type[BaseException], ...] = (failures.TransientFailure, TransientError, LimiterUnavailable)
MAX_RETRIES = 3
# Waits of 3, 6 and 12 s (Celery's autoretry: factor x 2^n), each stretched by up to JITTER and
# never shortened: together 21 to 26 s, which rides out a 10-second database outage with room to
# spare. Celery's own jitter is "full" (uniform over 0..wait) and can spend all three retries in
# under a second, so it is off and StageTask.retry adds this bounded one.
BACKOFF_FACTOR = 3
JITTER = 0.25
# The cap on every countdown waflow uses (retries, Meta's pauses). A message waiting for its
# countdown is held unacknowledged by the worker, and RabbitMQ closes the channel of a consumer
# that holds a delivery longer than its consumer_timeout (30 min by default on 3.10, a global
# broker setting there): two minutes stays far below it. docs/reliability.md says the same.
MAX_COUNTDOWN = 120.0
# A message redelivered more often than this (it keeps killing the worker that runs it) is
# dead-lettered instead of run again. Classic queues on RabbitMQ 3.10 count nothing, so waflow
# counts redeliveries in the database; a quorum queue's x-delivery-limit does the same.
REDELIVERY_LIMIT = 5


def retry_countdowns() -> list[tuple[float, float]]:
    """The (shortest, longest) wait before each retry, as the policy above sets them."""
    waits = [min(MAX_COUNTDOWN, BACKOFF_FACTOR * 2 ** n) for n in range(MAX_RETRIES)]
    return [(w, min(MAX_COUNTDOWN, w * (1 + JITTER))) for w in waits]


# Errors of the broker itself, met while a task publishes its next step. Retrying by
# publishing would fail the same way, and dead-lettering too: the message goes back
# to the queue unacknowledged instead, and the broker hands it out again.
BROKER_ERRORS: tuple[type[BaseException], ...] = (
    kombu_exc.OperationalError,
    amqp.exceptions.ConnectionError,
    amqp.exceptions.MessageNacked,
)
# A pause before handing the message back, doubling with each redelivery (up to 30 s), so a
# broker outage is not a hot loop.
REQUEUE_PAUSE = 1.0
MAX_REQUEUE_PAUSE = 30.0
# The header a retry carries from the first failure on, for the dead-letter record.
FIRST_FAILED_HEADER = "waflow_first_failed_at"


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


def describe_kwargs(kwargs: dict[str, Any]) -> str:
    return "{" + ", ".join(f"{k}: {describe(v)}" for k, v in kwargs.items()) + "}"


class StageTask(Task):
    """Base task: redacted argument representations on every publish (retries included), the
    retry policy's bounded jitter, and a guard against a message that keeps killing its worker.

    What fails for good is dead-lettered by ``_dead_letter_what_failed`` (the failure handler)."""

    def apply_async(self, args=None, kwargs=None, **options):  # type: ignore[override]
        options.setdefault("argsrepr", describe_args(args or ()))
        options.setdefault("kwargsrepr", describe_kwargs(kwargs or {}))
        return super().apply_async(args, kwargs, **options)

    def retry(self, args=None, kwargs=None, exc=None, throw=True, eta=None, countdown=None, max_retries=None,
              **options):  # type: ignore[override]
        """Celery's retry, with the policy's bounded jitter, the countdown cap, and the time of the
        first failure carried in a header for the dead-letter record."""
        if countdown is not None:
            countdown = min(MAX_COUNTDOWN, countdown * (1 + random.uniform(0, JITTER)))
        headers = dict(self.request.headers or {})
        headers.setdefault(FIRST_FAILED_HEADER, time.time())
        options["headers"] = headers
        return super().retry(args=args, kwargs=kwargs, exc=exc, throw=throw, eta=eta, countdown=countdown,
                             max_retries=max_retries, **options)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        delivery = self.request.delivery_info or {}
        self.request.delivery_count = 0
        # Celery's failure line shows argsrepr, else the arguments themselves (a message published
        # without one, a task applied in-process): give it the redacted form.
        if getattr(self.request, "argsrepr", None) is None:
            self.request.argsrepr = describe_args(args)
        if getattr(self.request, "kwargsrepr", None) is None:
            self.request.kwargsrepr = describe_kwargs(kwargs)
        if delivery.get("redelivered") and self.request.id:
            self._guard_redelivery()
        return super().__call__(*args, **kwargs)

    def _guard_redelivery(self) -> None:
        """Count a redelivered message; dead-letter it once it has come back too often."""
        try:
            with transaction() as conn:
                count = records.count_redelivery(conn, self.request.id)
        except (sa_exc.SQLAlchemyError, *TRANSIENT_ERRORS) as exc:
            # The database is away (or refused the count): the task body will meet that too and retry
            # or fail; count next time.
            logger.warning("%s[%s]: redelivery not counted (%s)", self.name, self.request.id, type(exc).__name__)
            return
        self.request.delivery_count = count
        if count > REDELIVERY_LIMIT:
            raise Reject(f"redelivered {count} times: the message keeps killing its worker", requeue=False)

    def on_retry(self, exc, task_id, args, kwargs, einfo) -> None:  # type: ignore[override]
        # A foreign error's description (its type and SQLSTATE); of waflow's own, the type only (a
        # TransientError carries Meta's reason).
        said = failures.describe(exc) if isinstance(exc, failures.StageFailure) else type(exc).__name__
        logger.warning("%s[%s] retry %d of %d after %s", self.name, task_id, self.request.retries + 1,
                       self.max_retries, said)


@signals.task_failure.connect
def _dead_letter_what_failed(sender: Task | None = None, task_id: str | None = None,
                             exception: BaseException | None = None, args: Any = None, kwargs: Any = None,
                             einfo: Any = None, **_: Any) -> None:
    """The failure handler: publish a dead-letter record for a stage task that failed for good.

    Celery sends ``task_failure`` once a task will not run again: retries spent, a permanent
    error, its worker lost past the retry budget, a retry that could not be published, a
    message redelivered too often. Ordinary failures reach it in the pool process, before the
    worker settles the message; lost workers and rejections in the main process. Either way the
    message is then rejected without requeue (``acks_on_failure=False``), and RabbitMQ moves it
    to ``wa.dead_letter`` through ``wa.dlx`` too: the record adds the diagnosis, and if its
    publish fails, the broker's copy still arrives (the recorder merges the two by task id)."""
    if not isinstance(sender, StageTask) or task_id is None or exception is None:
        return
    request = sender.request
    queue = (request.delivery_info or {}).get("routing_key") or sender.queue
    logger.error("%s[%s] failed for good after %d retries (%s): dead-lettered", sender.name, task_id,
                 request.retries or 0, failures.error_type(exception))
    try:
        records.publish(celery_app, records.failure_record(
            task=sender.name, task_id=task_id, queue=queue, exc=exception, args=args, kwargs=kwargs,
            retries=request.retries or 0, first_failed_at=getattr(request, FIRST_FAILED_HEADER, None),
            traceback_text=getattr(einfo, "traceback", None),
        ))
    except Exception as exc:  # noqa: BLE001 - the broker's dead-letter exchange still has the message
        logger.error("%s[%s]: dead-letter record not published (%s); the broker dead-letters the message itself",
                     sender.name, task_id, type(exc).__name__)


def stage_task(*, name: str, queue: str, prepare_replay: Callable[..., Any] | None = None,
               **options: Any) -> Callable[[Callable[..., Any]], Task]:
    """Declare a pipeline task consumed from ``queue`` under the wire name ``name``.

    ``prepare_replay(conn, args, kwargs)``: what replaying a dead letter of this task must do
    first (``waflow.dlq.tooling``); it travels with the task, so the tooling needs no table of hooks."""
    routed = stages.task_routes().get(name)
    if routed is not None and routed["queue"] != queue:
        raise ValueError(f"{name} is routed to {routed['queue']} in waflow/stages.py, not {queue}")
    options.setdefault("acks_late", True)
    # A task that failed for good is rejected without requeue, after its record is published:
    # RabbitMQ moves it to wa.dead_letter (wa.dlx), so even an unpublished record loses nothing.
    options.setdefault("acks_on_failure", False)
    # A pool process that dies mid-task (killed, out of memory) is a retry like any other,
    # within the same budget; past it the message is dead-lettered, not looped forever.
    options.setdefault("retry_on_worker_lost", True)
    options.setdefault("default_retry_delay", BACKOFF_FACTOR)
    options.setdefault("ignore_result", True)
    options.setdefault("autoretry_for", RETRIED)
    options.setdefault("max_retries", MAX_RETRIES)
    options.setdefault("retry_backoff", BACKOFF_FACTOR)
    options.setdefault("retry_backoff_max", int(MAX_COUNTDOWN))
    options.setdefault("retry_jitter", False)  # StageTask.retry adds a bounded jitter instead

    def decorate(fn: Callable[..., Any]) -> Task:
        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except BROKER_ERRORS as exc:
                redeliveries = getattr(task.request, "delivery_count", 0)
                pause = min(MAX_REQUEUE_PAUSE, REQUEUE_PAUSE * 2 ** redeliveries)
                logger.warning("%s: broker unavailable (%s), message goes back to the queue in %.0fs",
                               name, type(exc).__name__, pause)
                time.sleep(pause)
                raise Reject(exc, requeue=True) from exc
            except TaskPredicate:  # Celery's own retry, ignore and reject
                raise
            except Exception as exc:
                if failures.speaks_safely(exc):
                    raise
                # Its text may quote a client: it leaves as its type, keeping its traceback's frames.
                kind = failures.TransientFailure if is_transient(exc) else failures.PermanentFailure
                raise kind.of(exc).with_traceback(exc.__traceback__) from None

        options.setdefault("base", StageTask)
        if prepare_replay is not None:
            options["prepare_replay"] = staticmethod(prepare_replay)
        task = celery_app.task(name=name, queue=queue, **options)(run)
        return task

    return decorate


def dispatch(name: str, args: tuple | list = (), kwargs: dict[str, Any] | None = None, **options: Any) -> Any:
    """Queue the task ``name`` on its stage's queue (``waflow.stages``; ``queue=`` names a lane)
    without importing the stage: how one stage hands work to the next.

    Like ``StageTask.apply_async`` it publishes a redacted ``argsrepr`` and ``kwargsrepr``: a bare
    ``send_task`` would show a client's text in Flower, task events and log lines."""
    options.setdefault("queue", stages.queue_of(name))
    options.setdefault("argsrepr", describe_args(args))
    options.setdefault("kwargsrepr", describe_kwargs(kwargs or {}))
    return celery_app.send_task(name, args=list(args), kwargs=kwargs or {}, **options)
