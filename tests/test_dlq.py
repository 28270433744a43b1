"""The dead-letter queue: what fails for good is kept, with its reason, never dropped."""
from __future__ import annotations

import pytest

from waflow import queues
from waflow.dlq import DEAD_LETTER_QUEUE
from waflow.tasks import celery_app


@pytest.fixture
def dead_letters():
    """Read the records published to wa.dead_letter (on the in-process embedded broker)."""
    with celery_app.connection_for_write() as conn:
        simple = conn.SimpleQueue(DEAD_LETTER_QUEUE)
        simple.clear()

        def read() -> list[dict]:
            records = []
            while True:
                try:
                    message = simple.get(timeout=2 if not records else 0.2)
                except simple.Empty:
                    return records
                records.append(message.payload)
                message.ack()

        yield read
        simple.close()


def test_a_task_that_fails_for_good_is_dead_lettered_with_its_arguments_and_error(dead_letters):
    from waflow.core import handle_normalized

    # Not a valid normalized event; it carries a client's words.
    bad_event = {"event_id": "message:wamid.BAD", "kind": "message", "received_at": "my divorce papers"}
    result = handle_normalized.apply(args=(bad_event,))
    assert result.failed()
    [record] = dead_letters()
    assert record["queue"] == queues.INCOMING_NORMALIZED
    assert record["task"] == "waflow.core.handle_normalized"
    assert record["error_type"] == "InvalidEvent"
    assert record["payload"] == {"args": [bad_event], "kwargs": {}}
    assert record["retries"] == 0
    # The reason names the fields; the client's words stay out of it, the traceback and the logs.
    assert "received_at: Input should be a valid number" in record["reason"]
    assert "InvalidEvent" in record["traceback"]
    assert "divorce" not in record["reason"] + record["traceback"] + str(result.result)


def test_a_body_that_is_not_a_webhook_is_dead_lettered_at_once_with_its_reason(dead_letters):
    from waflow.ingestor import ingest_raw

    assert ingest_raw.apply(args=('{"object":"instagram","entry":[]}', 1764000000.0)).get() == 0
    [record] = dead_letters()
    assert record["error_type"] == "NotAWebhook"
    assert record["reason"] == "object is 'instagram', not 'whatsapp_business_account'"
    assert record["payload"] == '{"object":"instagram","entry":[]}'
    assert record["received_at"] == 1764000000.0


def test_a_database_error_is_retried_three_times_then_dead_lettered(dead_letters, monkeypatch):
    from sqlalchemy.exc import OperationalError

    from waflow import core

    attempts = []

    def unreachable(*_args, **_kwargs):
        attempts.append(1)
        raise OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused"))

    from support import compact, text_webhook
    from waflow.ingestor import split_webhook

    monkeypatch.setattr(core, "transaction", unreachable)
    [parsed] = split_webhook(compact(text_webhook([], statuses=[("wamid.DB", "sent")])), 1764000000.0).events
    event = parsed.model_dump(mode="json", exclude_none=True)
    result = core.handle_normalized.apply(args=(event,))
    assert result.failed()
    assert len(attempts) == 4  # the first run and three retries
    [record] = dead_letters()
    assert (record["error_type"], record["retries"]) == ("OperationalError", 3)


def test_a_broker_error_hands_the_message_back_instead_of_failing_it(dead_letters, monkeypatch, default_db):
    from celery.exceptions import Reject
    from kombu.exceptions import OperationalError

    from support import compact, text_webhook
    from waflow import ingestor, tasks

    def broker_down(*_args, **_kwargs):
        raise OperationalError("[Errno 111] Connection refused")

    monkeypatch.setattr(tasks, "REQUEUE_PAUSE", 0)
    monkeypatch.setattr(ingestor.handle_normalized, "apply_async", broker_down)
    with pytest.raises(Reject) as caught:
        ingestor.ingest_raw.run(compact(text_webhook(["wamid.BRK"])).decode(), 1764000000.0)
    assert caught.value.requeue is True
    assert dead_letters() == []
