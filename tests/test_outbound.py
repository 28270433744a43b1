"""The outbound stage against the Meta simulator (a real HTTP server in a subprocess).

The stage's plain functions run in-process on SQLite and PostgreSQL; its Graph
client talks to the simulator, which answers with Meta's shapes and codes and
takes injected faults, so every class of answer is produced for real. What the
stage would queue is recorded instead of published (the paced consumer and
real workers are tested in test_consumer.py and test_sender.py).
"""
from __future__ import annotations

import contextlib
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest
import sqlalchemy as sa

from support import free_port, orm
from waflow import compose, limiter, whatsapp
from waflow.config import settings
from waflow.contacts import upsert_contact, upsert_conversation
from waflow.db import autocommit, get_engine, transaction
from waflow.outbound import claim as claiming, commands, operator, settle as settling, task, warmup
from waflow.events import ContactInfo
from waflow.models import Message, MessageStatus, OutboundMessage
from waflow.tasks import TransientError

NUMBER = settings.phone_number_id


@pytest.fixture
def stage(meta, db_url, monkeypatch, tmp_path):
    """The outbound stage wired to the test database, the simulator and a fresh limiter store."""
    meta.control("POST", "reset")
    store = limiter.FileStore(tmp_path / "limiter", settings.send_rate)
    queued: list[tuple[tuple, dict]] = []
    wiring = task.Wiring(database_url=db_url, store=store, client=whatsapp.Client(meta.api_url, settings.access_token),
                         dispatch=lambda name, args, **kw: queued.append((tuple(args), kw)))

    def send(outbound_id: int, retries: int = 0) -> str:
        return task.deliver(outbound_id, None, retries, 3, wiring)

    return SimpleNamespace(db=db_url, store=store, queued=queued, meta=meta, wiring=wiring, send=send)


def wrote_recently(db: str, wa_id: str, hours_ago: float = 1) -> None:
    """The client sent us a message ``hours_ago``: their 24-hour window is open (or not)."""
    with transaction(db) as conn:
        contact = upsert_contact(conn, ContactInfo(wa_id=wa_id))
        upsert_conversation(conn, contact, NUMBER, None, datetime.now(timezone.utc) - timedelta(hours=hours_ago))


def command(db: str, recipient: str, message: dict, key: str | None = None, lane: str = "reply") -> int:
    with transaction(db) as conn:
        queued, _ = commands.command(conn, key=key or f"test:{recipient}:{message}", recipient=recipient,
                                     message=message, lane=lane)
    return queued.id


def row(db: str, outbound_id: int) -> OutboundMessage:
    with orm(db) as session:
        return session.get(OutboundMessage, outbound_id)


def fault(stage, **spec) -> None:
    stage.meta.control("POST", "faults", spec)


# --- the happy path and idempotency ------------------------------------------------------------------------------


def test_a_reply_is_sent_once_with_our_id_and_recorded_with_its_wamid(stage):
    wrote_recently(stage.db, "15550001001")
    oid = command(stage.db, "15550001001", {"kind": "text", "body": "We received your documents."})
    assert stage.send(oid) == "accepted"
    [sent] = stage.meta.sends(to="15550001001")
    assert sent["body"]["text"]["body"] == "We received your documents."
    assert sent["biz_opaque_callback_data"] == f"waflow:{oid}"
    accepted = row(stage.db, oid)
    assert (accepted.status, accepted.wamid, accepted.attempts) == ("accepted", sent["wamid"], 1)
    with orm(stage.db) as session:
        message = session.scalars(sa.select(Message).where(Message.wamid == sent["wamid"])).one()
    assert (message.direction, message.body, message.type) == ("outbound", "We received your documents.", "text")


def test_a_command_given_twice_under_one_key_is_stored_and_sent_once(stage):
    wrote_recently(stage.db, "15550001002")
    first = command(stage.db, "15550001002", {"kind": "text", "body": "Hello"}, key="draft:17")
    again = command(stage.db, "15550001002", {"kind": "text", "body": "Hello"}, key="draft:17")
    assert first == again
    stage.send(first)
    stage.send(again)
    assert len(stage.meta.sends(to="15550001002")) == 1


@pytest.mark.parametrize("changed", [{"recipient": "15550001099"}, {"body": "Hello (edited)"}],
                         ids=["another recipient", "another text"])
def test_a_key_given_again_for_a_different_message_is_refused_and_stores_nothing(stage, changed):
    first = command(stage.db, "15550001012", {"kind": "text", "body": "Hello"}, key="draft:18")
    with pytest.raises(commands.KeyReused, match=f"the key 'draft:18' was given to outbound {first}, a different"):
        command(stage.db, changed.get("recipient", "15550001012"),
                {"kind": "text", "body": changed.get("body", "Hello")}, key="draft:18")
    with orm(stage.db) as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(OutboundMessage)) == 1
        assert session.get(OutboundMessage, first).payload["text"]["body"] == "Hello"


