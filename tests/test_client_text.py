"""No log line and no dead-letter message carries what a client wrote (issue 15, item 1).

Bodies and events carrying ``MARKER`` go through every way the inbound path fails: a body that is
not a webhook, an update that cannot be read (or raises), an event core refuses, a database error
that quotes the failing row. Every logger is captured at DEBUG; the marker may stay in a dead
letter's ``args`` and ``detail`` (that is what they are for: operators replay and diagnose from
them), nowhere else.
"""
from __future__ import annotations

import json
import logging

import pytest
import sqlalchemy as sa

from conftest import SKIP_PG
from hostile_bodies import MARKER, deep_message, envelope, nested, text
from support import PG_URL, compact, text_webhook
from waflow import config, queues
from waflow.tasks import celery_app


@pytest.fixture
def every_log(caplog):
    """Every logger at DEBUG, into caplog (loggers that do not propagate too); yields a function that
    returns everything any record holds, rendered."""
    caplog.set_level(logging.DEBUG)
    detached = []
    for name in list(logging.root.manager.loggerDict):
        caplog.set_level(logging.DEBUG, logger=name)
        found = logging.getLogger(name)
        if not found.propagate:
            found.addHandler(caplog.handler)
            detached.append(found)
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")

    def everything() -> str:
        return "\n".join(formatter.format(r) + repr(vars(r)) for r in caplog.records)

    yield everything
    for found in detached:
        found.removeHandler(caplog.handler)


@pytest.fixture
def dead_letters(default_db):
    def drain(name: str = queues.DEAD_LETTER) -> list:
        found = []
        with celery_app.connection_for_write() as conn:
            simple = conn.SimpleQueue(queues.queue(name))
            while True:
                try:
                    message = simple.get(block=False)
                except simple.Empty:
                    return found
                message.ack()
                found.append(message.payload)

    for name in (queues.INCOMING_NORMALIZED, queues.MEDIA_PROCESSING, queues.DEAD_LETTER):
        drain(name)
    yield drain
    for name in (queues.INCOMING_NORMALIZED, queues.MEDIA_PROCESSING, queues.DEAD_LETTER):
        drain(name)


def assert_no_client_text(logs: str, records: list[dict], expected: int) -> None:
    assert len(records) == expected, [r["error_message"] for r in records]
    for record in records:
        assert MARKER not in record["error_message"], record["error_message"]
        assert MARKER not in (record["traceback"] or ""), record["traceback"]
        # The marker went this way: the record keeps it for a replay or a diagnosis.
        assert MARKER in json.dumps(record["args"]) + (record["detail"] or ""), record
    assert MARKER not in logs


NOT_WEBHOOKS = [
    json.dumps({"object": MARKER, "entry": []}),
    json.dumps({"object": "whatsapp_business_account", "entry": MARKER}),
    json.dumps({"object": "whatsapp_business_account", "entry": [{"id": MARKER, "changes": MARKER}]}),
    '{"object":"whatsapp_business_account","entry":[{"id":"' + MARKER,
    MARKER,
    json.dumps([MARKER]),
    '{"object":"whatsapp_business_account","entry":[{"x":"' + MARKER + '"' + "[" * 100_000,
]


@pytest.mark.parametrize("body", NOT_WEBHOOKS, ids=range(len(NOT_WEBHOOKS)))
def test_a_body_that_is_not_a_webhook_leaves_no_client_text_in_logs_or_messages(every_log, dead_letters, body):
    from waflow.ingestor import ingest_raw

    assert ingest_raw.apply(args=(body, 1764000000.0)).successful()
    assert_no_client_text(every_log(), dead_letters(), 1)


def test_unreadable_updates_leave_no_client_text_in_logs_or_messages(every_log, dead_letters, monkeypatch):
    from waflow import ingestor
    from waflow.ingestor import splitting

    real = splitting._type_content

    def raises_quoting_the_client(mtype, msg):
        if msg.get("id") == "wamid.RAISES":
            raise KeyError(f"{MARKER} was not expected here")
        return real(mtype, msg)

    monkeypatch.setattr(splitting, "_type_content", raises_quoting_the_client)
    long_status = {"id": "wamid.S", "status": MARKER * 30, "timestamp": "1764000000", "recipient_id": "1555"}
    body = envelope([
        text(None),                                        # no id
        text("wamid.TS", timestamp=MARKER),                 # a timestamp that is words
        MARKER,                                             # not an object
        {"id": "wamid.NOTYPE", "from": "1555", "timestamp": "1", "text": {"body": MARKER}},
        deep_message("wamid.DEEP", 500),                    # keys and leaf are the marker, 500 deep
        text(MARKER * 30),                                  # an id of 360 characters
        text("wamid.RAISES"),                               # an error whose text quotes the client
        text("wamid.GOOD"),
    ], statuses=[long_status, MARKER], errors=MARKER)
    body["entry"][0]["changes"].append({"value": {"note": MARKER}})          # a change with no field
    body["entry"][0]["changes"].append({"field": MARKER * 30, "value": {}})  # a field of 360 characters
    body["entry"][0]["changes"].append({"field": "account_update", "value": nested(70)})
    from waflow.ingestor import ingest_raw

    assert ingest_raw.apply(args=(compact(body).decode(), 1764000000.0)).result == 1
    assert_no_client_text(every_log(), dead_letters(), 13)


