"""Core: persisting normalized events, once, on PostgreSQL (when set) and SQLite."""
from __future__ import annotations

import itertools
import threading
from datetime import datetime, timezone

import pytest
import sqlalchemy as sa

from conftest import count
from support import compact, text_webhook
from waflow.core import persist_event
from support import orm
from waflow.db import transaction
from waflow.events import NormalizedEvent
from waflow.ingestor import split_webhook
from waflow.models import Contact, Conversation, Message, MessageStatus, WebhookEvent


def events_of(doc: dict, received_at: float = 1764000001.5) -> list[NormalizedEvent]:
    batch = split_webhook(compact(doc), received_at)
    assert batch.rejected == []
    # What the core task does on arrival: validate the JSON the ingestor published.
    return [NormalizedEvent.model_validate(e.model_dump(mode="json", exclude_none=True)) for e in batch.events]


def persist_all(url: str, events: list[NormalizedEvent]) -> list[bool]:
    results = []
    for event in events:
        with transaction(url) as conn:
            results.append(persist_event(conn, event))
    return results


def user_message(wamid: str, *, wa_id: str | None = None, user_id: str | None = None, name: str = "Client",
                 phone_number_id: str = "1122334455", timestamp: str = "1764000000") -> dict:
    contact = {"profile": {"name": name}}
    message = {"id": wamid, "timestamp": timestamp, "type": "text", "text": {"body": "hi"}}
    if wa_id:
        contact["wa_id"] = message["from"] = wa_id
    if user_id:
        contact["user_id"] = message["from_user_id"] = user_id
    value = {"messaging_product": "whatsapp", "metadata": {"phone_number_id": phone_number_id},
             "contacts": [contact], "messages": [message]}
    return {"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [
        {"field": "messages", "value": value}]}]}


def test_it_stores_a_text_message_with_its_conversation_and_contact(db_url):
    persist_all(db_url, events_of(text_webhook(["wamid.A1"], wa_id="15551230000", phone_number_id="777")))
    with orm(db_url) as s:
        message = s.execute(sa.select(Message)).scalar_one()
        conversation = s.get(Conversation, message.conversation_id)
        contact = s.get(Contact, message.contact_id)
    assert (message.wamid, message.body, message.type, message.direction) == ("wamid.A1", "Hello 0", "text", "inbound")
    assert message.phone_number_id == conversation.phone_number_id == "777"
    assert message.sent_at.replace(tzinfo=timezone.utc) == datetime.fromtimestamp(1764000000, timezone.utc)
    assert message.received_at.replace(tzinfo=timezone.utc).timestamp() == 1764000001.5
    assert message.content["raw"]["text"] == {"body": "Hello 0"}
    assert (contact.wa_id, contact.name) == ("15551230000", "Client")
    assert conversation.display_phone_number == "15550009999"


def test_a_redelivered_message_leaves_one_row(db_url):
    events = events_of(text_webhook(["wamid.R1"]))
    assert persist_all(db_url, events * 5) == [True, False, False, False, False]
    with orm(db_url) as s:
        assert count(s, "messages") == 1
        assert count(s, "contacts") == 1
        assert count(s, "conversations") == 1


def test_one_contact_talking_to_two_business_numbers_has_two_conversations(db_url):
    persist_all(db_url, events_of(text_webhook(["wamid.N1", "wamid.N2"], phone_number_id="111")))
    persist_all(db_url, events_of(text_webhook(["wamid.N3"], phone_number_id="222")))
    with orm(db_url) as s:
        assert count(s, "contacts") == 1
        assert count(s, "conversations") == 2
        assert count(s, "messages", "phone_number_id = :p", p="111") == 2


def test_it_keys_a_user_with_only_a_business_scoped_id(db_url):
    persist_all(db_url, events_of(user_message("wamid.B1", user_id="US.42")))
    with orm(db_url) as s:
        contact = s.execute(sa.select(Contact)).scalar_one()
    assert (contact.wa_id, contact.user_id) == (None, "US.42")


