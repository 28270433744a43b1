"""The dead-letter queue: what fails for good is kept with its reason, recorded, and can be replayed.

These run in-process on the embedded broker and the scratch SQLite database; the
paths through a real RabbitMQ (a worker that keeps dying, a retry that cannot be
published, the broker's own dead-lettering) are in ``test_dead_letter_paths.py``.
"""
from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from support import compact, orm, text_webhook
from waflow import queues
from waflow.dlq import records, recorder
from waflow.dlq.records import DEAD_LETTER_QUEUE
from waflow.models import DeadLetter, DeadLetterReplay, Message
from waflow.tasks import celery_app


@pytest.fixture
def dead_letters():
    """Read the messages published to wa.dead_letter (on the in-process embedded broker)."""
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
        simple.clear()
        simple.close()


@pytest.fixture
def db(default_db):
    from support import wipe

    wipe(default_db)
    return default_db


def test_a_task_that_fails_for_good_is_dead_lettered_with_its_arguments_and_error(dead_letters):
    from waflow.core import handle_normalized

    # Not a valid normalized event; it carries a client's words.
    bad_event = {"event_id": "message:wamid.BAD", "kind": "message", "received_at": "my divorce papers"}
    result = handle_normalized.apply(args=(bad_event,), task_id="task-bad-1")
    assert result.failed()
    [record] = dead_letters()
    assert record["kind"] == "waflow.dead_letter"
    assert (record["key"], record["task_id"]) == ("task-bad-1", "task-bad-1")
    assert record["queue"] == queues.INCOMING_NORMALIZED
    assert record["task"] == "waflow.core.handle_normalized"
    assert record["error_type"] == "InvalidEvent"
    assert (record["args"], record["kwargs"]) == ([bad_event], {})
    assert record["retries"] == 0
    assert record["first_failed_at"] <= record["last_failed_at"]
    # The reason names the fields; the client's words stay out of it, the traceback and the logs.
    assert "received_at: Input should be a valid number" in record["error_message"]
    assert "InvalidEvent" in record["traceback"]
    assert "divorce" not in record["error_message"] + record["traceback"] + str(result.result)


def test_a_body_that_is_not_a_webhook_is_dead_lettered_at_once_with_its_reason(dead_letters):
    from waflow.ingestor import ingest_raw

    assert ingest_raw.apply(args=('{"object":"instagram","entry":[]}', 1764000000.0), task_id="t-ig").get() == 0
    [record] = dead_letters()
    assert (record["error_type"], record["key"]) == (
        "NotAWebhook", "body:" + hashlib.sha256(b'{"object":"instagram","entry":[]}').hexdigest())
    assert record["error_message"] == "object is not 'whatsapp_business_account' (a string of 9 characters)"
    assert record["args"] == ['{"object":"instagram","entry":[]}', 1764000000.0]
    assert record["received_at"].startswith("2025-11-24T16:00:00")


def test_a_database_error_is_retried_three_times_then_dead_lettered(dead_letters, monkeypatch):
    from sqlalchemy.exc import OperationalError

    from waflow import core
    from waflow.ingestor import split_webhook

    attempts = []

    def unreachable(*_args, **_kwargs):
        attempts.append(1)
        raise OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused"))

    monkeypatch.setattr(core, "transaction", unreachable)
    [parsed] = split_webhook(compact(text_webhook([], statuses=[("wamid.DB", "sent")])), 1764000000.0).events
    event = parsed.model_dump(mode="json", exclude_none=True)
    result = core.handle_normalized.apply(args=(event,))
    assert result.failed()
    assert len(attempts) == 4  # the first run and three retries
    [record] = dead_letters()
    assert (record["error_type"], record["retries"]) == ("OperationalError", 3)