@pytest.mark.parametrize("given, sent", [
    ("+62 812-3456-7890", "+6281234567890"),
    ("6281234567890", "6281234567890"),
    ("0812 3456 7890", "+6281234567890"),
    ("(0812) 3456.7890", "+6281234567890"),
    ("US.13491208655302741918", "US.13491208655302741918"),
    ("US.ENT.11815799212886844830", "US.ENT.11815799212886844830"),
])
def test_a_recipient_is_kept_in_international_form_and_a_leading_zero_gets_the_country_code(given, sent):
    assert compose.normalize_recipient(given, 62) == sent


@pytest.mark.parametrize("given, reason", [
    ("nomor_hp", "not a phone number or a business-scoped user id"),  # a header row
    ("Budi Santoso", "not a phone number or a business-scoped user id"),
    ("+62 812 ABC", "not a phone number or a business-scoped user id"),
    ("", "not a phone number"),
    ("12345", "has 5 digits"),
    ("+1234567890123456", "has 16 digits"),
    ("0062 812 3456 7890", "starts with 00"),
    ("+0812 3456 7890", "a 0 after its \\+"),
    ("٠٨١٢٣٤٥٦٧٨٩", "not a phone number"),  # digits, but not ASCII ones
])
def test_a_recipient_that_is_no_number_is_refused_without_being_quoted(given, reason):
    with pytest.raises(compose.InvalidCommand, match=reason) as refused:
        compose.normalize_recipient(given, 62)
    assert given.strip() == "" or given not in str(refused.value)


def test_a_command_to_a_number_written_with_a_leading_zero_is_stored_and_sent_in_international_form(stage):
    oid = command(stage.db, "0812 3456 7001", {"kind": "template", "name": "hello_world", "parameters": []})
    stored = row(stage.db, oid)
    assert (stored.recipient, stored.payload["to"]) == ("+6281234567001", "+6281234567001")
    with pytest.raises(compose.InvalidCommand, match="not a phone number"):
        command(stage.db, "Budi", {"kind": "text", "body": "Hello"})


def test_a_redelivered_send_that_meta_accepted_is_not_sent_again(stage):
    wrote_recently(stage.db, "15550001003")
    oid = command(stage.db, "15550001003", {"kind": "text", "body": "Once"})
    assert stage.send(oid) == "accepted"
    assert stage.send(oid) == "already accepted"  # the broker handed the task out again
    assert len(stage.meta.sends(to="15550001003")) == 1


def test_a_send_found_mid_call_after_a_crash_is_left_in_doubt_and_never_resent(stage):
    wrote_recently(stage.db, "15550001004")
    oid = command(stage.db, "15550001004", {"kind": "text", "body": "Did this go?"})
    with transaction(stage.db) as conn:  # the last attempt marked it sending, then its worker died
        conn.execute(sa.update(OutboundMessage).where(OutboundMessage.id == oid).values(status="sending"))
    assert stage.send(oid) == "in doubt"
    assert stage.send(oid) == "already in_doubt"
    assert stage.meta.sends(to="15550001004") == []
    assert row(stage.db, oid).status == "in_doubt"


def test_a_second_copy_of_a_task_leaves_a_send_in_progress_alone(stage):
    wrote_recently(stage.db, "15550001009")
    oid = command(stage.db, "15550001009", {"kind": "text", "body": "in flight"})
    with transaction(stage.db) as conn:
        assert isinstance(claiming.claim(conn, oid, stage.store, "task-A"), claiming.Claimed)
    with transaction(stage.db) as conn:  # a duplicate message of the same command, under another task id
        skipped = claiming.claim(conn, oid, stage.store, "task-B")
    assert skipped.reason == "being sent by task task-A" and row(stage.db, oid).status == "sending"
    with transaction(stage.db) as conn:  # long after the call's time limit: task-A died mid-call
        conn.execute(sa.update(OutboundMessage).where(OutboundMessage.id == oid).values(
            claimed_at=datetime.now(timezone.utc) - claiming.CALL_LEASE - timedelta(seconds=1)))
    with transaction(stage.db) as conn:
        assert claiming.claim(conn, oid, stage.store, "task-B").reason == "in doubt"


def _status_event(wamid: str, status: str, callback: str | None, recipient: str):
    from support import compact, text_webhook
    from waflow.ingestor import split_webhook

    doc = text_webhook([], statuses=[(wamid, status)], wa_id=recipient, phone_number_id=NUMBER)
    if callback:
        doc["entry"][0]["changes"][0]["value"]["statuses"][0]["biz_opaque_callback_data"] = callback
    [event] = split_webhook(compact(doc), 1764000000.0).events
    return event


