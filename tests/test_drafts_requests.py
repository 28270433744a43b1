"""Core asks for drafts: which client messages do, one request per burst, superseding, redelivery
(issue 17, items 1, 2).

Plain functions on SQLite and, when set, PostgreSQL.
"""
from __future__ import annotations

import threading
import time
from datetime import datetime, timezone

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from conftest import count
from drafts_support import (CLIENT, client_writes, draft, events_of, message, receive, rows, scalar, webhook)
from support import ROOT, orm
from waflow.config import settings
from waflow.core import persist_event
from waflow.db import transaction
from waflow.drafts import requests
from waflow.models import DraftRequest

QUIET = settings.draft_quiet_seconds

ANSWERED_KINDS = {
    "text": message("wamid.T", "Bisa konsultasi hari Sabtu?"),
    "interactive": message("wamid.I", None, kind="interactive", interactive={
        "type": "button_reply", "button_reply": {"id": "yes", "title": "Ya, lanjut"}}),
    "button": message("wamid.B", None, kind="button", button={"text": "Jadwalkan", "payload": "schedule"}),
    "edit": message("wamid.E", None, kind="edit", edit={
        "original_message_id": "wamid.T0", "message": {"type": "text", "text": {"body": "maksud saya hari Senin"}}}),
    "image": message("wamid.M", None, kind="image", image={"id": "media-1", "mime_type": "image/jpeg",
                                                         "caption": "ini surat somasinya"}),
    "document": message("wamid.DOC", None, kind="document", document={
        "id": "media-2", "mime_type": "application/pdf", "filename": "putusan.pdf"}),
}

UNANSWERED_KINDS = {
    "reaction": message("wamid.R", None, kind="reaction", reaction={"message_id": "wamid.T", "emoji": "👍"}),
    "location": message("wamid.L", None, kind="location", location={"latitude": -6.2, "longitude": 106.8}),
    "deleted": message("wamid.X", None, kind="revoke", revoke={"original_message_id": "wamid.T"}),
    "unsupported": message("wamid.U", None, kind="unsupported", unsupported={"type": "poll"}),
    "system": message("wamid.S", None, kind="system", system={"body": "changed number", "type": "user_changed_number"}),
    "an edit into a reaction": message("wamid.ER", None, kind="edit", edit={
        "original_message_id": "wamid.T", "message": {"type": "reaction", "reaction": {"emoji": "👍"}}}),
}


@pytest.mark.parametrize("kind", sorted(ANSWERED_KINDS))
def test_a_client_message_that_asks_for_an_answer_writes_a_draft_request(db_url, kind):
    [requested] = receive(db_url, webhook(ANSWERED_KINDS[kind]))
    assert QUIET - 1 < requested.countdown <= QUIET
    request = rows(db_url, "SELECT id, status, messages, origin, due_at FROM draft_requests")
    assert [(r.id, r.status, r.messages, r.origin) for r in request] == [(requested.request_id, "waiting", 1, "client")]
    linked = scalar(db_url, "SELECT m.wamid FROM draft_request_messages l JOIN messages m ON m.id = l.message_id")
    assert linked == ANSWERED_KINDS[kind]["id"]


@pytest.mark.parametrize("kind", sorted(UNANSWERED_KINDS))
def test_a_message_that_asks_for_no_answer_writes_no_request(db_url, kind):
    assert receive(db_url, webhook(UNANSWERED_KINDS[kind])) == []
    assert scalar(db_url, "SELECT count(*) FROM messages") == 1
    assert scalar(db_url, "SELECT count(*) FROM draft_requests") == 0


