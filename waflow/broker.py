"""Publishing a raw webhook to ``wa.incoming.raw``, durably, from the web process.

The webhook answers 200 only after the broker has confirmed the message. On
RabbitMQ, ``ConfirmingPublisher`` gives each web process one connection in
confirm mode, owned by one background thread: request threads hand it a
message and wait; the thread publishes whatever has gathered, persistent and
``mandatory``, then waits for the broker's confirms of the whole batch. One
round trip then covers many requests, which is what lets a 2-core web tier go
past 1,000 confirmed webhooks a second. A nack, an unroutable return, a lost
connection or no confirm within the timeout raises ``PublishError``, and the
webhook answers 503 (Meta redelivers).

The message is an ordinary Celery task message (protocol 2, built by Celery's
own ``as_task_v2``) for ``waflow.ingestor.ingest_raw`` with the body as text
(undecodable bytes escaped, so the ingestor restores them exactly) and the
receive time. What Flower shows of its arguments is the body's size only.

On any other broker (the embedded filesystem transport) ``CeleryPublisher``
publishes through Celery's ``send_task``; that transport has no confirms.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections import deque
from typing import Protocol

import amqp
from kombu import Connection

from waflow import queues
from waflow.config import Settings
from waflow.tasks import describe_args

logger = logging.getLogger(__name__)

INGEST_TASK = "waflow.ingestor.ingest_raw"


class PublishError(RuntimeError):
    """The message is not known to be queued; the caller must not acknowledge it."""


class Publisher(Protocol):
    def publish_raw(self, body: bytes, received_at: float) -> None: ...

    def ready(self) -> None:
        """Return if the broker takes publishes to ``wa.incoming.raw`` now; raise PublishError if not."""


def _args(body: bytes, received_at: float) -> tuple[tuple[str, float], str]:
    """The task's arguments (the body as text, undecodable bytes escaped) and what Flower may show of them."""
    return (body.decode("utf-8", "surrogateescape"), received_at), describe_args((body, received_at))


def task_message(app, body: bytes, received_at: float) -> tuple[str, dict, dict, bytes]:
    """Build the Celery task message for one raw webhook: (task id, headers, properties, body)."""
    task_id = str(uuid.uuid4())
    args, argsrepr = _args(body, received_at)
    msg = app.amqp.as_task_v2(task_id, INGEST_TASK, args=args, kwargs={}, argsrepr=argsrepr, kwargsrepr="{}")
    payload = json.dumps(msg.body).encode()
    return task_id, msg.headers, msg.properties, payload


class _Pending:
    """A message for the publisher thread, or (``message`` None) a readiness probe."""

    __slots__ = ("message", "task_id", "done", "error", "abandoned")

    def __init__(self, message: amqp.Message | None, task_id: str) -> None:
        self.message = message
        self.task_id = task_id
        self.done = threading.Event()
        self.error: Exception | None = None
        self.abandoned = False

    def finish(self, error: Exception | None = None) -> None:
        if not self.done.is_set():
            self.error = error
            self.done.set()