def test_it_joins_a_phone_number_and_a_business_scoped_id_on_one_contact(db_url):
    persist_all(db_url, events_of(user_message("wamid.J1", user_id="US.7")))
    persist_all(db_url, events_of(user_message("wamid.J2", wa_id="15557770000", user_id="US.7", name="Renamed")))
    persist_all(db_url, events_of(user_message("wamid.J3", wa_id="15557770000", name="Renamed")))
    with orm(db_url) as s:
        contact = s.execute(sa.select(Contact)).scalar_one()
        assert count(s, "messages", "contact_id = :c", c=contact.id) == 3
    assert (contact.wa_id, contact.user_id, contact.name) == ("15557770000", "US.7", "Renamed")


def test_the_conversation_window_only_moves_forward(db_url):
    persist_all(db_url, events_of(user_message("wamid.W2", wa_id="1555", timestamp="1764000500")))
    persist_all(db_url, events_of(user_message("wamid.W1", wa_id="1555", timestamp="1764000100")))
    with orm(db_url) as s:
        conversation = s.execute(sa.select(Conversation)).scalar_one()
    assert conversation.last_inbound_at.replace(tzinfo=timezone.utc).timestamp() == 1764000500


def _outbound(url: str, wamid: str) -> None:
    """An outbound message as the sending stage will record it."""
    persist_all(url, events_of(text_webhook(["wamid.seed-" + wamid])))
    with orm(url) as s:
        seed = s.execute(sa.select(Message).where(Message.wamid == "wamid.seed-" + wamid)).scalar_one()
        s.add(Message(wamid=wamid, conversation_id=seed.conversation_id, contact_id=seed.contact_id,
                      phone_number_id=seed.phone_number_id, direction="outbound", type="text", body="reply",
                      sent_at=seed.sent_at, content={}))


def _status(url: str, wamid: str) -> str | None:
    with orm(url) as s:
        return s.execute(sa.select(Message.status).where(Message.wamid == wamid)).scalar_one()


@pytest.mark.parametrize("order", list(itertools.permutations(["sent", "delivered", "read"])))
def test_statuses_in_any_order_end_at_the_furthest_one(db_url, order):
    _outbound(db_url, "wamid.OUT")
    for status in order:
        persist_all(db_url, events_of(text_webhook([], statuses=[("wamid.OUT", status)])))
    assert _status(db_url, "wamid.OUT") == "read"
    with orm(db_url) as s:
        assert count(s, "message_statuses", "wamid = 'wamid.OUT'") == 3


@pytest.mark.parametrize("arrivals, final", [
    (["sent", "failed"], "failed"),
    (["delivered", "failed"], "failed"),
    (["failed", "delivered"], "failed"),
    (["failed", "sent"], "failed"),
    (["read", "failed"], "read"),
    (["played", "failed"], "played"),
    (["failed", "read"], "read"),
    (["read", "played", "delivered"], "played"),
])
def test_failed_wins_over_sent_and_delivered_but_never_replaces_read_or_played(db_url, arrivals, final):
    _outbound(db_url, "wamid.F")
    for status in arrivals:
        persist_all(db_url, events_of(text_webhook([], statuses=[("wamid.F", status)])))
    assert _status(db_url, "wamid.F") == final


def test_a_status_for_an_unseen_wamid_is_kept(db_url):
    persist_all(db_url, events_of(text_webhook([], statuses=[("wamid.NEVER", "delivered")])))
    with orm(db_url) as s:
        row = s.execute(sa.select(MessageStatus)).scalar_one()
        assert count(s, "messages") == 0
    assert (row.wamid, row.status, row.recipient_id) == ("wamid.NEVER", "delivered", "15550001111")


def test_a_redelivered_status_leaves_one_history_row(db_url):
    events = events_of(text_webhook([], statuses=[("wamid.S", "sent")]))
    assert persist_all(db_url, events * 3) == [True, False, False]


def test_messages_and_statuses_of_one_post_are_all_stored(db_url):
    doc = text_webhook(["wamid.M1", "wamid.M2"], statuses=[("wamid.X1", "sent"), ("wamid.X2", "read")])
    assert persist_all(db_url, events_of(doc)) == [True] * 4
    with orm(db_url) as s:
        assert count(s, "messages") == 2
        assert count(s, "message_statuses") == 2


