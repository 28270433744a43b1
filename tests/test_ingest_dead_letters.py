"""What the ingestor sets aside, in-process (embedded broker, SQLite; the recorder's table on PostgreSQL too):
one bad update never takes its batch, and its dead letter holds that update alone, replays alone and
never multiplies (issue 15, items 3 and 4). ``test_ingest_stack.py`` runs the same through gunicorn and
workers on RabbitMQ + PostgreSQL."""
from __future__ import annotations

import hashlib
import json

import pytest
import sqlalchemy as sa

from hostile_bodies import MARKER, bracket_flow, deep_message, envelope, idless_batch, nested_edit, text
from support import compact, orm
from waflow import queues
from waflow.dlq import records, recorder, tooling
from waflow.models import DeadLetter
from waflow.tasks import celery_app

RECEIVED_AT = 1764000000.0


def drain(queue_name: str) -> list:
    """Take every message off one queue of the in-process embedded broker: (body, headers) pairs."""
    found = []
    with celery_app.connection_for_write() as conn:
        simple = conn.SimpleQueue(queues.queue(queue_name))
        while True:
            try:
                message = simple.get(block=False)
            except simple.Empty:
                return found
            found.append((message.payload, message.headers))
            message.ack()


@pytest.fixture
def empty_queues(default_db):
    for name in (queues.INCOMING_RAW, queues.INCOMING_NORMALIZED, queues.MEDIA_PROCESSING, queues.DEAD_LETTER):
        drain(name)
    yield
    for name in (queues.INCOMING_RAW, queues.INCOMING_NORMALIZED, queues.MEDIA_PROCESSING, queues.DEAD_LETTER):
        drain(name)


def ingest(body: bytes | str, **kwargs) -> int:
    from waflow.ingestor import ingest_raw

    text_body = body.decode() if isinstance(body, bytes) else body
    result = ingest_raw.apply(args=(text_body, RECEIVED_AT), kwargs=kwargs)
    assert result.successful(), result.traceback
    return result.result


def dead_letters() -> list[dict]:
    return [payload for payload, _ in drain(queues.DEAD_LETTER)]


def normalized_ids() -> list[str]:
    return [args[0]["event_id"] for (args, _kwargs, _embed), _ in drain(queues.INCOMING_NORMALIZED)]


def store(url: str, found: list[dict]) -> None:
    from waflow.db import transaction

    for record in found:
        with transaction(url) as conn:
            recorder.store(conn, recorder.record_from_message(json.dumps(record).encode(), {}))


def replay_and_run(url: str, ids: list[int]) -> None:
    """Replay dead letters as ``dlq replay`` does, then run the ingest tasks that replay queued."""
    from waflow.db import transaction
    from waflow.ingestor import ingest_raw

    for dead_letter_id in ids:
        with transaction(url) as conn:
            [row] = tooling.find(conn, ids=[dead_letter_id])
            assert tooling.replay(conn, row, "test") is not None
    for (args, kwargs, _embed), headers in drain(queues.INCOMING_RAW):
        assert ingest_raw.apply(args=args, kwargs=kwargs, task_id=headers["id"]).successful()


def rows(url: str) -> list[DeadLetter]:
    with orm(url) as session:
        return list(session.scalars(sa.select(DeadLetter).order_by(DeadLetter.id)))


# --- item 3 -------------------------------------------------------------------------------------------------


def test_one_deep_update_leaves_the_rest_of_its_batch_and_the_audit_row_stored(empty_queues, default_db):
    body = compact(envelope([text("wamid.GOOD1"), deep_message("wamid.DEEP", 800), nested_edit("wamid.EDITS", 350),
                             bracket_flow("wamid.FLOW"), text("wamid.GOOD2")]))
    assert ingest(body) == 3
    assert normalized_ids() == ["message:wamid.GOOD1", "message:wamid.FLOW", "message:wamid.GOOD2"]
    found = dead_letters()
    assert [r["error_message"] for r in found] == [
        "entry[0].changes[0].messages[1]: nested more than 64 levels deep",
        "entry[0].changes[0].messages[2]: nested more than 64 levels deep"]
    with orm(default_db) as session:
        stored = session.execute(sa.text("SELECT body FROM webhook_payloads WHERE sha256 = :s"),
                                 {"s": hashlib.sha256(body).hexdigest()}).scalar_one()
    assert bytes(stored) == body


