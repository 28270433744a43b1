"""What the inbox shows of a conversation, kept on its row by the stages that store its messages (issue 19,
item 2): core for a client's message, the sender for a reply Meta accepted (on PostgreSQL in its one-statement
acceptance), the drafter for an urgent draft; each move recorded in the change log. And migration 0006, which
derives the same columns for conversations stored before it.

Core, the drafter and the sender's ``deliver`` run in-process (the sender against the Meta simulator), on SQLite
and, when set, PostgreSQL.
"""
from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from drafts_support import CLIENT, NUMBER, client_writes, draft, lawyer, message, one, receive, rows, scalar, webhook
from support import ROOT
from waflow import conversation_state, limiter, whatsapp
from waflow.config import settings
from waflow.db import transaction
from waflow.drafts import decisions, requests, sending
from waflow.outbound import commands, task

BY = "ratna@firma.id"


@pytest.fixture
def stage(meta, db_url, tmp_path):
    meta.control("POST", "reset")
    lawyer(db_url)
    wiring = task.Wiring(database_url=db_url, store=limiter.FileStore(tmp_path / "limiter", settings.send_rate),
                         client=whatsapp.Client(meta.api_url, settings.access_token),
                         dispatch=lambda name, args, **kw: None)

    def send(queued: list[commands.Queued]) -> None:
        for q in queued:
            assert task.deliver(q.id, None, 0, 3, wiring) == "accepted"

    return SimpleNamespace(db=db_url, send=send)


def conversation(db: str) -> object:
    return one(db, "SELECT * FROM conversations ORDER BY id LIMIT 1")


def aware(at) -> datetime | None:
    if isinstance(at, str):  # SQLite through sa.text hands back text
        at = datetime.fromisoformat(at)
    return at.replace(tzinfo=timezone.utc) if at is not None and at.tzinfo is None else at


def changes(db: str) -> list[tuple[str, int | None]]:
    return [(r.kind, r.message_id) for r in rows(db, "SELECT kind, message_id FROM changes ORDER BY id")
            if r.kind in ("message.new", "delivery.tick")]


def approve_and_send(stage, draft_id: int, **kw) -> None:
    with transaction(stage.db) as conn:
        approved = decisions.approve(conn, draft_id, BY, **kw)
    with transaction(stage.db) as conn:
        queued = sending.command_approved(conn, approved.approval_id)
    stage.send(queued)


def send_by_hand(stage, message_: dict, key: str = "by-hand-1") -> None:
    with transaction(stage.db) as conn:
        queued, _ = commands.command(conn, key=key, recipient=CLIENT, message=message_, phone_number_id=NUMBER)
    stage.send([queued])


def test_a_client_message_makes_the_client_wait_and_shows_in_the_inbox_row(db_url):
    sent = int(time.time()) - 120
    receive(db_url, webhook(message("wamid.S1", "Selamat pagi, saya mau tanya soal warisan", at=sent)))
    receive(db_url, webhook(message("wamid.S2", "Tanah    di\nBogor", at=sent + 60)))
    row = conversation(db_url)
    assert aware(row.waiting_since) == datetime.fromtimestamp(sent, timezone.utc)  # the oldest unanswered
    assert aware(row.last_message_at) == datetime.fromtimestamp(sent + 60, timezone.utc)
    assert (row.last_message_direction, row.last_message_type, row.last_message_preview) == (
        "inbound", "text", "Tanah di Bogor")
    assert row.inbound_count == 2 and not row.urgent
    ids = [r.id for r in rows(db_url, "SELECT id FROM messages ORDER BY id")]
    assert changes(db_url) == [("message.new", ids[0]), ("message.new", ids[1])]


def test_a_redelivered_message_counts_once(db_url):
    doc = webhook(message("wamid.R1", "halo"))
    receive(db_url, doc)
    receive(db_url, doc)
    assert conversation(db_url).inbound_count == 1
    assert len(changes(db_url)) == 1


def test_a_reaction_is_counted_and_shown_but_asks_for_no_answer(db_url):
    receive(db_url, webhook(message("wamid.X1", None, kind="reaction",
                                    reaction={"message_id": "wamid.earlier", "emoji": "👍"})))
    row = conversation(db_url)
    assert row.waiting_since is None and row.inbound_count == 1 and row.last_message_type == "reaction"