def test_other_webhook_fields_are_stored_once(db_url):
    doc = {"object": "whatsapp_business_account", "entry": [{"id": "9", "changes": [
        {"field": "account_update", "value": {"event": "ACCOUNT_VIOLATION", "violation_info": {"type": "x"}}}]}]}
    assert persist_all(db_url, events_of(doc) * 2) == [True, False]
    with orm(db_url) as s:
        row = s.execute(sa.select(WebhookEvent)).scalar_one()
    assert (row.kind, row.field, row.waba_id) == ("field", "account_update", "9")
    assert row.content["value"]["event"] == "ACCOUNT_VIOLATION"


def test_concurrent_first_messages_from_a_new_contact_create_it_once(db_url):
    events = [events_of(text_webhook([f"wamid.RACE{i}"], wa_id="15559990000"))[0] for i in range(8)]
    barrier = threading.Barrier(len(events))
    errors: list[Exception] = []

    def persist(event: NormalizedEvent) -> None:
        try:
            barrier.wait()
            persist_all(db_url, [event])
        except Exception as exc:  # noqa: BLE001 - asserted below
            errors.append(exc)

    threads = [threading.Thread(target=persist, args=(e,)) for e in events]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with orm(db_url) as s:
        assert count(s, "contacts") == 1
        assert count(s, "conversations") == 1
        assert count(s, "messages") == 8


def _fixture_events() -> list[tuple[str, NormalizedEvent]]:
    from fixtures import load_cases, to_bytes, unique_ids

    found = []
    for n, (stem, case, body) in enumerate(load_cases()):
        batch = split_webhook(to_bytes(unique_ids(body, f"{stem}-{case}-{n}")), 1764000000.0)
        assert batch.rejected == [], (stem, case)
        found += [(f"{stem}#{case}", e) for e in batch.events]
    return found


def test_every_fixture_update_is_stored_with_its_fields(db_url):
    """Each message, status and other update of every Meta fixture, field by field, in its table."""
    events = _fixture_events()
    assert persist_all(db_url, [e for _, e in events]) == [True] * len(events)
    with orm(db_url) as s:
        messages = {m.wamid: m for m in s.execute(sa.select(Message)).scalars()}
        contacts = {c.id: c for c in s.execute(sa.select(Contact)).scalars()}
        conversations = {c.id: c for c in s.execute(sa.select(Conversation)).scalars()}
        statuses = {(r.wamid, r.status): r for r in s.execute(sa.select(MessageStatus)).scalars()}
        others = {r.event_id: r for r in s.execute(sa.select(WebhookEvent)).scalars()}
    for case, event in events:
        if event.kind == "message":
            row, msg = messages[event.message.wamid], event.message
            assert (row.type, row.body, row.direction) == (msg.type, msg.text, "inbound"), case
            assert row.phone_number_id == conversations[row.conversation_id].phone_number_id \
                == (event.phone_number_id or ""), case
            assert row.sent_at.replace(tzinfo=timezone.utc).timestamp() == msg.timestamp, case
            assert row.content["raw"] == msg.raw, case
            assert row.context_wamid == (msg.context.quoted_wamid if msg.context else None), case
            contact = contacts[row.contact_id]
            assert event.contact.wa_id in (None, contact.wa_id) and event.contact.user_id in (None, contact.user_id)
        elif event.kind == "status":
            row, st = statuses[(event.status.wamid, event.status.status)], event.status
            assert (row.recipient_id, row.biz_opaque_callback_data) == (st.recipient_id, st.biz_opaque_callback_data)
            assert row.error_code == (st.errors[0].code if st.errors else None), case
            assert row.content["raw"] == st.raw, case
        else:
            row = others[event.event_id]
            assert (row.kind, row.field, row.waba_id) == (event.kind, event.field, event.waba_id), case
            if event.kind == "field":
                assert row.content["value"] == event.update.value, case
    assert len(messages) == sum(e.kind == "message" for _, e in events) > 30