def test_a_status_webhook_settles_a_send_in_doubt_as_accepted_and_sends_the_next_on(stage):
    from waflow.core import persist_event

    wrote_recently(stage.db, "15550001005")
    first = command(stage.db, "15550001005", {"kind": "text", "body": "first"})
    second = command(stage.db, "15550001005", {"kind": "text", "body": "second"})
    with transaction(stage.db) as conn:
        conn.execute(sa.update(OutboundMessage).where(OutboundMessage.id == first).values(status="in_doubt"))
    assert stage.send(second) == "accepted"  # a message in doubt belongs to a person now: it holds nothing back
    following: list = []
    with transaction(stage.db) as conn:
        persist_event(conn, _status_event("wamid.SETTLED", "delivered", f"waflow:{first}", "15550001005"), following)
    settled = row(stage.db, first)
    assert (settled.status, settled.wamid) == ("accepted", "wamid.SETTLED")
    with orm(stage.db) as session:
        assert session.scalars(sa.select(Message.status).where(Message.wamid == "wamid.SETTLED")).one() == "delivered"


def test_statuses_that_arrived_before_the_send_was_recorded_are_folded_into_it(stage):
    from waflow.core import persist_event

    wrote_recently(stage.db, "15550001006")
    oid = command(stage.db, "15550001006", {"kind": "text", "body": "fast"})
    with transaction(stage.db) as conn:
        claimed = claiming.claim(conn, oid, stage.store)
    answer = stage.wiring.client.send(claimed.phone_number_id, claimed.body)
    # Meta's "read" overtakes our own record of the acceptance.
    with transaction(stage.db) as conn:
        persist_event(conn, _status_event(answer.wamid, "read", None, "15550001006"))
    with transaction(stage.db) as conn:
        settling.settle(conn, claimed, answer, last_attempt=False)
    with orm(stage.db) as session:
        assert session.scalars(sa.select(Message.status).where(Message.wamid == answer.wamid)).one() == "read"


# --- the 24-hour window ------------------------------------------------------------------------------------------


def test_outside_the_24_hour_window_a_non_template_is_refused_before_calling_meta(stage):
    wrote_recently(stage.db, "15550001007", hours_ago=25)
    oid = command(stage.db, "15550001007", {"kind": "text", "body": "Are you there?"})
    assert stage.send(oid) == "outside the 24-hour window"
    refused = row(stage.db, oid)
    assert (refused.status, refused.error_code) == ("failed", 131047)
    assert "24 hours" in refused.error_details
    assert stage.meta.sends(to="15550001007") == []


def test_outside_the_24_hour_window_a_template_goes(stage):
    oid = command(stage.db, "15550001008", {"kind": "template", "name": "case_update", "parameters": ["2026-114"]})
    assert stage.send(oid) == "accepted"  # a stranger: no window at all
    [sent] = stage.meta.sends(to="15550001008")
    assert sent["body"]["template"]["components"][0]["parameters"] == [{"type": "text", "text": "2026-114"}]


# --- Meta's answers, class by class ------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [131026, 100, 131008, 131009, 190, 132000, 132001, 131050, 131051, 131047, 368])
def test_a_permanent_error_fails_the_message_at_once_keeping_metas_code_and_text(stage, code):
    recipient = f"1555100{code % 10000:04d}"
    wrote_recently(stage.db, recipient)
    oid = command(stage.db, recipient, {"kind": "text", "body": "x"})
    fault(stage, code=code, details=f"detail for {code}")
    assert stage.send(oid) == "failed"  # no TransientError: the retry policy never sees it
    failed = row(stage.db, oid)
    assert (failed.status, failed.error_code) == ("failed", code)
    assert failed.error_details == f"detail for {code}" and failed.error_title.startswith(f"(#{code})")
    assert stage.queued == []


@pytest.mark.parametrize("spec", [{"code": 131000}, {"code": 1}, {"code": 2}, {"code": 131016}, {"code": 133004},
                                  {"code": 4}, {"code": 80007}, {"status": 502}], ids=str)
def test_a_transient_error_is_handed_to_the_retry_policy_and_holds_the_message(stage, spec):
    wrote_recently(stage.db, "15550002000")
    oid = command(stage.db, "15550002000", {"kind": "text", "body": f"retry {spec}"})
    fault(stage, **spec)
    with pytest.raises(TransientError):
        stage.send(oid)
    held = row(stage.db, oid)
    assert held.status == "queued" and held.error_code == spec.get("code")
    # The retry goes through (the fault was used up).
    assert stage.send(oid, retries=1) == "accepted"