def test_urgency_words_pin_the_conversation_at_once(db_url):
    receive(db_url, webhook(message("wamid.U1", "Pak tolong, suami sy ditangkap polisi semalam")))
    assert conversation(db_url).urgent


def test_a_draft_flagged_urgent_pins_the_conversation(db_url, monkeypatch):
    requested = client_writes(db_url, "wamid.F1", "besok sidang perceraian saya, apa yang harus dibawa?")
    with transaction(db_url) as conn:  # core's words aside: the drafter's flag alone
        conn.execute(sa.text("UPDATE conversations SET urgent = FALSE"))
    outcome = draft(db_url, requested)
    assert outcome.status == "ready"
    assert "urgent" in (scalar(db_url, "SELECT flags FROM drafts") or "")
    assert conversation(db_url).urgent


def test_an_approved_reply_accepted_by_meta_ends_the_wait(stage):
    receive(stage.db, webhook(message("wamid.A1", "Pak tolong, suami sy ditangkap polisi semalam")))
    assert conversation(stage.db).urgent
    approve_and_send(stage, draft(stage.db, requests_of(stage.db)).announce)
    row = conversation(stage.db)
    assert row.waiting_since is None and not row.urgent
    assert (row.last_message_direction, row.last_message_type) == ("outbound", "text")
    assert row.last_message_preview and row.inbound_count == 1
    reply = one(stage.db, "SELECT id FROM messages WHERE direction = 'outbound'").id
    assert changes(stage.db)[-1] == ("message.new", reply)


def requests_of(db: str):
    """The conversation's waiting request, as core returned it."""
    row = one(db, "SELECT id, messages FROM draft_requests WHERE status = 'waiting'")
    return requests.Requested(row.id, row.messages, 0.0)


def test_a_reply_written_by_hand_ends_the_wait(stage):
    client_writes(stage.db, "wamid.H1", "halo, saya mau konsultasi")
    with transaction(stage.db) as conn:
        approved = decisions.write_by_hand(conn, conversation(stage.db).id, BY, text="Baik, kami telepon siang ini.")
    with transaction(stage.db) as conn:
        queued = sending.command_approved(conn, approved.approval_id)
    stage.send(queued)
    assert conversation(stage.db).waiting_since is None


def test_a_template_sent_by_hand_does_not_end_the_wait_but_an_approved_template_does(stage):
    client_writes(stage.db, "wamid.T1", "halo, saya mau konsultasi")
    send_by_hand(stage, {"kind": "template", "name": "case_update", "language": "id", "parameters": ["2026-114"]})
    row = conversation(stage.db)
    assert row.waiting_since is not None and row.last_message_type == "template"
    client_writes(stage.db, "wamid.T2", "pak?")
    approve_and_send(stage, draft(stage.db, requests_of(stage.db)).announce, template="case_update",
                     params=["2026-114"])
    assert conversation(stage.db).waiting_since is None


def test_a_text_sent_by_hand_ends_the_wait(stage):
    client_writes(stage.db, "wamid.B1", "halo")
    send_by_hand(stage, {"kind": "text", "body": "Selamat siang, ada yang bisa kami bantu?"})
    assert conversation(stage.db).waiting_since is None


def test_a_message_stored_after_the_reply_was_commanded_keeps_the_client_waiting(stage):
    client_writes(stage.db, "wamid.C1", "halo, saya mau konsultasi")
    draft_id = draft(stage.db, requests_of(stage.db)).announce
    with transaction(stage.db) as conn:
        approved = decisions.approve(conn, draft_id, BY)
    with transaction(stage.db) as conn:
        queued = sending.command_approved(conn, approved.approval_id)
    time.sleep(0.01)  # the client's next line is stored after the command, before Meta accepts the reply
    later = int(time.time())
    receive(stage.db, webhook(message("wamid.C2", "oh iya, satu lagi pertanyaan", at=later)))
    stage.send(queued)
    row = conversation(stage.db)
    assert aware(row.waiting_since) == datetime.fromtimestamp(later, timezone.utc)
    assert row.last_message_direction == "outbound"


def test_a_delivery_tick_is_recorded_and_a_failed_reply_makes_the_client_wait_again(stage):
    client_writes(stage.db, "wamid.D1", "halo")
    send_by_hand(stage, {"kind": "text", "body": "Baik, kami cek dulu."})
    reply = one(stage.db, "SELECT id, wamid FROM messages WHERE direction = 'outbound'")
    assert conversation(stage.db).waiting_since is None
    for status in ("sent", "delivered", "failed"):
        receive(stage.db, webhook(statuses=[{"id": reply.wamid, "status": status, "timestamp": str(int(time.time())),
                                             "recipient_id": CLIENT}]))
    assert changes(stage.db)[-3:] == [("delivery.tick", reply.id)] * 3
    assert conversation(stage.db).waiting_since is not None


