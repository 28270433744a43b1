"""Publishing raw webhooks: a valid Celery task message, confirmed, or an error within a second."""
from __future__ import annotations

import socket
import threading
import time

import pytest
from kombu import Connection

from conftest import requires_rabbitmq
from support import AMQP_URL, REFERENCE_BODY, compact, sign, text_webhook
from waflow import queues
from waflow.broker import INGEST_TASK, CeleryPublisher, ConfirmingPublisher, PublishError
from waflow.tasks import celery_app

# Bytes that are not UTF-8 must still reach the ingestor unchanged.
ODD_BODY = REFERENCE_BODY[:-3] + b"\xff\xfe\x80" + "ü".encode() + b"]}"


def _restore(message) -> tuple[bytes, float]:
    args, kwargs, _embed = message.payload if hasattr(message, "payload") else message
    assert kwargs == {}
    return args[0].encode("utf-8", "surrogateescape"), args[1]


def _assert_celery_message(message, body: bytes) -> None:
    assert message.headers["task"] == INGEST_TASK
    assert message.headers["id"] == message.properties["correlation_id"]
    assert message.headers["argsrepr"] == f"(<{len(body)} bytes>, {_restore(message)[1]!r})"
    assert message.content_type == "application/json"
    assert _restore(message)[0] == body


def test_the_embedded_publisher_queues_a_celery_task_message_with_the_bytes_unchanged():
    with celery_app.connection_for_write() as conn:
        raw_queue = queues.queue(queues.INCOMING_RAW)
        simple = conn.SimpleQueue(raw_queue)
        simple.clear()
        CeleryPublisher(celery_app).publish_raw(ODD_BODY, 1764000000.25)
        message = simple.get(timeout=5)
        _assert_celery_message(message, ODD_BODY)
        assert _restore(message)[1] == 1764000000.25
        message.ack()
        simple.close()


def test_it_fails_within_a_second_when_the_broker_refuses_connections():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again at once: nothing listens there
    publisher = ConfirmingPublisher(celery_app, f"amqp://guest:guest@127.0.0.1:{port}//", timeout=0.9)
    started = time.monotonic()
    with pytest.raises(PublishError):
        publisher.publish_raw(REFERENCE_BODY, time.time())
    assert time.monotonic() - started < 1.0


def test_it_fails_within_a_second_when_the_broker_never_answers():
    # A socket that accepts connections but never speaks AMQP: a hung or black-holed broker.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        url = f"amqp://guest:guest@127.0.0.1:{silent.getsockname()[1]}//"
        publisher = ConfirmingPublisher(celery_app, url, timeout=0.9)
        for _ in range(2):
            started = time.monotonic()
            with pytest.raises(PublishError):
                publisher.publish_raw(REFERENCE_BODY, time.time())
            assert time.monotonic() - started < 1.0


def test_the_webhook_answers_503_within_a_second_with_the_broker_down(settings):
    from waflow import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    publisher = ConfirmingPublisher(celery_app, f"amqp://guest:guest@127.0.0.1:{port}//", timeout=0.9)
    client = create_app({"TESTING": True, "WAFLOW_SETTINGS": settings, "WAFLOW_PUBLISHER": publisher}).test_client()
    body = compact(text_webhook(["wamid.DOWN"]))
    started = time.monotonic()
    response = client.post("/webhooks/whatsapp", data=body, headers={"X-Hub-Signature-256": sign(body)})
    assert response.status_code == 503
    assert time.monotonic() - started < 1.0


@pytest.fixture
def rabbit():
    """A connection to the test vhost with wa.incoming.raw declared and empty."""
    with Connection(AMQP_URL) as conn:
        channel = conn.channel()
        for queue in queues.declarations():
            queue(channel).declare()
        queue = queues.queue(queues.INCOMING_RAW)(channel)
        queue.purge()
        yield conn, queue
        queue.purge()


def _depth(conn) -> int:
    return conn.default_channel.queue_declare(queues.INCOMING_RAW, passive=True).message_count


