"""The whole inbound spine as deployed: real gunicorn and real Celery workers in subprocesses.

Runs once on the embedded default (SQLite + kombu's filesystem transport) and,
when their URLs are set, once on RabbitMQ + PostgreSQL.
"""
from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa
from kombu import Connection

from conftest import SKIP_AMQP, SKIP_PG
from fixtures import load_cases, to_bytes, unique_ids
from support import AMQP_URL, PG_URL, Stack, compact, migrate, prepared_stack, running, text_webhook, wait_for, wipe
from waflow import config, queues
from waflow.db import get_engine


@pytest.fixture(scope="module", params=["embedded", "rabbitmq+postgresql"])
def stack(request):
    with running(prepared_stack(request.param, "waflow-e2e-")) as started:
        yield started


@pytest.fixture
def live(stack):
    """The running stack, with an empty database and dead-letter queue."""
    wipe(stack.settings.database_url)
    drain_dead_letters(stack)
    yield stack


def scalar(stack, sql: str, **params):
    with get_engine(stack.settings.database_url).connect() as conn:
        return conn.execute(sa.text(sql), params).scalar()


def wait_rows(stack, table: str, expected: int, timeout: float = 60, where: str = "1=1") -> None:
    try:
        wait_for(lambda: scalar(stack, f"SELECT count(*) FROM {table} WHERE {where}") >= expected, timeout,
                 interval=0.2, what=f"{expected} rows in {table}")
    except AssertionError:
        print(stack.logs())
        raise


def drain_dead_letters(stack, timeout: float = 0.0) -> list[dict]:
    """Take every dead-letter record off the queue (waiting up to ``timeout`` for the first)."""
    from waflow.dlq.records import DEAD_LETTER_QUEUE

    records = []
    with Connection(stack.settings.broker_url,
                    transport_options=queues.transport_options(stack.settings)) as conn:
        simple = conn.SimpleQueue(DEAD_LETTER_QUEUE)
        wait = timeout
        while True:
            try:
                message = simple.get(block=wait > 0, timeout=wait or None)
            except simple.Empty:
                break
            records.append(message.payload)
            message.ack()
            wait = 0
        simple.close()
    return records


def test_every_fixture_payload_ends_in_the_database(live):
    expected = {"messages": 0, "message_statuses": 0, "webhook_events": 0, "media": 0}
    for n, (stem, case, body) in enumerate(load_cases()):
        doc = unique_ids(body, f"{stem}-{case}-{n}")
        for entry in doc["entry"]:
            for change in entry["changes"]:
                value = change["value"]
                if change["field"] != "messages":
                    expected["webhook_events"] += 1
                    continue
                expected["messages"] += len(value.get("messages", []))
                expected["message_statuses"] += len(value.get("statuses", []))
                expected["webhook_events"] += len(value.get("errors", []))
                for m in value.get("messages", []):
                    m = m["edit"]["message"] if m["type"] == "edit" else m  # an edit can carry new media
                    expected["media"] += m["type"] in ("image", "video", "audio", "document", "sticker")
        response = live.post(to_bytes(doc))
        assert response.status_code == 200, (stem, case, response.text)
    for table, n in expected.items():
        wait_rows(live, table, n)
        assert scalar(live, f"SELECT count(*) FROM {table}") == n, table
    # Spot checks of the right fields, straight from the fixtures.
    assert scalar(live, "SELECT body FROM messages WHERE type = 'text' AND content LIKE '%Body Text%'"
                  if live.settings.database_url.startswith("sqlite") else
                  "SELECT body FROM messages WHERE type = 'text' AND content::text LIKE '%Body Text%'") == "Body Text"
    assert scalar(live, "SELECT count(*) FROM messages WHERE phone_number_id = '1122334455667'") > 20
    assert scalar(live, "SELECT count(*) FROM contacts WHERE user_id = 'US.13491208655302741918'") == 1
    assert scalar(live, "SELECT count(*) FROM messages WHERE type = 'reaction' AND body IS NOT NULL") == 1
    assert scalar(live, "SELECT count(*) FROM message_statuses WHERE status = 'failed' AND error_code = 130472") == 1
    assert scalar(live, "SELECT count(*) FROM webhook_payloads") == len(load_cases())
    # Every attachment has its row. The media worker asks the stack's Meta simulator for each: it never
    # issued the fixtures' media ids, so each fails at once as Meta answers them (code 100), none dead-lettered.
    wait_rows(live, "media", expected["media"], where="status = 'failed' AND error LIKE 'media id expired%'")
    assert drain_dead_letters(live) == []