def test_recompute_derives_what_the_stages_kept(stage):
    other = "6281299990000"  # a second client, answered after the first client's last line
    receive(stage.db, webhook(message("wamid.O1", "halo juga", wa_id=other, at=int(time.time()) - 60)))
    client_writes(stage.db, "wamid.P1", "halo")
    send_by_hand(stage, {"kind": "text", "body": "Baik."})
    time.sleep(1.1)  # Meta's timestamps are whole seconds
    receive(stage.db, webhook(message("wamid.P2", "terima kasih, satu lagi", at=int(time.time()))))
    time.sleep(1.1)
    with transaction(stage.db) as conn:
        queued, _ = commands.command(conn, key="other", recipient=other, message={"kind": "text", "body": "Ya."},
                                     phone_number_id=NUMBER)
    stage.send([queued])
    columns = ("id", "waiting_since", "last_message_at", "last_message_direction", "last_message_type",
               "last_message_preview", "inbound_count")
    kept = rows(stage.db, f"SELECT {', '.join(columns)} FROM conversations ORDER BY id")
    assert [r.waiting_since is None for r in kept] == [True, False]
    with transaction(stage.db) as conn:
        conn.execute(sa.text("UPDATE conversations SET waiting_since = NULL, last_message_at = NULL, "
                             "last_message_preview = NULL, inbound_count = 0"))
        conversation_state.recompute(conn)
    assert rows(stage.db, f"SELECT {', '.join(columns)} FROM conversations ORDER BY id") == kept


def test_migration_0006_derives_the_inbox_columns_of_conversations_stored_before_it(db_url):
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.attributes["url"] = db_url
    cfg.attributes["configure_logger"] = False
    command.downgrade(cfg, "0005")
    start = datetime.now(timezone.utc) - timedelta(hours=1)
    lines = [("inbound", "text", "halo"), ("outbound", "text", "ya, ada yang bisa dibantu?"),
             ("inbound", "text", "suami saya ditangkap polisi"), ("inbound", "reaction", None)]
    try:
        with transaction(db_url) as conn:
            conn.execute(sa.text("INSERT INTO contacts (wa_id, name, created_at, updated_at) "
                                 "VALUES ('628999', 'Old', :t, :t)"), {"t": start})
            conn.execute(sa.text("INSERT INTO conversations (contact_id, phone_number_id, created_at) "
                                 "SELECT id, '1122334455', :t FROM contacts"), {"t": start})
            for i, (direction, kind, body) in enumerate(lines):
                conn.execute(sa.text(
                    "INSERT INTO messages (wamid, conversation_id, contact_id, phone_number_id, direction, type, "
                    "body, sent_at, content, created_at) SELECT :w, c.id, c.contact_id, '1122334455', :d, :k, :b, "
                    ":t, '{}', :t FROM conversations AS c"),
                    {"w": f"wamid.old{i}", "d": direction, "k": kind, "b": body, "t": start + timedelta(minutes=i)})
    finally:
        command.upgrade(cfg, "head")
    row = conversation(db_url)
    assert aware(row.waiting_since) == start + timedelta(minutes=2)  # since the message after the reply
    assert row.urgent  # "ditangkap": the firm's urgency words
    assert aware(row.last_message_at) == start + timedelta(minutes=3) and row.last_message_type == "reaction"
    assert row.inbound_count == 3 and row.last_message_direction == "inbound"


def test_ends_wait_is_the_rule_of_the_issue():
    assert conversation_state.ends_wait("reply", "text", None)
    assert conversation_state.ends_wait("reply", "image", None)
    assert conversation_state.ends_wait("reply", "template", 7)  # an approved draft, as a template
    assert not conversation_state.ends_wait("reply", "template", None)  # a notice sent by hand
    assert not conversation_state.ends_wait("broadcast", "template", None)
    assert not conversation_state.ends_wait("reply", "read", None)


def test_the_answerable_types_are_the_ones_core_drafts_a_reply_to():
    assert set(conversation_state.ANSWERABLE_TYPES) == set(requests.DRAFTABLE_TYPES) | {"edit"}