def test_a_transient_error_on_the_last_attempt_fails_the_message_for_the_dead_letter_queue(stage):
    wrote_recently(stage.db, "15550002001")
    oid = command(stage.db, "15550002001", {"kind": "text", "body": "last try"})
    fault(stage, code=131000)
    with pytest.raises(TransientError):
        stage.send(oid, retries=3)
    assert (row(stage.db, oid).status, row(stage.db, oid).error_code) == ("failed", 131000)


def test_a_refused_connection_is_transient(stage, monkeypatch):
    monkeypatch.setattr(stage.wiring, "client", whatsapp.Client(f"http://127.0.0.1:{free_port()}/v25.0", "t"))
    wrote_recently(stage.db, "15550002002")
    oid = command(stage.db, "15550002002", {"kind": "text", "body": "nobody there"})
    with pytest.raises(TransientError, match="network error"):
        stage.send(oid)
    assert row(stage.db, oid).status == "queued"


@pytest.mark.parametrize("spec", [{"delay": 2.0}, {"drop": True}], ids=["no-answer-in-time", "connection-dropped"])
def test_a_send_whose_answer_never_came_is_left_in_doubt_not_retried(stage, monkeypatch, spec):
    monkeypatch.setattr(whatsapp, "READ_TIMEOUT", 0.5)
    wrote_recently(stage.db, "15550002003")
    oid = command(stage.db, "15550002003", {"kind": "text", "body": "did it arrive?"})
    fault(stage, **spec)
    assert stage.send(oid) == "in_doubt"
    assert row(stage.db, oid).status == "in_doubt" and stage.queued == []


def test_throughput_130429_pauses_the_number_and_puts_the_message_back_without_spending_a_retry(stage):
    wrote_recently(stage.db, "15550002004")
    oid = command(stage.db, "15550002004", {"kind": "text", "body": "too fast"})
    fault(stage, code=130429)
    assert stage.send(oid, retries=2) == "queued"
    [(args, options)] = stage.queued
    assert args == (oid,) and options["retries"] == 2 and not options.get("countdown")
    assert stage.store.status(NUMBER)["paused_until"] is not None
    assert row(stage.db, oid).status == "queued"


def test_pair_limit_131056_waits_four_to_the_x_seconds_for_that_recipient(stage):
    import time

    wrote_recently(stage.db, "15550002005")
    oid = command(stage.db, "15550002005", {"kind": "text", "body": "again"})
    fault(stage, code=131056, count=2)
    stage.send(oid)
    # That recipient waits (other recipients do not): the message's next try is put off too.
    assert stage.store.pair_reserve(NUMBER, "15550002005") > 0.5
    assert stage.store.pair_reserve(NUMBER, "15550002099") == 0
    time.sleep(1.05)
    stage.send(oid)  # refused again once the wait is over: 4 s this time
    assert [kw["countdown"] for _, kw in stage.queued] == [pytest.approx(1.0), pytest.approx(4.0)]
    assert [kw["retries"] for _, kw in stage.queued] == [0, 0]
    assert row(stage.db, oid).pair_attempts == 2


def test_maintenance_131057_waits_at_least_a_minute(stage):
    wrote_recently(stage.db, "15550002006")
    oid = command(stage.db, "15550002006", {"kind": "text", "body": "upgrade"})
    fault(stage, code=131057)
    stage.send(oid)
    [(_, options)] = stage.queued
    assert options["countdown"] >= 60
    assert stage.store.status(NUMBER)["paused_until"] is not None


# --- order and pacing per recipient ------------------------------------------------------------------------------


def test_a_recipients_messages_leave_in_the_order_they_were_commanded(stage):
    wrote_recently(stage.db, "15550003001")
    first = command(stage.db, "15550003001", {"kind": "text", "body": "one"})
    second = command(stage.db, "15550003001", {"kind": "text", "body": "two"})
    assert stage.send(second).startswith("waiting for outbound")  # its task ran first: it parks
    assert row(stage.db, second).parked
    assert stage.send(first) == "accepted"
    [(args, options)] = stage.queued  # the first one's outcome sends the second on
    assert args == (second,) and options["headers"]["lane"] == "reply"
    assert stage.send(second) == "accepted"
    assert [s["body"]["text"]["body"] for s in stage.meta.sends(to="15550003001")] == ["one", "two"]