def test_an_update_that_raises_anything_is_set_aside_and_the_audit_row_is_still_stored(empty_queues, default_db,
                                                                                       monkeypatch):
    from waflow import ingestor
    from waflow.ingestor import splitting

    real = splitting._message_event

    def recursing(base, value, msg):
        if msg.get("id") == "wamid.BOOM":
            raise RecursionError("maximum recursion depth exceeded")
        return real(base, value, msg)

    monkeypatch.setattr(splitting, "_message_event", recursing)
    body = compact(envelope([text("wamid.OK"), text("wamid.BOOM")]))
    assert ingest(body) == 1
    assert normalized_ids() == ["message:wamid.OK"]
    [record] = dead_letters()
    assert record["error_message"] == "entry[0].changes[0].messages[1]: unreadable update (RecursionError)"
    with orm(default_db) as session:
        assert session.execute(sa.text("SELECT count(*) FROM webhook_payloads WHERE sha256 = :s"),
                               {"s": hashlib.sha256(body).hexdigest()}).scalar_one() == 1


# --- item 4 -------------------------------------------------------------------------------------------------


def test_each_bad_update_is_recorded_alone_with_its_envelope_and_the_key_of_the_stored_body(empty_queues):
    body = compact(idless_batch(299, good=["wamid.KEPT"]))
    sha = hashlib.sha256(body).hexdigest()
    assert ingest(body) == 1
    found = dead_letters()
    assert len(found) == 299
    by_key = {r["key"]: r for r in found}
    assert set(by_key) == {f"update:{sha}:entry[0].changes[0].messages[{i}]" for i in range(299)}
    sizes = [len(json.dumps(r)) for r in found]
    # The 299 records held the whole body each (19.5 MB); each now holds its own update, and
    # all of them together less than ten bodies.
    assert max(sizes) < 2_000 and sum(sizes) < 10 * len(body)
    first = by_key[f"update:{sha}:entry[0].changes[0].messages[0]"]
    assert first["kwargs"] == {"payload_sha256": sha, "position": {"entry": 0, "change": 0, "key": "messages",
                                                                     "index": 0}}
    assert first["detail"] == f"entry[0].changes[0].messages[0] of the body stored in webhook_payloads as {sha}"
    one = json.loads(first["args"][0])
    value = one["entry"][0]["changes"][0]["value"]
    assert one["entry"][0]["id"] == "100200300" and one["entry"][0]["time"] == 1764000000
    assert value["metadata"] == {"display_phone_number": "15550009999", "phone_number_id": "1122334455"}
    assert value["contacts"] == [{"profile": {"name": f"{MARKER} name"}, "wa_id": "15550001111"}]
    assert value["messages"] == [json.loads(body)["entry"][0]["changes"][0]["value"]["messages"][0]]
    assert first["args"][1] == RECEIVED_AT


def test_the_same_body_delivered_twice_is_recorded_once(empty_queues, db_url):
    body = compact(idless_batch(3, good=["wamid.TWICE"]))
    ingest(body)
    ingest(body)
    store(db_url, dead_letters())
    assert len(rows(db_url)) == 3


def test_a_replay_that_fails_again_updates_its_own_record_and_never_multiplies(empty_queues, db_url):
    ingest(compact(idless_batch(299)))
    store(db_url, dead_letters())
    before = rows(db_url)
    assert len(before) == 299
    chosen = [r.id for r in before[:4]]
    for replay in (1, 2):
        replay_and_run(db_url, chosen)
        again = dead_letters()
        assert len(again) == 4  # each replay set aside its one update again, and only that
        store(db_url, again)
        after = rows(db_url)
        assert len(after) == 299
        for row in after[:4]:
            assert (row.status, row.replay_count, row.error_type) == ("dead", replay, "BadUpdate")
            assert row.error_message == before[after.index(row)].error_message
            assert row.first_failed_at == before[after.index(row)].first_failed_at
        assert {r.task_id for r in after[:4]}.isdisjoint({r.task_id for r in before[:4]})
        assert all(r.status == "dead" and r.replay_count == 0 for r in after[4:])