def test_retry_waits_grow_from_the_policy_with_a_bounded_jitter(monkeypatch):
    """3, 6, 12 s, each stretched by at most a quarter, never shortened, as they reach Celery."""
    from celery.app.task import Task
    from sqlalchemy.exc import OperationalError

    from waflow import core, tasks

    seen = []
    original = Task.retry

    def spy(self, *args, **kwargs):
        seen.append((kwargs["countdown"], kwargs["headers"].get(tasks.FIRST_FAILED_HEADER)))
        return original(self, *args, **kwargs)

    def timed_out(*_a, **_k):
        raise OperationalError("SELECT 1", {}, TimeoutError("timeout"))

    monkeypatch.setattr(Task, "retry", spy)
    monkeypatch.setattr(core, "transaction", timed_out)
    from waflow.ingestor import split_webhook

    [parsed] = split_webhook(compact(text_webhook([], statuses=[("wamid.J", "sent")])), 1764000000.0).events
    for _ in range(20):
        core.handle_normalized.apply(args=(parsed.model_dump(mode="json", exclude_none=True),))
    # Celery is asked a fourth time per run, and answers that the budget is spent.
    assert len(seen) == 80
    runs = [seen[i:i + 4] for i in range(0, 80, 4)]
    for run in runs:
        for n, (countdown, _) in enumerate(run[:3]):
            base = 3 * 2 ** n
            assert base <= countdown <= base * 1.25
        # Every retry of one run carries the time of its first failure.
        assert len({first for _, first in run}) == 1 and run[0][1] is not None
    assert len({round(c, 3) for run in runs for c, _ in run[:3]}) > 10  # jittered, not fixed


def test_the_three_waits_together_ride_out_a_ten_second_database_outage():
    from waflow import tasks

    waits = tasks.retry_countdowns()
    assert len(waits) == tasks.MAX_RETRIES == 3
    assert sum(shortest for shortest, _ in waits) > 10
    # Every countdown stays far below RabbitMQ's consumer_timeout (30 minutes).
    assert max(longest for _, longest in waits) <= tasks.MAX_COUNTDOWN <= 30 * 60 / 10


@pytest.mark.parametrize("error", [ValueError("bad"), KeyError("x")])
def test_a_permanent_error_is_never_retried(dead_letters, monkeypatch, error):
    from waflow import core
    from waflow.ingestor import split_webhook

    calls = []

    def broken(*_a, **_k):
        calls.append(1)
        raise error

    monkeypatch.setattr(core, "transaction", broken)
    [parsed] = split_webhook(compact(text_webhook([], statuses=[("wamid.PERM", "sent")])), 1764000000.0).events
    result = core.handle_normalized.apply(args=(parsed.model_dump(mode="json", exclude_none=True),))
    assert result.failed()
    assert calls == [1]
    [record] = dead_letters()
    assert (record["error_type"], record["retries"]) == (type(error).__name__, 0)


def test_a_broker_error_hands_the_message_back_instead_of_failing_it(dead_letters, monkeypatch, default_db):
    from celery.exceptions import Reject
    from kombu.exceptions import OperationalError

    from waflow import ingestor, tasks

    def broker_down(*_args, **_kwargs):
        raise OperationalError("[Errno 111] Connection refused")

    monkeypatch.setattr(tasks, "REQUEUE_PAUSE", 0)
    monkeypatch.setattr(ingestor, "dispatch", broker_down)
    with pytest.raises(Reject) as caught:
        ingestor.ingest_raw.run(compact(text_webhook(["wamid.BRK"])).decode(), 1764000000.0)
    assert caught.value.requeue is True
    assert dead_letters() == []


# --- the recorder ----------------------------------------------------------------------------------------------


def _broker_copy(task_id: str, args: list, reason: str = "rejected") -> tuple[bytes, dict]:
    """What RabbitMQ puts in wa.dead_letter when it dead-letters a Celery task message."""
    headers = {"task": "waflow.core.handle_normalized", "id": task_id, "retries": 3,
               "x-death": [{"reason": reason, "queue": "wa.incoming.normalized", "count": 1, "exchange": "wa"}]}
    return json.dumps([args, {}, {"callbacks": None}]).encode(), headers


def test_the_recorder_merges_a_record_and_the_brokers_copy_of_the_same_failure(db_url):
    from waflow.db import transaction

    record = records.failure_record(task="waflow.core.handle_normalized", task_id="t-1", queue="wa.incoming.normalized",
                                exc=RuntimeError("boom"), args=[{"event_id": "e"}], kwargs={}, retries=3,
                                first_failed_at=1764000000.0, traceback_text="Traceback: boom")
    for body, headers in ((json.dumps(record).encode(), {}), _broker_copy("t-1", [{"event_id": "e"}])):
        with transaction(db_url) as conn:
            recorder.store(conn, recorder.record_from_message(body, headers))
    with orm(db_url) as session:
        [row] = session.scalars(sa.select(DeadLetter)).all()
    assert (row.key, row.source, row.broker_reason) == ("t-1", "handler", "rejected")
    assert (row.error_type, row.error_message, row.traceback) == ("RuntimeError", "RuntimeError", "Traceback: boom")
    assert row.detail == "RuntimeError: boom"  # a foreign error's own text: for operators, never in a message
    assert row.args == [{"event_id": "e"}] and row.retries == 3
    first = row.first_failed_at  # SQLite hands back naive UTC
    assert (first if first.tzinfo else first.replace(tzinfo=timezone.utc)) == datetime.fromtimestamp(
        1764000000.0, timezone.utc)