def test_a_message_being_retried_holds_back_the_later_ones_to_that_recipient_only(stage):
    wrote_recently(stage.db, "15550003002")
    wrote_recently(stage.db, "15550003003")
    first = command(stage.db, "15550003002", {"kind": "text", "body": "one"})
    second = command(stage.db, "15550003002", {"kind": "text", "body": "two"})
    other = command(stage.db, "15550003003", {"kind": "text", "body": "someone else"})
    fault(stage, code=131000, to="15550003002")
    with pytest.raises(TransientError):
        stage.send(first)
    assert stage.send(second).startswith("waiting for outbound")
    assert stage.send(other) == "accepted"
    assert stage.send(first, retries=1) == "accepted"
    assert stage.send(second) == "accepted"
    assert [s["body"]["text"]["body"] for s in stage.meta.sends(to="15550003002")] == ["one", "two"]


def test_pair_pacing_puts_off_a_recipients_burst_and_leaves_others_alone(stage):
    wrote_recently(stage.db, "15550003004")
    wrote_recently(stage.db, "15550003005")
    ids = [command(stage.db, "15550003004", {"kind": "text", "body": f"m{i}"}) for i in range(7)]
    outcomes = []
    for oid in ids:
        outcomes.append(stage.send(oid))
        for args, _ in list(stage.queued):  # deliver what each outcome sends on, as a worker would
            stage.queued.clear()
            outcomes.append(stage.send(args[0]))
    assert outcomes.count("deferred") >= 1  # the burst allowance (5) ran out
    assert stage.send(command(stage.db, "15550003005", {"kind": "text", "body": "not held"})) == "accepted"


# --- kinds -------------------------------------------------------------------------------------------------------


KINDS = [
    {"kind": "text", "body": "See the attached note.", "reply_to": "wamid.CLIENT-Q"},
    {"kind": "template", "name": "appointment_reminder", "parameters": ["Tuesday", "10:00"]},
    {"kind": "image", "link": "https://example.org/map.png", "caption": "Our office"},
    {"kind": "document", "id": "4490709327384033", "filename": "engagement-letter.pdf"},
    {"kind": "buttons", "body": "Can you come on Tuesday?", "buttons": [{"id": "yes", "title": "Yes"},
                                                                        {"id": "no", "title": "No"}]},
    {"kind": "list", "body": "Choose a topic", "button": "Topics", "sections": [
        {"title": "Family", "rows": [{"id": "divorce", "title": "Divorce"}, {"id": "custody", "title": "Custody"}]},
        {"title": "Work", "rows": [{"id": "dismissal", "title": "Dismissal", "description": "Notice, severance"}]}]},
]


@pytest.mark.parametrize("message", KINDS, ids=[k["kind"] for k in KINDS])
def test_each_message_kind_reaches_meta_in_its_documented_shape(stage, message):
    wrote_recently(stage.db, "15550004000")
    oid = command(stage.db, "15550004000", message)
    assert stage.send(oid) == "accepted", row(stage.db, oid).error_details
    [sent] = stage.meta.sends(to="15550004000")
    assert sent["body"] == {**compose.request_body(compose.parse(message), "15550004000"),
                            "biz_opaque_callback_data": f"waflow:{oid}"}


def test_a_read_receipt_marks_the_clients_message_read(stage):
    oid = command(stage.db, "15550004001", {"kind": "read", "message_id": "wamid.CLIENT-1", "typing": True})
    assert stage.send(oid) == "accepted"
    [read] = stage.meta.control("GET", "reads")["reads"]
    assert read["message_id"] == "wamid.CLIENT-1"


def test_a_business_scoped_user_id_is_sent_as_recipient(stage):
    oid = command(stage.db, "US.13491208655302741918", {"kind": "template", "name": "hello_world"})
    assert stage.send(oid) == "accepted"
    [sent] = stage.meta.sends(to="US.13491208655302741918")
    assert "to" not in sent["body"] and sent["body"]["recipient"] == "US.13491208655302741918"


def test_an_invalid_command_is_refused_before_anything_is_stored(stage):
    with pytest.raises(compose.InvalidCommand, match="buttons: List should have at most 3 items"):
        command(stage.db, "15550004002", {"kind": "buttons", "body": "b", "buttons": [
            {"id": str(i), "title": f"t{i}"} for i in range(4)]})
    with orm(stage.db) as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(OutboundMessage)) == 0


def test_a_dead_lettered_send_replayed_is_queued_again(stage):
    wrote_recently(stage.db, "15550004003")
    oid = command(stage.db, "15550004003", {"kind": "text", "body": "after the outage"})
    fault(stage, code=131000)
    with pytest.raises(TransientError):
        stage.send(oid, retries=3)
    with transaction(stage.db) as conn:
        operator.reopen(conn, [oid], {})
    assert stage.send(oid) == "accepted"


# --- races and half-finished attempts (a second review's findings) -----------------------------------------------


