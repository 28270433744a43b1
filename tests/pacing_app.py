"""A tiny Celery app for tests/test_consumer.py: one rate-limited task that records when it ran.

Run by real ``celery worker`` subprocesses, configured through the environment the test gives
them (tests may read it; ``waflow/`` may not):

- ``PACING_BROKER_URL``: the test vhost; the app uses only its own two queues, named after
  ``PACING_QUEUE_PREFIX`` (the test run's own, so parallel runs never share them).
- ``PACING_RATE_LIMIT``: the task's ``rate_limit``, e.g. ``40/s``.
- ``PACING_CONSUMER``: ``paced`` (``waflow.consumer:PacedConsumer``, default) or ``stock``.
- ``PACING_RECORDS``: the file every run and every reply-lane arrival appends a JSON line to.
- ``REDIS_URL``: read by ``waflow.config``, so the limiter's store is the test database.
- ``PACING_SEND_SECONDS``: how long the task holds its thread after its slot, as a send waits for
  Meta's answer (default 0).
"""
from __future__ import annotations

import json
import os
import time
from typing import Any

from celery import Celery, signals
from kombu import Queue

from waflow import limiter

TASK = "limiter_test.record"


def queue_names(prefix: str) -> tuple[str, str]:
    """The reply and broadcast queues of one test run."""
    return f"{prefix}.reply", f"{prefix}.broadcast"


def make_app(broker_url: str, consumer: str = "paced", prefix: str = "limiter_test") -> Celery:
    app = Celery("pacing_app", broker=broker_url, set_as_current=False)
    app.conf.update(
        task_queues=[Queue(name, routing_key=name) for name in queue_names(prefix)],
        task_default_queue=queue_names(prefix)[0],
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
    )
    if consumer == "paced":
        # The line celeryconfig.py gets (see waflow/consumer.py).
        app.conf.worker_consumer = "waflow.consumer:PacedConsumer"
    return app


app = make_app(os.environ.get("PACING_BROKER_URL", "memory://"), os.environ.get("PACING_CONSUMER", "paced"),
               os.environ.get("PACING_QUEUE_PREFIX", "limiter_test"))
RECORDS = os.environ.get("PACING_RECORDS", os.devnull)
SEND_SECONDS = float(os.environ.get("PACING_SEND_SECONDS", "0"))


def _append(entry: dict[str, Any]) -> None:
    # One write on an O_APPEND descriptor: lines from threads and processes never interleave.
    fd = os.open(RECORDS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (json.dumps(entry) + "\n").encode())
    finally:
        os.close(fd)


@app.task(name=TASK, bind=True, acks_late=True, shared=False,
          rate_limit=os.environ.get("PACING_RATE_LIMIT", "40/s"))
def record(self, n: int) -> None:
    """Wait for the slot, as the send task does before its POST, then note the time."""
    slot = getattr(self.request, limiter.SLOT_KEY, None)
    waited = limiter.wait_for_slot(self.request)
    _append({"event": "run", "t": time.time(), "n": n, "slot": slot, "waited": waited, "pid": os.getpid(),
             "lane": (self.request.headers or {}).get("lane")})
    if SEND_SECONDS:
        time.sleep(SEND_SECONDS)


@signals.task_received.connect
def _note_reply_arrival(request: Any = None, **_: Any) -> None:
    """Note when a reply-lane message reaches the worker, so its wait in the bucket can be told apart
    from its wait at the broker."""
    if request is not None and request.request_dict.get("lane") == "reply":
        _append({"event": "received", "t": time.time(), "n": request.args[0]})