class ConfirmingPublisher:
    """One confirm-mode AMQP connection per process, shared by request threads."""

    # Publishing more than this in one go only delays the first confirms.
    MAX_BATCH = 256

    def __init__(self, app, url: str, timeout: float, connect_timeout: float = 0.5) -> None:
        self.app = app
        self.url = url
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._fresh_state()
        os.register_at_fork(after_in_child=self._fresh_state)

    def _fresh_state(self) -> None:
        """Start with no thread, no connection, nothing pending.

        Also runs in a forked child, right after the fork and before the child has other threads:
        it drops, without closing, everything the parent's thread owned. The parent's lock may have
        been held at that moment, so it is replaced, not reused."""
        self._cv = threading.Condition()
        self._queue: deque[_Pending] = deque()
        self._pid: int | None = None
        self._conn: Connection | None = None
        self._channel = None
        self._seq = 0
        self._unconfirmed: dict[int, _Pending] = {}
        self._by_task: dict[str, _Pending] = {}
        self._returned = False

    # -- request threads ----------------------------------------------------------------------------------------

    def publish_raw(self, body: bytes, received_at: float) -> None:
        task_id, headers, properties, payload = task_message(self.app, body, received_at)
        message = amqp.Message(
            payload, content_type="application/json", content_encoding="utf-8",
            application_headers=headers, delivery_mode=2, priority=0, **properties,
        )
        self._submit(_Pending(message, task_id))

    def ready(self) -> None:
        """A probe through the publisher's own connection: the queue is there and the channel open."""
        self._submit(_Pending(None, ""))

    def _submit(self, item: _Pending) -> None:
        self._start_if_needed()
        with self._cv:
            self._queue.append(item)
            self._cv.notify()
        if not item.done.wait(self.timeout):
            item.abandoned = True
            raise PublishError(f"no broker confirm within {self.timeout:.2f}s")
        if item.error is not None:
            raise item.error

    def _start_if_needed(self) -> None:
        if self._pid == os.getpid():
            return
        with self._cv:
            if self._pid != os.getpid():
                self._pid = os.getpid()
                threading.Thread(target=self._run, name="waflow-publisher", daemon=True).start()

    # -- the publisher thread ---------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._queue:
                    self._cv.wait()
                batch = [self._queue.popleft() for _ in range(min(len(self._queue), self.MAX_BATCH))]
            batch = [item for item in batch if not item.abandoned]
            try:
                if batch:
                    self._publish_batch(batch)
            except Exception as exc:  # noqa: BLE001 - the thread must outlive any surprise
                logger.exception("publisher: unexpected error; %d webhook(s) not queued", len(batch))
                for item in batch:
                    item.finish(PublishError(f"publisher error: {type(exc).__name__}"))
                self._drop_connection()

    def _publish_batch(self, batch: list[_Pending]) -> None:
        deadline = time.monotonic() + self.timeout
        for attempt in (1, 2):
            try:
                self._send(batch, deadline)
                return
            except Exception as exc:  # noqa: BLE001 - any failure means "not known to be queued"
                self._drop_connection()
                remaining = [item for item in batch if not item.done.is_set()]
                # A connection that died while idle fails the first publish: retry once on a fresh one.
                if attempt == 1 and remaining and deadline - time.monotonic() > self.connect_timeout:
                    logger.info("publisher: %s: reconnecting", type(exc).__name__)
                    batch = remaining
                    continue
                error = PublishError(f"broker unavailable: {type(exc).__name__}: {exc}")
                for item in remaining:
                    item.finish(error)
                logger.warning("publisher: %d webhook(s) not queued: %s", len(remaining), error)
                return

    def _send(self, batch: list[_Pending], deadline: float) -> None:
        channel = self._ensure_channel()
        for item in batch:
            if item.message is None:  # a readiness probe: the queue exists on an open channel
                channel.queue_declare(queue=queues.INCOMING_RAW, passive=True)
                item.finish()
                continue
            self._seq += 1
            self._unconfirmed[self._seq] = item
            self._by_task[item.task_id] = item
            channel.basic_publish(item.message, exchange=queues.EXCHANGE.name,
                                  routing_key=queues.INCOMING_RAW, mandatory=True)
        while self._unconfirmed:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("confirms did not arrive in time")
            self._conn.drain_events(timeout=left)
        if self._returned:
            # Something was unroutable (the queue was deleted?): reconnect, which declares it again.
            self._drop_connection()

    def _ensure_channel(self):
        if self._channel is None:
            conn = Connection(self.url, connect_timeout=self.connect_timeout, heartbeat=0)
            # One attempt, no sleep between retries (kombu's connect() waits 2 s before its second):
            # the request's own timeout is the budget, and the next batch tries again.
            conn.ensure_connection(max_retries=0)
            channel = conn.connection.channel()
            queues.queue(queues.INCOMING_RAW)(channel).declare()
            channel.confirm_select()
            channel.events["basic_ack"].add(self._on_ack)
            channel.events["basic_nack"].add(self._on_nack)
            channel.events["basic_return"].add(self._on_return)
            self._conn, self._channel, self._seq, self._returned = conn, channel, 0, False
        return self._channel

    def _drop_connection(self) -> None:
        conn, self._conn, self._channel = self._conn, None, None
        self._unconfirmed.clear()
        self._by_task.clear()
        if conn is not None:
            try:
                conn.collect()
            except Exception:  # noqa: BLE001 - it is already broken
                pass

    def _settle(self, tag: int, multiple: bool, error: Exception | None) -> None:
        tags = [t for t in self._unconfirmed if t <= tag] if multiple else [tag]
        for t in tags:
            item = self._unconfirmed.pop(t, None)
            if item is not None:
                self._by_task.pop(item.task_id, None)
                item.finish(item.error or error)

    def _on_ack(self, tag: int, multiple: bool) -> None:
        self._settle(tag, multiple, None)

    def _on_nack(self, tag: int, multiple: bool) -> None:
        self._settle(tag, multiple, PublishError("broker refused the message (nack)"))

    def _on_return(self, exc, exchange, routing_key, message) -> None:
        # Unroutable: RabbitMQ returns it, then acks it. Mark it failed before the ack arrives.
        self._returned = True
        task_id = message.properties.get("correlation_id")
        item = self._by_task.get(task_id)
        if item is not None:
            item.error = PublishError(f"broker could not route to {routing_key}: {exc}")


class CeleryPublisher:
    """Publish through Celery's producer pool (brokers without confirms: the embedded default)."""

    def __init__(self, app) -> None:
        self.app = app

    def publish_raw(self, body: bytes, received_at: float) -> None:
        from kombu.exceptions import KombuError

        args, argsrepr = _args(body, received_at)
        try:
            self.app.send_task(INGEST_TASK, args=args, queue=queues.INCOMING_RAW, argsrepr=argsrepr,
                               kwargsrepr="{}", retry=False)
        except (KombuError, OSError) as exc:  # e.g. the embedded broker's disk is full
            raise PublishError(f"broker unavailable: {exc}") from None

    def ready(self) -> None:
        from kombu.exceptions import KombuError

        try:
            with self.app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1)
                if self.app.conf.broker_transport_options.get("data_folder_out"):
                    # The embedded broker: "takes publishes" means its folders are there and writable.
                    for key in ("data_folder_out", "staging_folder"):
                        folder = self.app.conf.broker_transport_options[key]
                        if not os.access(folder, os.W_OK):
                            raise OSError(f"{folder} is not writable")
        except (KombuError, OSError) as exc:
            raise PublishError(f"broker unavailable: {exc}") from None


def make_publisher(settings: Settings) -> Publisher:
    """The publisher the web process uses for ``settings``' broker."""
    from waflow.tasks import celery_app

    if settings.amqp_broker:
        return ConfirmingPublisher(celery_app, settings.broker_url, settings.publish_timeout)
    return CeleryPublisher(celery_app)