def test_metas_late_answer_never_overwrites_an_acceptance_a_status_webhook_recorded(stage):
    """Meta accepts, its answer is lost, the "sent" webhook settles the message; then the sender's
    read timeout must not turn it back into "in doubt" (a person would be asked to resend it)."""
    from waflow.core import persist_event

    wrote_recently(stage.db, "15550005001")
    oid = command(stage.db, "15550005001", {"kind": "text", "body": "once"})
    with transaction(stage.db) as conn:
        claimed = claiming.claim(conn, oid, stage.store, "task-1")
    with transaction(stage.db) as conn:
        persist_event(conn, _status_event("wamid.WEBHOOK-FIRST", "sent", f"waflow:{oid}", "15550005001"))
    lost = whatsapp.Answer(whatsapp.Outcome.UNKNOWN_OUTCOME, title="no answer within 15s")
    with transaction(stage.db) as conn:
        assert settling.settle(conn, claimed, lost, last_attempt=False).status == "settled meanwhile"
    assert (row(stage.db, oid).status, row(stage.db, oid).wamid) == ("accepted", "wamid.WEBHOOK-FIRST")


def test_a_status_webhook_for_a_send_being_retried_settles_it_and_the_retry_sends_nothing(stage):
    from waflow.core import persist_event

    wrote_recently(stage.db, "15550005002")
    oid = command(stage.db, "15550005002", {"kind": "text", "body": "took it after all"})
    fault(stage, status=502)  # a 5xx that hid an acceptance
    with pytest.raises(TransientError):
        stage.send(oid)
    with transaction(stage.db) as conn:
        persist_event(conn, _status_event("wamid.HIDDEN", "delivered", f"waflow:{oid}", "15550005002"))
    assert stage.send(oid, retries=1) == "already accepted"
    assert stage.meta.sends(to="15550005002") == []


def test_a_lost_wake_up_is_made_good_by_the_next_look_at_the_settled_message(stage):
    wrote_recently(stage.db, "15550005003")
    first = command(stage.db, "15550005003", {"kind": "text", "body": "one"})
    second = command(stage.db, "15550005003", {"kind": "text", "body": "two"})
    stage.send(second)  # parks behind the first
    assert stage.send(first) == "accepted"
    stage.queued.clear()  # the wake-up's publish was lost (the worker died after its commit)
    assert stage.send(first) == "already accepted"  # the redelivered task of the first...
    assert [args for args, _ in stage.queued] == [(second,)]  # ...wakes the second again
    assert stage.send(second) == "accepted"
    assert not row(stage.db, second).parked


def test_a_limiter_outage_before_the_call_hands_the_message_back_instead_of_leaving_it_in_doubt(stage, monkeypatch):
    wrote_recently(stage.db, "15550005004")
    oid = command(stage.db, "15550005004", {"kind": "text", "body": "wait for Redis"})

    def unreachable(request, **_):
        raise limiter.LimiterUnavailable("redis: connection refused")

    waiting = limiter.wait_for_slot
    monkeypatch.setattr(limiter, "wait_for_slot", unreachable)
    with pytest.raises(TransientError, match="no send slot"):
        stage.send(oid)
    assert row(stage.db, oid).status == "queued" and stage.meta.sends(to="15550005004") == []
    monkeypatch.setattr(limiter, "wait_for_slot", waiting)
    assert stage.send(oid, retries=1) == "accepted"


def test_a_replayed_send_goes_again_only_if_it_failed_and_keeps_its_lane(stage):
    from waflow.dlq.tooling import NotReplayable

    wrote_recently(stage.db, "15550005005")
    oid = command(stage.db, "15550005005", {"kind": "text", "body": "replay me"})
    assert stage.send(oid) == "accepted"
    with transaction(stage.db) as conn, pytest.raises(NotReplayable, match="is accepted"):
        operator.reopen(conn, [oid], {})
    with transaction(stage.db) as conn:  # dead-lettered mid-call
        conn.execute(sa.update(OutboundMessage).where(OutboundMessage.id == oid).values(status="sending"))
    with transaction(stage.db) as conn:
        assert "now in doubt" in operator.reopen(conn, [oid], {})["skip"]
    assert row(stage.db, oid).status == "in_doubt"
    with transaction(stage.db) as conn:
        conn.execute(sa.update(OutboundMessage).where(OutboundMessage.id == oid).values(status="failed"))
        publish_as = operator.reopen(conn, [oid], {})
    assert publish_as == {"queue": "wa.outgoing.command",
                          "headers": {"lane": "reply", "phone_number_id": NUMBER}}
    assert row(stage.db, oid).status == "queued"