def test_the_brokers_copy_alone_names_the_task_its_arguments_and_the_reason(db_url):
    from waflow.db import transaction

    with transaction(db_url) as conn:
        recorder.store(conn, recorder.record_from_message(*_broker_copy("t-2", [{"event_id": "f"}], "delivery_limit")))
    with orm(db_url) as session:
        row = session.scalars(sa.select(DeadLetter)).one()
    assert (row.source, row.task, row.queue, row.broker_reason) == (
        "broker", "waflow.core.handle_normalized", "wa.incoming.normalized", "delivery_limit")
    assert row.args == [{"event_id": "f"}]


def test_a_message_waflow_did_not_write_is_kept_as_it_came(db_url):
    from waflow.db import transaction

    with transaction(db_url) as conn:
        recorder.store(conn, recorder.record_from_message(b"\xffnot json at all", {}))
    with orm(db_url) as session:
        row = session.scalars(sa.select(DeadLetter)).one()
    assert row.source == "unknown" and "not json at all" in row.raw


def test_the_recorder_stores_what_arrives_and_acknowledges_only_committed_rows(db, dead_letters):
    from waflow.core import handle_normalized

    handle_normalized.apply(args=({"event_id": "status:z:sent"},), task_id="t-rec")
    with recorder.recorder_connection() as conn:
        # A database that cannot be reached: the record stays in the queue.
        down = recorder.Recorder(conn, timedelta(days=30), database_url="postgresql+psycopg2://nobody@127.0.0.1:1/none")
        down.MAX_BACKOFF = 0.05
        calls = []
        real_sleep = recorder.time.sleep

        def stop_after_three(seconds):
            calls.append(seconds)
            if len(calls) == 3:
                down.should_stop = True
            real_sleep(0.01)

        recorder.time.sleep = stop_after_three
        try:
            down.run()
        finally:
            recorder.time.sleep = real_sleep
        assert down.recorded == 0 and len(calls) == 3
    with recorder.recorder_connection() as conn:
        up = recorder.Recorder(conn, timedelta(days=30))
        up.on_iteration = lambda: setattr(up, "should_stop", up.recorded >= 1) or None
        up.run()
    with orm(db) as session:
        row = session.scalars(sa.select(DeadLetter)).one()
    assert (row.key, row.error_type) == ("t-rec", "InvalidEvent")
    assert dead_letters() == []  # acknowledged once stored


def test_dead_letters_past_the_retention_period_are_deleted(db_url):
    from waflow.db import transaction

    with transaction(db_url) as conn:
        for key, age in (("old", 40), ("new", 2)):
            recorder.store(conn, recorder.record_from_message(*_broker_copy(key, [{}])))
            conn.execute(sa.update(DeadLetter).where(DeadLetter.key == key)
                         .values(recorded_at=datetime.now(timezone.utc) - timedelta(days=age)))
        assert recorder.expire(conn, timedelta(days=30)) == 1
    with orm(db_url) as session:
        assert session.scalars(sa.select(DeadLetter.key)).all() == ["new"]


def test_redeliveries_are_counted_per_task(db_url):
    from waflow.db import transaction

    with transaction(db_url) as conn:
        counts = [records.count_redelivery(conn, "t-loop") for _ in range(3)] + [records.count_redelivery(conn, "t-other")]
    assert counts == [1, 2, 3, 1]


# --- the command line ------------------------------------------------------------------------------------------


@pytest.fixture
def cli(app):
    runner = app.test_cli_runner()

    def invoke(*args, **kw):
        return runner.invoke(args=list(args), catch_exceptions=False, **kw)

    invoke.app = app
    return invoke