def test_a_replayed_update_that_now_reads_is_persisted_under_its_original_position(empty_queues, db_url):
    """A payload-level error set aside (the cause fixed meanwhile) keeps its original id on replay."""
    from waflow import ingestor
    from waflow.ingestor import splitting

    body = compact(envelope([text("wamid.A")], errors=[{"code": 1}, {"code": 130429, "title": "Rate limit"}]))
    real = splitting._error_event

    def refuses_the_second(base, err, position):
        if position.index == 1:
            raise ingestor.BadUpdate("refused for the test")
        return real(base, err, position)

    splitting._error_event = refuses_the_second
    try:
        ingest(body)
    finally:
        splitting._error_event = real
    first = normalized_ids()
    store(db_url, dead_letters())
    [row] = rows(db_url)
    replay_and_run(db_url, [row.id])
    sha = hashlib.sha256(body).hexdigest()
    assert normalized_ids() == [f"error:{sha[:32]}:0.0.1"]
    assert first == ["message:wamid.A", f"error:{sha[:32]}:0.0.0"]
    assert dead_letters() == []


def test_a_dead_letter_in_the_shape_written_before_still_replays(empty_queues, db_url):
    """Before issue 15 a bad update's record held the whole body, keyed by task id and position."""
    body = compact(idless_batch(2, good=["wamid.OLDSHAPE"])).decode()
    old = records.input_record(task="waflow.ingestor.ingest_raw", task_id="t-old", queue=queues.INCOMING_RAW,
                               reason="message has no id", error_type="BadUpdate", args=[body, RECEIVED_AT],
                               received_at=RECEIVED_AT, key="t-old:update-0", detail=json.dumps({"no": "id"}))
    store(db_url, [old])
    [row] = rows(db_url)
    assert row.kwargs == {}
    replay_and_run(db_url, [row.id])
    assert normalized_ids() == ["message:wamid.OLDSHAPE"]  # the whole body, re-ingested
    store(db_url, dead_letters())
    old_row, *new_rows = rows(db_url)
    assert (old_row.key, old_row.status) == ("t-old:update-0", "replayed")
    assert [r.key.split(":")[-1] for r in new_rows] == ["entry[0].changes[0].messages[0]",
                                                         "entry[0].changes[0].messages[1]"]
    # Those are in the new shape: replaying them again updates them.
    replay_and_run(db_url, [r.id for r in new_rows])
    store(db_url, dead_letters())
    assert len(rows(db_url)) == 3 and all(r.status == "dead" for r in rows(db_url)[1:])


def test_a_body_that_is_not_a_webhook_is_one_record_however_often_it_is_replayed(empty_queues, db_url):
    ingest(json.dumps({"object": MARKER, "entry": []}))
    store(db_url, dead_letters())
    [row] = rows(db_url)
    replay_and_run(db_url, [row.id])
    store(db_url, dead_letters())
    [again] = rows(db_url)
    assert (again.id, again.status, again.replay_count) == (row.id, "dead", 1)


def test_an_update_too_deep_to_copy_is_recorded_without_arguments_and_says_where_it_is(monkeypatch):
    from waflow import ingestor

    rejected = ingestor.Rejected("nested more than 64 levels deep", {}, ingestor.Position(0, 0, "messages", 3), {})
    monkeypatch.setattr(ingestor.json, "dumps", lambda *a, **k: (_ for _ in ()).throw(RecursionError()))
    record = ingestor.rejected_record(rejected, "ab" * 32, RECEIVED_AT, "t-1")
    assert (record["args"], record["kwargs"]) == (None, {})
    assert record["detail"].endswith("as " + "ab" * 32 + " (too deeply nested to copy here)")
