"""A sender's warm-up: what its first sends would otherwise open while their slots pass.

A worker that consumes a send lane opens its database connections (running the send
path's prepared statements once on each), its limiter store connections and its
connections to Meta before it takes its first message. The signal handlers below run it.
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from celery import signals

from waflow import consumer
from waflow.db import POOL_SIZE, execute_prepared, get_engine
from waflow.outbound import claim, settle, task
from waflow.outbound.commands import LANES
from waflow.tasks import celery_app

logger = logging.getLogger(__name__)


def warm_up(threads: int, wiring: task.Wiring | None = None) -> None:
    """Open, before the first send, what the first sends would otherwise open while their slots pass:
    database connections (with SQLAlchemy's first-connect queries), the send path's statements run
    once on each of them, the limiter's store and connections to Meta: without it, a fresh sender's
    first sends miss their slots while those open (docs/benchmarks.md, "Send")."""
    wiring = (wiring or task.Wiring()).resolved()
    url = wiring.database_url
    postgresql = get_engine(url).dialect.name == "postgresql"
    # The send path's statements run on the autocommit engine; the other engine serves the rare
    # cases (a message to park, an error to record) and opens one connection.
    send_path = get_engine(url, autocommit=True) if postgresql else None
    engines = {send_path: threads, get_engine(url): 1} if postgresql else {get_engine(url): threads}
    now = datetime.now(timezone.utc)
    with contextlib.ExitStack() as stack:
        for engine, count in engines.items():
            for conn in [stack.enter_context(engine.connect()) for _ in range(max(1, min(count, POOL_SIZE)))]:
                if engine is send_path:
                    # Statements that match nothing, on every connection: nothing changes, but the
                    # server process behind each one plans them and opens their tables and indexes.
                    execute_prepared(conn, claim.CLAIM_AT_ONCE, -1, None, now)
                    execute_prepared(conn, settle.ACCEPT_AT_ONCE, -1, None, "", now, "", "", "", None, "{}", None,
                                     False, now)
                    execute_prepared(conn, settle.NEXT_AT_ONCE, "", "", -1)
                else:
                    conn.execute(sa.text("SELECT 1"))
                    conn.rollback()
    wiring.store.warm_up(threads + 1)  # and the consumer's own thread, which reserves the slots
    wiring.client.preconnect(threads)


def is_sender(consumed: set[str]) -> bool:
    """Whether a worker consuming these queues sends to Meta (it consumes a send lane's queue)."""
    return bool(consumed & set(LANES.values()))


def warm_up_sender(consumed: set[str], concurrency: int) -> None:
    """A worker that consumes a send queue warms up (warm_up) before it takes its first message
    (in a thread while the worker connects, or as it becomes ready: the handlers below). A failure
    is only logged."""
    if not is_sender(consumed):
        return
    started = time.monotonic()
    try:
        warm_up(concurrency)
        logger.info("sender warmed up in %.0f ms", (time.monotonic() - started) * 1000)
    except Exception as exc:  # noqa: BLE001 - a database or Redis still starting: the first sends open them
        logger.warning("sender warm-up skipped: %s", type(exc).__name__)


# Pools that run tasks in the worker's own process: nothing forks once the consumer runs.
_POOLS_WITHOUT_FORK = ("celery.concurrency.thread", "celery.concurrency.solo")


def _consumed_queues() -> set[str]:
    return set(getattr(celery_app.amqp.queues, "consume_from", None) or ())


def _concurrency(worker_consumer: Any) -> int:
    return int(getattr(getattr(worker_consumer, "controller", None), "concurrency", None) or 1)


@consumer.connected.connect
def _warm_up_while_mingle_waits(sender: Any = None, **_: Any) -> None:
    """A sender on a pool that does not fork warms up in a thread of its own while its consumer
    waits in mingle (asking the other workers for revoked tasks), so it is ready when its first
    message is; the worker_ready handler waits for that thread.

    Not earlier than the consumer's connection: Celery's boot writes the environment while it sets
    up logging, and libpq reading it at the same moment can crash the process. A forking pool warms
    up at ready, in the worker's own thread, before it forks nothing more."""
    consumed = _consumed_queues()
    if getattr(sender, "sender_warm_up", None) is not None or not is_sender(consumed):
        return  # once, not again on a reconnection
    if type(getattr(sender, "pool", None)).__module__ not in _POOLS_WITHOUT_FORK:
        return
    thread = threading.Thread(target=warm_up_sender, args=(consumed, _concurrency(sender)),
                              name="waflow-sender-warm-up", daemon=True)
    sender.sender_warm_up = thread
    thread.start()


@signals.worker_ready.connect
def _warm_up_before_the_first_message(sender: Any = None, **_: Any) -> None:
    """A sender is warmed up before its event loop handles the first message: it waits for the
    warm-up that ran during mingle, or warms up now (a forking pool)."""
    thread = getattr(sender, "sender_warm_up", None)
    if thread is not None:
        thread.join()
        return
    warm_up_sender(_consumed_queues(), _concurrency(sender))