def test_an_unreadable_answer_after_the_request_went_out_is_in_doubt(stage, monkeypatch):
    import urllib3

    wrote_recently(stage.db, "15550005006")
    oid = command(stage.db, "15550005006", {"kind": "text", "body": "truncated"})

    def truncated(*_a, **_k):
        raise urllib3.exceptions.IncompleteRead(12, 30)

    monkeypatch.setattr(stage.wiring.client.http, "request", truncated)
    assert stage.send(oid) == "in_doubt"


def test_a_200_without_a_message_id_is_in_doubt_not_retried():
    answer = whatsapp.read_answer(200, b'{"messaging_product": "whatsapp"}')
    assert answer.outcome is whatsapp.Outcome.UNKNOWN_OUTCOME


def test_a_message_put_back_after_its_broadcast_was_cancelled_is_not_sent(stage):
    from waflow.outbound import broadcast

    with transaction(stage.db) as conn:
        bid = broadcast.start(conn, name="b-cancel", template="hello_world", language="en_US",
                              phone_number_id=NUMBER, recipients=[broadcast.Recipient(1, "15550005007", ())])
    oid = row_id_for(stage.db, "15550005007")
    reply = command(stage.db, "15550005007", {"kind": "template", "name": "hello_world"}, key="reply-after")
    assert stage.send(reply).startswith("waiting for outbound")  # a reply parked behind the broadcast message
    with transaction(stage.db) as conn:
        claimed = claiming.claim(conn, oid, stage.store, "t")  # in flight when the cancel comes
    with transaction(stage.db) as conn:
        cancelled, waiting = broadcast.cancel(conn, "b-cancel", stage.store)
    assert cancelled == 0  # it was sending
    refused = whatsapp.Answer(whatsapp.Outcome.THROUGHPUT, code=130429)
    with transaction(stage.db) as conn:
        settling.settle(conn, claimed, refused, last_attempt=False)  # put back, queued again
    assert stage.send(oid) == "broadcast cancelled"
    assert row(stage.db, oid).status == "cancelled"
    assert stage.send(reply) == "accepted"  # the reply behind it goes
    assert bid


def row_id_for(db: str, recipient: str) -> int:
    with orm(db) as session:
        return session.scalars(sa.select(OutboundMessage.id).where(OutboundMessage.recipient == recipient)).first()


# --- the one-statement path (PostgreSQL) and the client's connections ----------------------------------------------


# The one-statement claim and acceptance are PostgreSQL's (SQLite takes the full path, tested above).
postgresql_only = pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)


def _statements(engine) -> list[str]:
    """Record every statement the engine sends (from now until the test ends)."""
    seen: list[str] = []
    sa.event.listen(engine, "before_cursor_execute", lambda *a, **_: seen.append(a[2]))
    return seen


def template(case: str) -> dict:
    return {"kind": "template", "name": "case_update", "parameters": [case]}


@postgresql_only
def test_a_template_send_is_claimed_and_recorded_in_one_statement_each(stage):
    oid = command(stage.db, "15550006001", template("2026-201"))
    quick, full = _statements(get_engine(stage.db, autocommit=True)), _statements(get_engine(stage.db))
    assert stage.send(oid) == "accepted"
    # Claim, acceptance (its contact, conversation and message in the same statement), next message.
    assert [s.split("(")[0] for s in quick] == ["EXECUTE waflow_claim", "SET LOCAL synchronous_commit TO OFF; EXECUTE waflow_accept",
                                                "EXECUTE waflow_next"]
    assert full == []
    stored = row(stage.db, oid)
    assert stored.status == "accepted" and stored.attempts == 1 and stored.wamid
    with orm(stage.db) as session:
        message = session.scalars(sa.select(Message).where(Message.wamid == stored.wamid)).one()
    assert message.direction == "outbound" and message.content["outbound_id"] == oid


@postgresql_only
def test_the_one_statement_acceptance_keeps_a_status_that_came_first(stage):
    oid = command(stage.db, "15550006002", template("2026-202"))
    with autocommit(stage.db) as conn:
        claimed = claiming.claim_at_once(conn, oid, stage.store, "task-1")
    wamid = "wamid.early-status"
    with transaction(stage.db) as conn:  # Meta's "delivered" webhook was stored before the answer
        conn.execute(sa.insert(MessageStatus).values(wamid=wamid, status="delivered", content={},
                                                     timestamp=datetime.now(timezone.utc)))
    answer = whatsapp.Answer(whatsapp.Outcome.ACCEPTED, wamid=wamid, wa_id="15550006002", http_status=200)
    with autocommit(stage.db) as conn:
        assert settling.accept_at_once(conn, claimed, answer).status == "accepted"
        # A second answer for the same claim (a redelivered task's) changes nothing.
        assert settling.accept_at_once(conn, claimed, answer).status == "settled meanwhile"
    with orm(stage.db) as session:
        assert session.scalars(sa.select(Message.status).where(Message.wamid == wamid)).one() == "delivered"