def _dead_letter_for_a_message_that_failed(db, wamid: str) -> int:
    """A message whose core step failed for good (the database refused it), recorded by the recorder."""
    from waflow.db import transaction
    from waflow.ingestor import split_webhook

    [event] = split_webhook(compact(text_webhook([wamid])), 1764000000.0).events
    record = records.failure_record(task="waflow.core.handle_normalized", task_id=f"t-{wamid}",
                                queue=queues.INCOMING_NORMALIZED, exc=ConnectionRefusedError("db down"),
                                args=[event.model_dump(mode="json", exclude_none=True)], kwargs={}, retries=3,
                                first_failed_at=None, traceback_text=None)
    with transaction(db) as conn:
        recorder.store(conn, recorder.record_from_message(json.dumps(record).encode(), {}))
        return conn.execute(sa.select(DeadLetter.id).where(DeadLetter.key == f"t-{wamid}")).scalar_one()


def test_list_filters_by_queue_error_type_and_age(db, cli):
    from waflow.db import transaction

    first = _dead_letter_for_a_message_that_failed(db, "wamid.L1")
    with transaction(db) as conn:
        recorder.store(conn, recorder.record_from_message(*_broker_copy("t-raw", [{}])))
        conn.execute(sa.update(DeadLetter).where(DeadLetter.id == first)
                     .values(recorded_at=datetime.now(timezone.utc) - timedelta(hours=3)))
    out = cli("dlq", "list").output
    assert "ConnectionRefusedError" in out and "the broker dead-lettered" in out
    assert "ConnectionRefusedError" not in cli("dlq", "list", "--newer-than", "1h").output
    assert "the broker" not in cli("dlq", "list", "--older-than", "2h").output
    assert "no dead letters match" in cli("dlq", "list", "--queue", "wa.media.processing").output
    assert "the broker" not in cli("dlq", "list", "--error-type", "ConnectionRefusedError").output
    bad_age = cli.app.test_cli_runner().invoke(args=["dlq", "list", "--older-than", "3w"])
    assert bad_age.exit_code == 2 and "not an age like 90s, 30m, 2h or 7d" in bad_age.output


def test_show_prints_one_dead_letter_in_full(db, cli):
    dead = _dead_letter_for_a_message_that_failed(db, "wamid.S1")
    out = cli("dlq", "show", str(dead)).output
    assert "wamid.S1" in out and "db down" in out and "waflow.core.handle_normalized" in out
    missing = cli.app.test_cli_runner().invoke(args=["dlq", "show", "999999"])
    assert missing.exit_code == 1 and "no dead letter 999999" in missing.output


def test_replay_after_the_cause_is_fixed_reaches_the_same_end_state_once(db, cli):
    from waflow.core import handle_normalized

    dead = _dead_letter_for_a_message_that_failed(db, "wamid.R1")
    out = cli("dlq", "replay", str(dead), "--by", "ops-anna", "--yes").output
    assert f"{dead}: replayed to wa.incoming.normalized as" in out
    # The replayed task is an ordinary task message on its original queue, with a fresh budget.
    with celery_app.connection_for_write() as conn:
        simple = conn.SimpleQueue(queues.queue(queues.INCOMING_NORMALIZED))
        message = simple.get(timeout=5)
        message.ack()
        simple.close()
    assert message.headers["task"] == "waflow.core.handle_normalized"
    assert message.headers["retries"] == 0 and message.headers["waflow_replay_of"] == dead
    args, kwargs, _ = message.payload
    for _ in range(2):  # replayed twice (or redelivered): still one row
        handle_normalized.apply(args=args, kwargs=kwargs)
    with orm(db) as session:
        assert session.scalar(sa.select(sa.func.count()).where(Message.wamid == "wamid.R1")) == 1
        row = session.get(DeadLetter, dead)
        [replay] = session.scalars(sa.select(DeadLetterReplay)).all()
    assert (row.status, row.replay_count) == ("replayed", 1)
    assert (replay.replayed_by, replay.queue, replay.task_id) == ("ops-anna", "wa.incoming.normalized",
                                                                  message.headers["id"])


def test_replay_all_asks_first_and_takes_only_what_matches(db, cli):
    from waflow.db import transaction

    _dead_letter_for_a_message_that_failed(db, "wamid.A1")
    _dead_letter_for_a_message_that_failed(db, "wamid.A2")
    with transaction(db) as conn:
        recorder.store(conn, recorder.record_from_message(b"garbage", {}))
    aborted = cli("dlq", "replay", "--all", "--error-type", "ConnectionRefusedError", input="n\n")
    assert aborted.exit_code == 1 and "Replay 2 dead letter(s)?" in aborted.output
    done = cli("dlq", "replay", "--all", "--error-type", "ConnectionRefusedError", "--yes")
    assert done.output.count("replayed to wa.incoming.normalized") == 2
    with celery_app.connection_for_write() as conn:
        conn.SimpleQueue(queues.queue(queues.INCOMING_NORMALIZED)).clear()
    # An unknown message cannot be replayed: it says so and exits non-zero.
    unknown = cli("dlq", "replay", "--all", "--yes")
    assert "names no waflow task to replay" in unknown.output and unknown.exit_code == 1