INVALID_EVENTS = [
    {"event_id": "message:wamid.X", "kind": MARKER, "field": "messages", "received_at": MARKER,
     "payload_sha256": MARKER},
    {"event_id": "field:x", "kind": "field", "field": MARKER * 30, "received_at": 1.0, "payload_sha256": "a",
     "update": {"field": MARKER, "value": nested(80)}},
    {"event_id": "message:w", "kind": "message", "field": "messages", "received_at": 1.0, "payload_sha256": "a",
     "contact": {"wa_id": MARKER * 30, "name": MARKER},
     "message": {"wamid": "w", "type": "text", "timestamp": MARKER, "raw": {MARKER: [MARKER]},
                 "errors": [{"code": MARKER}], "content": MARKER}},
]


@pytest.mark.parametrize("event", INVALID_EVENTS, ids=range(len(INVALID_EVENTS)))
def test_an_event_core_refuses_leaves_no_client_text_in_logs_or_messages(every_log, dead_letters, event):
    from waflow.core import handle_normalized

    assert handle_normalized.apply(args=(event,)).failed()
    assert_no_client_text(every_log(), dead_letters(), 1)


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, default_db):
    if request.param == "sqlite":
        return default_db
    if not PG_URL:
        pytest.skip(SKIP_PG)
    from support import migrate

    url = config.load({"DATABASE_URL": PG_URL}).database_url
    migrate(url, fresh=True)
    return url


def test_a_database_error_quoting_the_client_leaves_no_client_text_in_logs_or_messages(every_log, dead_letters,
                                                                                       monkeypatch, database):
    """PostgreSQL's error quotes the failing row ('Failing row contains (..., <name>, ...)'), psycopg2
    having put the values into the statement itself; SQLite's names the constraint."""
    from waflow import core
    from waflow.db import transaction
    from waflow.ingestor import split_webhook

    real_persist = core.persist_event
    now = "now()" if database.startswith("postgresql") else "CURRENT_TIMESTAMP"

    def persist_then_break_a_constraint(conn, event, *rest):
        stored = real_persist(conn, event, *rest)
        conn.execute(sa.text(f"INSERT INTO contacts (name, created_at, updated_at) VALUES (:v, {now}, {now})"),
                     {"v": f"{MARKER} {event.message.text}"})
        return stored

    monkeypatch.setattr(core, "transaction", lambda: transaction(database))
    monkeypatch.setattr(core, "persist_event", persist_then_break_a_constraint)
    [event] = split_webhook(compact(text_webhook([f"wamid.{database[:5]}"], body=MARKER)), 1764000000.0).events
    assert core.handle_normalized.apply(args=(event.model_dump(mode="json", exclude_none=True),)).failed()
    [record] = dead_letters()
    assert record["error_type"] == "IntegrityError" and record["retries"] == 0
    assert_no_client_text(every_log(), [record], 1)
    if database.startswith("postgresql"):
        assert MARKER in record["detail"]  # the database did quote it


def test_a_task_applied_without_argsrepr_logs_its_arguments_redacted(every_log, dead_letters):
    """Celery's failure line shows ``argsrepr``, else the arguments themselves."""
    from waflow.core import handle_normalized

    assert handle_normalized.apply(args=({"event_id": "message:wamid.R", "kind": MARKER, "note": MARKER},)).failed()
    logs = every_log()
    assert "raised unexpected" in logs or "InvalidEvent" in logs  # Celery's own failure line was captured
    assert MARKER not in logs
    dead_letters()


def test_a_dlq_show_still_gives_operators_the_whole_story(dead_letters):
    """What logs leave out, the dead letter keeps: the arguments (and the database's words in detail)."""
    from waflow.ingestor import ingest_raw

    ingest_raw.apply(args=(compact(envelope([text(None, "my divorce papers")])).decode(), 1764000000.0))
    [record] = dead_letters()
    assert "my divorce papers" in record["args"][0]
    assert record["error_message"] == "entry[0].changes[0].messages[0]: message has no id"