@postgresql_only
def test_a_one_statement_claim_put_off_by_pair_pacing_takes_its_mark_back(stage):
    oids = [command(stage.db, "15550006003", template(f"2026-3{i:02d}")) for i in range(limiter.PAIR_BURST + 1)]
    assert [stage.send(oid) for oid in oids[:-1]] == ["accepted"] * limiter.PAIR_BURST
    assert stage.send(oids[-1]) == "deferred"
    stored = row(stage.db, oids[-1])
    assert (stored.status, stored.attempts, stored.claimed_by) == ("queued", 0, None)
    assert len(stage.queued) == 1  # put back on its queue for later


@postgresql_only
def test_a_template_behind_one_still_on_its_way_parks_and_is_sent_on_by_its_acceptance(stage):
    first = command(stage.db, "15550006004", template("2026-401"))
    second = command(stage.db, "15550006004", template("2026-402"))
    assert stage.send(second).startswith("waiting for outbound")  # the one statement matched nothing: full claim
    assert stage.send(first) == "accepted"
    [(args, _)] = stage.queued
    assert args == (second,)
    assert stage.send(second) == "accepted"


def test_a_connection_idle_past_the_limit_is_replaced_before_a_send(stage, monkeypatch):
    client = whatsapp.Client(stage.meta.api_url, settings.access_token)
    pool = client.http.connection_from_url(stage.meta.api_url)

    def local_port() -> int:
        return pool.pool.queue[-1].sock.getsockname()[1]

    body = compose.request_body(compose.parse(template("2026-501")), "15550006005")
    assert client.send(NUMBER, body).outcome is whatsapp.Outcome.ACCEPTED
    first = local_port()
    assert client.send(NUMBER, body).outcome is whatsapp.Outcome.ACCEPTED
    assert local_port() == first  # kept alive and used again
    monkeypatch.setattr(whatsapp, "IDLE_REUSE_LIMIT", 0.05)
    import time

    time.sleep(0.1)
    assert client.send(NUMBER, body).outcome is whatsapp.Outcome.ACCEPTED
    assert local_port() != first  # idle too long: a fresh connection, before the server could close it


def test_nothing_is_sent_when_the_slot_cannot_be_had(stage):
    client = whatsapp.Client(stage.meta.api_url, settings.access_token)

    def no_slot():
        raise limiter.LimiterUnavailable("redis: connection refused")

    with pytest.raises(limiter.LimiterUnavailable):
        client.send(NUMBER, compose.request_body(compose.parse(template("2026-601")), "15550006006"), before=no_slot)
    assert stage.meta.sends(to="15550006006") == []


def test_a_sender_warms_up_its_connections_and_statements(stage, monkeypatch):
    from waflow.db import dispose_engines

    dispose_engines()
    warmup.warm_up(3, stage.wiring)
    if not stage.db.startswith("sqlite"):
        engine = get_engine(stage.db, autocommit=True)
        assert engine.pool.checkedin() == 3
        # Each connection's server process has run the send path's statements (planned them, opened
        # their tables), not only the first one.
        with contextlib.ExitStack() as stack:
            conns = [stack.enter_context(engine.connect()) for _ in range(3)]
            runs = [c.exec_driver_sql("SELECT name, generic_plans + custom_plans FROM pg_prepared_statements "
                                      "WHERE name LIKE 'waflow_%%'").all() for c in conns]
        assert all(dict(r) == {"waflow_claim": 1, "waflow_accept": 1, "waflow_next": 1} for r in runs), runs
    warmed = []
    monkeypatch.setattr(warmup, "warm_up", warmed.append)
    warmup.warm_up_sender({"wa.incoming.raw"}, 4)
    warmup.warm_up_sender({"wa.outgoing.broadcast"}, 8)
    assert warmed == [8]  # only a worker that consumes a send queue


def test_a_preconnected_client_sends_on_a_connection_it_opened_beforehand(stage):
    client = whatsapp.Client(stage.meta.api_url, settings.access_token)
    client.preconnect(3)
    pool = client.http.connection_from_url(stage.meta.api_url)
    opened = {conn.sock.getsockname()[1] for conn in pool.pool.queue if conn is not None and conn.sock is not None}
    assert len(opened) == 3
    body = compose.request_body(compose.parse(template("2026-701")), "15550006007")
    assert client.send(NUMBER, body).outcome is whatsapp.Outcome.ACCEPTED
    used = {conn.sock.getsockname()[1] for conn in pool.pool.queue if conn is not None and conn.sock is not None}
    assert used == opened  # no new connection was needed
