"""Nothing is sent without approval: core hands an approval to the sender once, the sender sends only the
approved words, and the audit compares what went to Meta with the approvals (issue 17, items 6, 7).

The sender's plain function (``deliver``) runs in-process against the Meta simulator, on SQLite and, when set,
PostgreSQL; what it would queue is recorded. Each way of making the audit list a send is tried.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest
import sqlalchemy as sa

from drafts_support import CLIENT, client_writes, lawyer, one, ready_draft, scalar
from waflow import compose, limiter, whatsapp
from waflow.config import settings
from waflow.db import transaction
from waflow.drafts import audit, decisions, queries, sending
from waflow.drafts.errors import AlreadyDecided
from waflow.models import OutboundMessage
from waflow.outbound import claim as claiming, commands, operator, task

BY = "ratna@firma.id"


@pytest.fixture
def stage(meta, db_url, tmp_path):
    meta.control("POST", "reset")
    lawyer(db_url)
    queued: list = []
    wiring = task.Wiring(database_url=db_url, store=limiter.FileStore(tmp_path / "limiter", settings.send_rate),
                         client=whatsapp.Client(meta.api_url, settings.access_token),
                         dispatch=lambda name, args, **kw: queued.append(tuple(args)))

    def send(outbound_id: int, retries: int = 0) -> str:
        return task.deliver(outbound_id, None, retries, 3, wiring)

    return SimpleNamespace(db=db_url, meta=meta, send=send, queued=queued)


def approved(stage, wamid: str = "wamid.A1", **kw) -> decisions.Approved:
    draft_id = ready_draft(stage.db, wamid, **kw)
    with transaction(stage.db) as conn:
        return decisions.approve(conn, draft_id, BY)


def hand_over(stage, approval_id: int) -> list[commands.Queued]:
    """What core does with a wa.ai.draft.approved message."""
    with transaction(stage.db) as conn:
        return sending.command_approved(conn, approval_id)


def outbound(stage) -> OutboundMessage:
    return one(stage.db, "SELECT * FROM outbound_messages ORDER BY id DESC LIMIT 1")


def alter_words(stage, outbound_id: int, words: str) -> None:
    """Someone changes a queued send's words behind the approval's back."""
    with transaction(stage.db) as conn:
        body = conn.execute(sa.select(OutboundMessage.payload).where(OutboundMessage.id == outbound_id)).scalar_one()
        body = {**body, "text": {**body["text"], "body": words}}
        conn.execute(sa.update(OutboundMessage).where(OutboundMessage.id == outbound_id).values(payload=body,
                                                                                              text=words))


def audit_findings(stage) -> list[audit.Finding]:
    with transaction(stage.db) as conn:
        return audit.audit(conn)


def test_an_approval_is_handed_over_once_and_the_simulator_gets_exactly_the_approved_words(stage):
    result = approved(stage)
    words = scalar(stage.db, "SELECT text FROM draft_approvals")
    [queued] = hand_over(stage, result.approval_id)
    # Redelivered before the send went: the same message, queued again in case its task's publish was lost.
    assert hand_over(stage, result.approval_id) == [queued]
    row = outbound(stage)
    assert (row.idempotency_key, row.approval_id, row.lane) == (f"approval:{result.approval_id}", result.approval_id,
                                                                "reply")
    assert scalar(stage.db, "SELECT handed_at FROM draft_approvals") is not None
    assert stage.send(queued.id) == "accepted"
    assert stage.send(queued.id) == "already accepted"  # the second task claims nothing
    assert hand_over(stage, result.approval_id) == []  # redelivered once sent: nothing to queue
    [sent] = stage.meta.sends(to=CLIENT)
    assert sent["body"]["text"]["body"] == words
    assert scalar(stage.db, "SELECT count(*) FROM outbound_messages") == 1
    with transaction(stage.db) as conn:
        shown = queries.show_draft(conn, result.draft_id)
    assert shown["send"]["state"] == "accepted" and shown["send"]["wamid"] == sent["wamid"]
    assert audit_findings(stage) == []


def test_a_later_approval_of_a_new_draft_is_a_new_send(stage):
    first = approved(stage, "wamid.N1")
    stage.send(hand_over(stage, first.approval_id)[0].id)
    second = approved(stage, "wamid.N2", body="Satu lagi: berapa biaya sidangnya?")
    stage.send(hand_over(stage, second.approval_id)[0].id)
    assert len(stage.meta.sends(to=CLIENT)) == 2
    assert audit_findings(stage) == []


def test_the_sender_refuses_words_altered_after_the_approval(stage):
    result = approved(stage)
    [queued] = hand_over(stage, result.approval_id)
    alter_words(stage, queued.id, "Transfer biaya ke rekening 123 ya")
    assert stage.send(queued.id) == f"its words are not the ones approval {result.approval_id} approved"
    row = outbound(stage)
    assert (row.status, row.error_title, row.attempts) == ("failed", "refused before sending", 0)
    assert stage.meta.sends(to=CLIENT) == []
    assert audit_findings(stage) == []  # nothing unapproved reached Meta


def test_an_edit_after_the_approval_changes_nothing_that_is_sent(stage):
    result = approved(stage)
    words = scalar(stage.db, "SELECT text FROM draft_approvals")
    with pytest.raises(AlreadyDecided):
        with transaction(stage.db) as conn:
            decisions.approve(conn, result.draft_id, BY, text="versi baru setelah disetujui")
    with transaction(stage.db) as conn:  # the draft's own words edited behind the approval
        conn.execute(sa.text("UPDATE drafts SET text = 'versi lain'"))
    stage.send(hand_over(stage, result.approval_id)[0].id)
    assert [s["body"]["text"]["body"] for s in stage.meta.sends(to=CLIENT)] == [words]
    assert audit_findings(stage) == []


def test_a_dead_lettered_approved_send_replayed_sends_the_approved_words_once(stage):
    result = approved(stage)
    [queued] = hand_over(stage, result.approval_id)
    stage.meta.control("POST", "faults", {"code": 131000})
    with pytest.raises(Exception):  # transient on its last attempt: failed, then dead-lettered
        stage.send(queued.id, retries=3)
    assert outbound(stage).status == "failed"
    assert hand_over(stage, result.approval_id) == []  # core's message replayed too: no second send
    with transaction(stage.db) as conn:
        operator.reopen(conn, [queued.id], {})  # `flask --app wsgi dlq replay`
    assert stage.send(queued.id) == "accepted"
    assert len([s for s in stage.meta.sends(to=CLIENT)]) == 1
    assert audit_findings(stage) == []


def test_a_dead_lettered_send_with_altered_words_is_refused_on_replay(stage):
    result = approved(stage)
    [queued] = hand_over(stage, result.approval_id)
    stage.meta.control("POST", "faults", {"code": 131000})
    with pytest.raises(Exception):
        stage.send(queued.id, retries=3)
    alter_words(stage, queued.id, "kata-kata lain")
    with transaction(stage.db) as conn:
        operator.reopen(conn, [queued.id], {})
    assert stage.send(queued.id).startswith("its words are not")
    assert stage.meta.sends(to=CLIENT) == []
    assert audit_findings(stage) == []  # the first attempt posted the approved words; the second posted nothing


def test_outbox_resolve_resend_of_an_approved_send_checks_its_words_again(stage):
    result = approved(stage)
    [queued] = hand_over(stage, result.approval_id)
    stage.meta.control("POST", "faults", {"drop": True})
    assert stage.send(queued.id) == "in_doubt"
    alter_words(stage, queued.id, "kata-kata lain")
    with transaction(stage.db) as conn:
        operator.resolve(conn, queued.id, resend=True, by="ops")  # `flask --app wsgi outbox resolve --resend`
    assert stage.send(queued.id).startswith("its words are not")
    assert stage.meta.sends(to=CLIENT) == []
    assert audit_findings(stage) == []


def test_the_audit_lists_a_send_whose_posted_words_were_not_approved(stage, monkeypatch):
    """A sender without its check (a bug, an old version): the audit still finds what it posted."""
    monkeypatch.setattr(claiming, "_unapproved", lambda row: None)
    result = approved(stage)
    [queued] = hand_over(stage, result.approval_id)
    alter_words(stage, queued.id, "Transfer biaya ke rekening 123 ya")
    assert stage.send(queued.id) == "accepted"
    assert stage.meta.sends(to=CLIENT)[0]["body"]["text"]["body"] == "Transfer biaya ke rekening 123 ya"
    [finding] = audit_findings(stage)
    assert (finding.outbound_id, finding.approval_id, finding.draft_id) == (queued.id, result.approval_id,
                                                                            result.draft_id)
    assert finding.reason == "the words posted to Meta are not the approved words"


def test_the_audit_lists_a_send_keyed_as_an_approvals_that_has_none(stage):
    client_writes(stage.db, "wamid.K1")  # the client wrote: the window is open
    with transaction(stage.db) as conn:
        queued, _ = commands.command(conn, key="approval:4242", recipient=CLIENT, phone_number_id="1122334455",
                                     message={"kind": "text", "body": "never approved"})
    assert stage.send(queued.id) == "accepted"
    [finding] = audit_findings(stage)
    assert (finding.approval_id, finding.reason) == (None, "sent as an approval's, with no approval")


def test_an_approved_template_goes_out_as_exactly_that_template(stage):
    draft_id = ready_draft(stage.db, at=(datetime.now(timezone.utc) - timedelta(hours=30)).timestamp())
    with transaction(stage.db) as conn:
        result = decisions.approve(conn, draft_id, BY, template="case_update", params=["2026-114"], language="en_US")
    [queued] = hand_over(stage, result.approval_id)
    assert stage.send(queued.id) == "accepted"
    [sent] = stage.meta.sends(to=CLIENT)
    assert sent["body"]["template"]["name"] == "case_update"
    assert compose.approved_text(sent["body"]) == compose.canonical_template("case_update", "en_US", ["2026-114"])
    assert audit_findings(stage) == []


def test_core_refuses_an_approval_whose_words_no_longer_match_its_digest(stage):
    result = approved(stage)
    with transaction(stage.db) as conn:  # past the database's own guard: an owner disables the trigger
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("ALTER TABLE draft_approvals DISABLE TRIGGER draft_approvals_fixed"))
            conn.execute(sa.text("UPDATE draft_approvals SET text = 'diubah'"))
            conn.execute(sa.text("ALTER TABLE draft_approvals ENABLE TRIGGER draft_approvals_fixed"))
        else:
            conn.execute(sa.text("DROP TRIGGER draft_approvals_fixed"))
            conn.execute(sa.text("UPDATE draft_approvals SET text = 'diubah'"))
    try:
        assert hand_over(stage, result.approval_id) == []
        assert scalar(stage.db, "SELECT count(*) FROM outbound_messages") == 0
        refused = scalar(stage.db, "SELECT refused FROM draft_approvals")
        assert refused == "its words no longer match the approved digest"
    finally:
        if not stage.db.startswith("postgresql"):
            with transaction(stage.db) as conn:
                conn.execute(sa.text(
                    "CREATE TRIGGER IF NOT EXISTS draft_approvals_fixed BEFORE UPDATE OF draft_id, conversation_id, user_id, via, "
                    "kind, text, sha256, created_at ON draft_approvals BEGIN SELECT RAISE(ABORT, "
                    "'waflow: what was approved never changes'); END"))


def test_a_reply_written_by_hand_is_sent_like_an_approved_draft(stage):
    ready_draft(stage.db)
    conversation = scalar(stage.db, "SELECT conversation_id FROM drafts")
    with transaction(stage.db) as conn:
        result = decisions.write_by_hand(conn, conversation, BY, text="Bu, saya telepon sore ini.")
    stage.send(hand_over(stage, result.approval_id)[0].id)
    assert [s["body"]["text"]["body"] for s in stage.meta.sends(to=CLIENT)] == ["Bu, saya telepon sore ini."]
    assert audit_findings(stage) == []