def test_replay_of_named_ids_asks_first_unless_yes(db, cli):
    dead = _dead_letter_for_a_message_that_failed(db, "wamid.Y1")
    aborted = cli("dlq", "replay", str(dead), input="n\n")
    assert aborted.exit_code == 1 and "Replay 1 dead letter(s)?" in aborted.output
    with orm(db) as session:
        assert session.get(DeadLetter, dead).status == "dead"
    done = cli("dlq", "replay", str(dead), input="y\n")
    assert done.exit_code == 0 and f"{dead}: replayed to wa.incoming.normalized" in done.output
    with celery_app.connection_for_write() as conn:
        conn.SimpleQueue(queues.queue(queues.INCOMING_NORMALIZED)).clear()


def test_purge_and_replay_of_an_unknown_id_exit_non_zero_and_touch_nothing(db, cli):
    dead = _dead_letter_for_a_message_that_failed(db, "wamid.U1")
    for command in ("purge", "replay"):
        unknown = cli("dlq", command, str(dead), "999999", "--yes")
        assert unknown.exit_code == 1 and "no dead letter 999999" in unknown.output, command
    with orm(db) as session:
        assert session.get(DeadLetter, dead).status == "dead"


def test_purge_asks_for_confirmation_then_deletes(db, cli):
    dead = _dead_letter_for_a_message_that_failed(db, "wamid.P1")
    assert cli("dlq", "purge", str(dead), input="n\n").exit_code == 1
    assert "purged 1 dead letter(s)" in cli("dlq", "purge", str(dead), input="y\n").output
    with orm(db) as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(DeadLetter)) == 0


def test_a_dead_letter_keeps_the_time_the_task_failed_not_the_time_it_was_recorded(db_url):
    from waflow.db import transaction

    body, headers = _broker_copy("t-late", [{}])
    failed_at = datetime(2026, 12, 1, 10, 0, tzinfo=timezone.utc)
    headers["x-death"][0]["time"] = failed_at
    record = records.failure_record(task="waflow.core.handle_normalized", task_id="t-late", queue="wa.incoming.normalized",
                                exc=RuntimeError("x"), args=[{}], kwargs={}, retries=3, first_failed_at=None,
                                traceback_text=None)
    record["last_failed_at"] = failed_at.isoformat()
    # The recorder stores them long after (the database was away): both orders give the failure's time.
    for order in ((json.dumps(record).encode(), {}), (body, headers)), ((body, headers), (json.dumps(record).encode(), {})):
        with transaction(db_url) as conn:
            conn.execute(sa.delete(DeadLetter))
            for b, h in order:
                recorder.store(conn, recorder.record_from_message(b, h))
        with orm(db_url) as session:
            last = session.scalars(sa.select(DeadLetter.last_failed_at)).one()
        assert (last if last.tzinfo else last.replace(tzinfo=timezone.utc)) == failed_at


def test_a_dead_letter_the_database_refuses_as_it_came_is_kept_escaped_not_looped(db_url):
    """PostgreSQL's JSONB refuses a NUL (a signed body that is not a webhook can hold one): the
    recorder stores the message escaped instead of crashing on it again and again."""
    record = records.input_record(task="waflow.ingestor.ingest_raw", task_id="t-nul", queue="wa.incoming.raw",
                              reason="body is not JSON", error_type="NotAWebhook", args=["a\x00b", 1.0],
                              received_at=1.0)
    acked = []
    message = type("Message", (), {"body": json.dumps(record).encode(), "headers": {},
                                   "ack": lambda self: acked.append(1)})()
    with recorder.recorder_connection() as conn:
        recorder.Recorder(conn, timedelta(days=30), database_url=db_url).on_message(message)
    assert acked == [1]
    with orm(db_url) as session:
        row = session.scalars(sa.select(DeadLetter)).one()
    assert row.key == "t-nul:" and row.error_type == "NotAWebhook"
    if db_url.startswith("postgresql"):
        assert row.source == "unstorable" and "\\u0000" in row.raw and row.args is None