@requires_rabbitmq
def test_it_publishes_a_persistent_celery_task_message_that_rabbitmq_confirmed(rabbit):
    conn, queue = rabbit
    publisher = ConfirmingPublisher(celery_app, AMQP_URL, timeout=2)
    publisher.publish_raw(ODD_BODY, 1764000000.5)
    message = queue.get(no_ack=False)
    assert message is not None
    assert message.delivery_info["routing_key"] == queues.INCOMING_RAW
    assert message.properties["delivery_mode"] == 2
    _assert_celery_message(message, ODD_BODY)
    message.ack()


@requires_rabbitmq
def test_it_confirms_every_message_of_many_concurrent_requests(rabbit):
    conn, _ = rabbit
    publisher = ConfirmingPublisher(celery_app, AMQP_URL, timeout=5)
    errors: list[Exception] = []

    def post(i: int) -> None:
        try:
            publisher.publish_raw(compact(text_webhook([f"wamid.C{i}"])), time.time())
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=post, args=(i,)) for i in range(300)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert _depth(conn) == 300


@requires_rabbitmq
def test_it_never_reports_success_for_a_message_rabbitmq_could_not_route(rabbit):
    conn, queue = rabbit
    publisher = ConfirmingPublisher(celery_app, AMQP_URL, timeout=2)
    publisher.publish_raw(REFERENCE_BODY, time.time())  # connects and declares the queue
    queue.delete()
    with pytest.raises(PublishError, match="route"):
        publisher.publish_raw(REFERENCE_BODY, time.time())
    # The publisher reconnects and declares the queue again: the next webhook is queued.
    publisher.publish_raw(REFERENCE_BODY, time.time())
    assert _depth(conn) == 1


@requires_rabbitmq
def test_it_recovers_when_its_connection_was_closed_behind_its_back(rabbit):
    conn, _ = rabbit
    publisher = ConfirmingPublisher(celery_app, AMQP_URL, timeout=2)
    publisher.publish_raw(REFERENCE_BODY, time.time())
    publisher._conn.connection.sock.close()  # as after a broker restart or a network cut
    publisher.publish_raw(REFERENCE_BODY, time.time())
    assert _depth(conn) == 2


def test_the_embedded_transport_never_hands_a_consumer_half_a_message(tmp_path):
    from waflow import config

    settings = config.load({"WAFLOW_VAR_DIR": str(tmp_path)})
    options = {**queues.transport_options(settings), "polling_interval": 0}  # poll as fast as possible
    queue = queues.queue(queues.MEDIA_PROCESSING)
    payload = {"blob": "x" * 1_000_000}  # far beyond one write() of the stock transport's, so it could tear
    received: list[dict] = []
    failed: list[BaseException] = []

    def consume() -> None:
        try:
            with Connection("embedded://", transport_options=options) as conn:
                simple = conn.SimpleQueue(queue)
                while len(received) < 50:
                    # A torn file would raise a JSONDecodeError here. The timeout only bounds a lost message:
                    # 50 MB written with fsyncs can take a while on a busy disk.
                    message = simple.get(timeout=120)
                    received.append(message.payload)
                    message.ack()
                simple.close()
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below, with its type
            failed.append(exc)

    consumer = threading.Thread(target=consume)
    consumer.start()
    with Connection("embedded://", transport_options=options) as conn:
        simple = conn.SimpleQueue(queue)
        for _ in range(50):
            simple.put(payload)
        simple.close()
    consumer.join(150)
    assert failed == []
    assert len(received) == 50 and all(r == payload for r in received)


@requires_rabbitmq
def test_a_forked_child_publishes_on_its_own_connection_and_leaves_the_parents_alone(rabbit):
    import os

    conn, _ = rabbit
    publisher = ConfirmingPublisher(celery_app, AMQP_URL, timeout=2)
    publisher.publish_raw(REFERENCE_BODY, time.time())  # the parent's thread and connection exist now
    pid = os.fork()
    if pid == 0:  # the child, as a gunicorn or prefork worker would be
        try:
            publisher.publish_raw(REFERENCE_BODY, time.time())
            os._exit(0)
        except BaseException:  # noqa: BLE001 - report through the exit code
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    publisher.publish_raw(REFERENCE_BODY, time.time())
    assert _depth(conn) == 3