def test_statuses_other_fields_and_our_own_sends_write_no_request(db_url):
    doc = webhook(statuses=[{"id": "wamid.OUT1", "status": "delivered", "timestamp": str(int(time.time())),
                             "recipient_id": CLIENT}])
    assert receive(db_url, doc) == []
    account = {"object": "whatsapp_business_account", "entry": [{"id": "1", "time": 1764000000, "changes": [
        {"field": "account_update", "value": {"event": "VERIFIED_ACCOUNT"}}]}]}
    assert receive(db_url, account) == []
    echo = {"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{
        "field": "smb_message_echoes", "value": {"messaging_product": "whatsapp", "message_echoes": [
            {"from": "15550009999", "to": CLIENT, "id": "wamid.ECHO", "timestamp": "1764000000", "type": "text",
             "text": {"body": "from the phone app"}}]}}]}]}
    assert receive(db_url, echo) == []
    assert scalar(db_url, "SELECT count(*) FROM draft_requests") == 0


def _request(db_url: str) -> DraftRequest:
    with orm(db_url) as session:
        request = session.execute(sa.select(DraftRequest)).scalar_one()
    if request.due_at.tzinfo is None:
        request.due_at = request.due_at.replace(tzinfo=timezone.utc)
    return request


def test_three_lines_typed_in_a_row_make_one_request_due_after_the_last(db_url):
    first = client_writes(db_url, "wamid.L1", "Pak, saya ditangkap polisi")
    due_after_first = _request(db_url).due_at
    time.sleep(0.05)
    second = client_writes(db_url, "wamid.L2", "eh maksud saya adik saya")
    third = client_writes(db_url, "wamid.L3", "besok sidang, tolong")
    assert first.request_id == second.request_id == third.request_id
    assert (first.messages, second.messages, third.messages) == (1, 2, 3)
    # Only the first line queues a drafting task: the others joined the request it is on its way for.
    assert (first.new, second.new, third.new) == (True, False, False)
    request = _request(db_url)
    assert (request.status, request.messages) == ("waiting", 3) and request.due_at > due_after_first
    # The task comes at the first line's due time: the last line pushed it, so it goes back until then.
    early = draft(db_url, first, now=due_after_first)
    assert early.status == "not due"
    assert early.again_in == pytest.approx((request.due_at - due_after_first).total_seconds(), abs=0.01)
    assert draft(db_url, first, now=request.due_at).status == "ready"
    answers = scalar(db_url, "SELECT answers FROM drafts")
    assert (answers if isinstance(answers, list) else __import__("json").loads(answers)) == [
        "wamid.L1", "wamid.L2", "wamid.L3"]


def test_a_drafting_task_that_comes_before_the_due_time_waits_for_it(db_url):
    requested = client_writes(db_url, "wamid.EARLY")
    outcome = draft(db_url, requested, now=datetime.now(timezone.utc))
    assert outcome.status == "not due" and 0 < outcome.again_in <= QUIET
    assert scalar(db_url, "SELECT status FROM draft_requests") == "waiting"
    assert scalar(db_url, "SELECT count(*) FROM drafts") == 0


def test_a_redelivered_message_adds_nothing_and_hands_back_its_waiting_request(db_url):
    doc = webhook(message("wamid.AGAIN", "halo"))
    [first] = receive(db_url, doc)
    # The core task is redelivered (its drafting task's publish may have been lost after the commit).
    [again] = receive(db_url, doc)
    assert (again.request_id, again.messages) == (first.request_id, first.messages)
    assert scalar(db_url, "SELECT count(*) FROM draft_request_messages") == 1
    assert draft(db_url, again).status == "ready"
    assert receive(db_url, doc) == []  # drafted: nothing to queue again


def test_a_new_client_message_supersedes_the_ready_draft_and_the_next_answers_both(db_url):
    first = client_writes(db_url, "wamid.S1", "Berapa biaya konsultasi?")
    assert draft(db_url, first).status == "ready"
    second = client_writes(db_url, "wamid.S2", "Dan kantornya di mana?")
    old = rows(db_url, "SELECT status, status_reason FROM drafts ORDER BY id")
    assert [(r.status, r.status_reason) for r in old] == [("superseded", "client_wrote")]
    assert second.request_id != first.request_id and second.messages == 2
    assert draft(db_url, second).status == "ready"
    newest = scalar(db_url, "SELECT answers FROM drafts WHERE status = 'ready'")
    newest = newest if isinstance(newest, list) else __import__("json").loads(newest)
    assert newest == ["wamid.S1", "wamid.S2"]
    assert scalar(db_url, "SELECT count(*) FROM changes WHERE kind = 'draft.superseded'") == 1