def test_the_same_webhook_five_times_leaves_one_row(live):
    body = compact(text_webhook(["wamid.FIVE"]))
    threads = [threading.Thread(target=live.post, args=(body,)) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    live.post(compact(text_webhook(["wamid.AFTER"])))  # once this is stored, the five were handled
    wait_rows(live, "messages", 1, where="wamid = 'wamid.AFTER'")
    wait_for(lambda: scalar(live, "SELECT count(*) FROM webhook_payloads") == 2, 30, what="payloads")
    assert scalar(live, "SELECT count(*) FROM messages WHERE wamid = 'wamid.FIVE'") == 1


def test_every_webhook_delivered_three_times_concurrently_leaves_one_row_each(live):
    """Meta's retries overlap its first delivery: 40 webhooks, each posted 3 times at once."""
    from concurrent.futures import ThreadPoolExecutor

    bodies = [compact(text_webhook([f"wamid.THRICE{i}"], wa_id=f"155500{i:05d}",
                                   statuses=[(f"wamid.OUT-THRICE{i}", "delivered")])) for i in range(40)]
    with ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(lambda body: live.post(body).status_code, [b for b in bodies for _ in range(3)]))
    assert answers == [200] * 120
    wait_rows(live, "messages", 40, where="wamid LIKE 'wamid.THRICE%'")
    wait_rows(live, "message_statuses", 40)
    wait_for(lambda: scalar(live, "SELECT count(*) FROM webhook_payloads") == 40, 30, what="payloads")
    assert scalar(live, "SELECT count(*) FROM messages") == 40
    assert scalar(live, "SELECT count(DISTINCT wamid) FROM messages") == 40
    assert scalar(live, "SELECT count(*) FROM message_statuses") == 40
    assert scalar(live, "SELECT count(*) FROM contacts") == 40
    assert scalar(live, "SELECT count(*) FROM conversations") == 40


def test_messages_and_statuses_in_one_post_are_all_stored(live):
    doc = text_webhook(["wamid.MIX1", "wamid.MIX2"], statuses=[("wamid.OUT1", "delivered"), ("wamid.OUT2", "read")])
    assert live.post(compact(doc)).status_code == 200
    wait_rows(live, "messages", 2)
    wait_rows(live, "message_statuses", 2)


def test_a_poison_payload_goes_to_the_dead_letter_queue_and_the_next_is_still_processed(live):
    assert live.post(b'{"object": "whatsapp_business_account", "entry": [').status_code == 200
    assert live.post(b'{"object":"page","entry":[]}').status_code == 200
    assert live.post(compact(text_webhook(["wamid.NEXT"]))).status_code == 200
    wait_rows(live, "messages", 1, where="wamid = 'wamid.NEXT'")
    # The recorder stores both records in dead_letters, with their reasons.
    wait_rows(live, "dead_letters", 2, timeout=30)
    with get_engine(live.settings.database_url).connect() as conn:
        rows = conn.execute(sa.text("SELECT queue, error_type, error_message, source FROM dead_letters "
                                    "ORDER BY error_message")).all()
    assert rows[0].error_message.startswith("body is not JSON")
    assert rows[1].error_message == "object is not 'whatsapp_business_account' (a string of 4 characters)"
    assert {(r.queue, r.error_type, r.source) for r in rows} == {("wa.incoming.raw", "NotAWebhook", "handler")}
    assert drain_dead_letters(live) == []  # acknowledged once recorded


def test_a_1000_update_batch_is_persisted(live):
    wamids = [f"wamid.K{i:04d}" for i in range(600)]
    doc = text_webhook(wamids, statuses=[(f"wamid.OUTK{i}", "sent") for i in range(400)])
    assert live.post(compact(doc)).status_code == 200
    wait_rows(live, "messages", 600, timeout=120)
    wait_rows(live, "message_statuses", 400, timeout=60)
    assert scalar(live, "SELECT count(DISTINCT wamid) FROM messages") == 600


def test_the_spine_runs_on_quorum_queues_and_dead_letters_through_them(tmp_path):
    """WAFLOW_QUEUE_TYPE=quorum, for a RabbitMQ cluster: same results, on the vhost .ci/run makes for it."""
    if not (PG_URL and AMQP_URL):
        pytest.skip(SKIP_PG if not PG_URL else SKIP_AMQP)
    broker_url = AMQP_URL + "_quorum"  # .ci/run makes a quorum twin of the tests' vhost
    settings = config.load({"DATABASE_URL": PG_URL, "CELERY_BROKER_URL": broker_url, "WAFLOW_VAR_DIR": str(tmp_path),
                            "WAFLOW_QUEUE_TYPE": "quorum"})
    migrate(settings.database_url, fresh=True)
    running = Stack(database_url=PG_URL, broker_url=broker_url, var_dir=str(tmp_path))
    running.env["WAFLOW_QUEUE_TYPE"] = "quorum"
    running.settings = settings
    try:
        running.start()
        assert running.post(compact(text_webhook(["wamid.QUORUM"]))).status_code == 200
        assert running.post(b'{"object":"page","entry":[]}').status_code == 200
        wait_rows(running, "messages", 1, where="wamid = 'wamid.QUORUM'")
        wait_rows(running, "dead_letters", 1, timeout=30)
        with Connection(broker_url) as conn:
            declared = conn.default_channel.queue_declare(queues.INCOMING_RAW, passive=True)
        assert declared.message_count == 0
    finally:
        running.stop()