def test_a_client_message_while_the_draft_is_being_written_supersedes_it_when_it_is_stored(db_url):
    from drafts_support import later, offline
    from waflow.drafts import claiming, drafter

    first = client_writes(db_url, "wamid.W1", "Saya di-PHK tanpa pesangon")
    with transaction(db_url) as conn:
        claimed = claiming.claim(conn, first.request_id, "slow-task", lease=drafter.lease(),
                                 now=later())
    assert isinstance(claimed, claiming.Claimed)
    second = client_writes(db_url, "wamid.W2", "oh ya, kontrak saya PKWT")  # while the model thinks
    with transaction(db_url) as conn:
        status = claiming.finish(conn, claimed, "slow-task", offline().draft(claimed.input))
    assert status == "superseded"  # stored for the record, never offered to a lawyer
    assert draft(db_url, second).status == "ready"
    assert [r.status for r in rows(db_url, "SELECT status FROM drafts ORDER BY id")] == ["superseded", "ready"]


def test_messages_stored_before_this_feature_start_no_draft(db_url):
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.attributes["url"] = db_url
    cfg.attributes["configure_logger"] = False
    command.downgrade(cfg, "0003")
    with transaction(db_url) as conn:  # a client message, stored as core stored it before this feature
        conn.execute(sa.text(
            "INSERT INTO contacts (wa_id, name, created_at, updated_at) VALUES (:w, 'Old', :t, :t)"),
            {"w": "628999", "t": datetime.now(timezone.utc)})
        contact = conn.execute(sa.text("SELECT id FROM contacts WHERE wa_id = '628999'")).scalar()
        conn.execute(sa.text("INSERT INTO conversations (contact_id, phone_number_id, created_at) "
                             "VALUES (:c, :p, :t)"), {"c": contact, "p": "1122334455", "t": datetime.now(timezone.utc)})
        conversation = conn.execute(sa.text("SELECT id FROM conversations WHERE contact_id = :c"),
                                    {"c": contact}).scalar()
        conn.execute(sa.text(
            "INSERT INTO messages (wamid, conversation_id, contact_id, phone_number_id, direction, type, body, "
            "sent_at, content, created_at) VALUES ('wamid.BEFORE', :v, :c, '1122334455', 'inbound', 'text', "
            "'tolong', :t, '{}', :t)"), {"v": conversation, "c": contact, "t": datetime.now(timezone.utc)})
    command.upgrade(cfg, "head")
    assert scalar(db_url, "SELECT count(*) FROM draft_requests") == 0
    assert scalar(db_url, "SELECT count(*) FROM drafts") == 0


# Concurrent writers: only PostgreSQL runs them at the same time (SQLite serializes writers).
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_messages_of_one_conversation_handled_at_once_join_one_request(db_url):
    docs = [webhook(message(f"wamid.C{i}", f"baris {i}")) for i in range(8)]
    events = [events_of(doc)[0] for doc in docs]
    barrier = threading.Barrier(len(events))
    errors: list[BaseException] = []

    def handle(event):
        try:
            barrier.wait()
            with transaction(db_url) as conn:
                persist_event(conn, event, [], [])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=handle, args=(e,)) for e in events]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert [(r.status, r.messages) for r in rows(db_url, "SELECT status, messages FROM draft_requests")] == [
        ("waiting", 8)]
    assert scalar(db_url, "SELECT count(*) FROM draft_request_messages") == 8


def test_it_counts_only_messages_that_ask_for_an_answer_as_draftable(db_url):
    assert [requests.draftable(e) for e in events_of(webhook(*ANSWERED_KINDS.values()))] == [True] * len(ANSWERED_KINDS)
    assert not any(requests.draftable(e) for e in events_of(webhook(*UNANSWERED_KINDS.values())))
    with orm(db_url) as session:
        assert count(session, "draft_requests") == 0
