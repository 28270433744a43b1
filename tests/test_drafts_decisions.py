"""What a lawyer decides: approvals, edits, templates, rejections, replies by hand, new drafts; who may, and
what is refused (issue 17, items 2, 4, 6).

The plain functions the CLI and the dashboard call, on SQLite and, when set, PostgreSQL.
"""
from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from drafts_support import (CLIENT, client_writes, draft, lawyer, one, ready_draft, rows, scalar)
from waflow import compose, users
from waflow.db import transaction
from waflow.drafts import decisions
from waflow.drafts.errors import (AlreadyDecided, Deactivated, InvalidDecision, NothingToDraft, NotReady,
                                  OutsideWindow, Stale, UnknownUser)
from waflow.outbound import commands

BY = "ratna@firma.id"


@pytest.fixture
def db(db_url):
    lawyer(db_url)
    return db_url


def decide(db: str, fn, *args, **kwargs):
    with transaction(db) as conn:
        return fn(conn, *args, **kwargs)


def test_approving_a_draft_as_drafted_records_the_approval_and_the_decision(db):
    draft_id = ready_draft(db)
    text = scalar(db, "SELECT text FROM drafts")
    result = decide(db, decisions.approve, draft_id, BY, "dashboard")
    assert (result.draft_id, result.action, result.by) == (draft_id, "approve", BY)
    assert scalar(db, "SELECT status FROM drafts") == "approved"
    approval = one(db, "SELECT * FROM draft_approvals")
    assert (approval.id, approval.kind, approval.text, approval.sha256, approval.via) == (
        result.approval_id, "text", text, compose.digest(text), "dashboard")
    decision = one(db, "SELECT * FROM draft_decisions")
    assert (decision.action, decision.original_text, decision.final_text, decision.edit_distance) == (
        "approve", text, text, 0)
    assert decision.approval_id == result.approval_id and decision.via == "dashboard"
    assert scalar(db, "SELECT kind FROM changes WHERE kind = 'draft.approved'") == "draft.approved"


def test_editing_then_approving_records_both_texts_and_their_edit_distance(db):
    draft_id = ready_draft(db)
    original = scalar(db, "SELECT text FROM drafts")
    edited = original.replace("Pengadilan", "pengadilan") + "\n\nSalam, Ratna"
    result = decide(db, decisions.approve, draft_id, BY, text=edited)
    assert result.action == "edit"
    assert scalar(db, "SELECT text FROM draft_approvals") == edited
    decision = one(db, "SELECT original_text, final_text, edit_distance FROM draft_decisions")
    from rapidfuzz.distance import Levenshtein
    assert (decision.original_text, decision.final_text) == (original, edited)
    assert decision.edit_distance == Levenshtein.distance(original, edited) > 0


def test_a_template_can_be_approved_outside_the_24_hour_window_and_free_words_cannot(db):
    draft_id = ready_draft(db, at=(datetime.now(timezone.utc) - timedelta(hours=25)).timestamp())
    with pytest.raises(OutsideWindow, match="outside Meta's 24-hour window .* approve an approved template"):
        decide(db, decisions.approve, draft_id, BY)
    with pytest.raises(OutsideWindow):
        decide(db, decisions.approve, draft_id, BY, text="Kami akan menelepon Anda.")
    assert scalar(db, "SELECT status FROM drafts") == "ready"  # nothing changed
    result = decide(db, decisions.approve, draft_id, BY, template="case_update", params=["2026-114"])
    assert result.action == "template"
    approval = one(db, "SELECT kind, text FROM draft_approvals")
    assert approval.kind == "template"
    assert approval.text == compose.canonical_template("case_update", "id", ["2026-114"])


def test_a_second_approval_is_told_who_decided_first(db):
    lawyer(db, "budi@firma.id", "Budi")
    draft_id = ready_draft(db)
    decide(db, decisions.approve, draft_id, BY)
    with pytest.raises(AlreadyDecided, match="already decided: ratna@firma.id chose approve") as refused:
        decide(db, decisions.approve, draft_id, "budi@firma.id", text="versi saya")
    assert (refused.value.by, refused.value.action) == (BY, "approve")
    with pytest.raises(AlreadyDecided):
        decide(db, decisions.reject, draft_id, "budi@firma.id", reason="wrong_tone")
    assert scalar(db, "SELECT count(*) FROM draft_approvals") == 1


# Concurrent writers: only PostgreSQL runs them at the same time (SQLite serializes writers).
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_two_approvals_at_the_same_moment_give_one_approval_and_tell_the_other_who(db):
    lawyer(db, "budi@firma.id", "Budi")
    draft_id = ready_draft(db)
    barrier = threading.Barrier(2)
    results: dict[str, object] = {}

    def approve_as(email: str) -> None:
        barrier.wait()
        try:
            results[email] = decide(db, decisions.approve, draft_id, email)
        except AlreadyDecided as exc:
            results[email] = exc

    threads = [threading.Thread(target=approve_as, args=(e,)) for e in (BY, "budi@firma.id")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    won = [e for e, r in results.items() if isinstance(r, decisions.Approved)]
    lost = [r for r in results.values() if isinstance(r, AlreadyDecided)]
    assert len(won) == 1 and len(lost) == 1
    assert lost[0].by == won[0] and lost[0].action == "approve"
    assert scalar(db, "SELECT count(*) FROM draft_approvals") == 1
    assert scalar(db, "SELECT count(*) FROM draft_decisions") == 1


def test_approving_a_draft_the_client_wrote_past_is_refused(db):
    draft_id = ready_draft(db, "wamid.P1")
    client_writes(db, "wamid.P2", "satu lagi pak")
    with pytest.raises(Stale, match="the client wrote again"):
        decide(db, decisions.approve, draft_id, BY)
    assert scalar(db, "SELECT count(*) FROM draft_approvals") == 0


def test_a_reply_sent_another_way_makes_the_open_draft_stale_and_cancels_a_waiting_request(db):
    draft_id = ready_draft(db, "wamid.H1")
    with transaction(db) as conn:  # `flask --app wsgi send` to the same client
        commands.command(conn, key="cli:1", recipient=CLIENT, message={"kind": "text", "body": "Sudah saya telepon."},
                         phone_number_id="1122334455")
    with pytest.raises(Stale, match="a reply already reached the client another way"):
        decide(db, decisions.approve, draft_id, BY)
    client_writes(db, "wamid.H2", "terima kasih")
    with transaction(db) as conn:
        commands.command(conn, key="cli:2", recipient=CLIENT, message={"kind": "template", "name": "hello_world"},
                         phone_number_id="1122334455")
    newest = "SELECT status FROM draft_requests WHERE id = (SELECT max(id) FROM draft_requests)"
    assert scalar(db, newest) == "cancelled"


def test_a_broadcast_to_the_client_leaves_their_draft_open(db):
    draft_id = ready_draft(db, "wamid.BC")
    with transaction(db) as conn:
        commands.command(conn, key="bc:1", recipient=CLIENT, lane="broadcast", phone_number_id="1122334455",
                         message={"kind": "template", "name": "case_update", "parameters": ["x"]})
    assert decide(db, decisions.approve, draft_id, BY).action == "approve"


@pytest.mark.parametrize("who, error", [("nobody@firma.id", UnknownUser), ("gone@firma.id", Deactivated)])
def test_only_an_active_user_may_decide(db, who, error):
    lawyer(db, "gone@firma.id", "Gone")
    with transaction(db) as conn:
        users.deactivate(conn, "gone@firma.id")
    draft_id = ready_draft(db)
    with pytest.raises(error):
        decide(db, decisions.approve, draft_id, who)
    with pytest.raises(error):
        decide(db, decisions.reject, draft_id, who, reason="wrong_facts")
    assert scalar(db, "SELECT status FROM drafts") == "ready"


def test_the_email_of_whoever_decides_is_matched_whatever_its_case(db):
    draft_id = ready_draft(db)
    assert decide(db, decisions.approve, draft_id, "  Ratna@FIRMA.id ").by == BY


def test_a_draft_still_being_written_cannot_be_decided(db):
    from drafts_support import later
    from waflow.drafts import claiming, drafter

    requested = client_writes(db, "wamid.PEND")
    with transaction(db) as conn:
        claimed = claiming.claim(conn, requested.request_id, "t", lease=drafter.lease(),
                                 now=later())
    with pytest.raises(NotReady, match="still being written"):
        decide(db, decisions.approve, claimed.draft_id, BY)


def test_a_failed_draft_is_approved_only_with_words_of_the_lawyers_own(db):
    class Broken:
        name = "offline"

        def draft(self, request):
            raise RuntimeError("down")

    outcome = draft(db, client_writes(db, "wamid.FD"), using=Broken())
    with pytest.raises(NotReady, match="give the words"):
        decide(db, decisions.approve, outcome.announce, BY)
    result = decide(db, decisions.approve, outcome.announce, BY, text="Mohon maaf, kami akan menghubungi Anda.")
    assert result.action == "edit"
    assert one(db, "SELECT original_text, edit_distance FROM draft_decisions") == (None, None)


def test_words_meta_would_refuse_are_refused_before_anything_is_decided(db):
    draft_id = ready_draft(db)
    with pytest.raises(InvalidDecision, match="Meta would refuse it"):
        decide(db, decisions.approve, draft_id, BY, text="x" * 4097)
    with pytest.raises(InvalidDecision, match="not both"):
        decide(db, decisions.approve, draft_id, BY, text="a", template="hello_world")
    with pytest.raises(InvalidDecision, match="via must be one of cli, dashboard"):
        decide(db, decisions.approve, draft_id, BY, "email")
    assert scalar(db, "SELECT status FROM drafts") == "ready"


def test_rejecting_needs_a_known_reason_and_a_note_for_other(db):
    draft_id = ready_draft(db)
    with pytest.raises(InvalidDecision, match="the reason must be one of"):
        decide(db, decisions.reject, draft_id, BY, reason="meh")
    with pytest.raises(InvalidDecision, match="needs a note"):
        decide(db, decisions.reject, draft_id, BY, reason="other")
    result = decide(db, decisions.reject, draft_id, BY, reason="needs_lawyer")
    assert result.reason == "needs_lawyer"
    decision = one(db, "SELECT action, reason, final_text FROM draft_decisions")
    assert tuple(decision) == ("reject", "needs_lawyer", None)
    with pytest.raises(AlreadyDecided, match="chose reject"):
        decide(db, decisions.approve, draft_id, BY)
    assert scalar(db, "SELECT count(*) FROM draft_approvals") == 0


def test_a_reply_written_by_hand_is_approved_as_written_and_the_draft_goes_stale(db):
    draft_id = ready_draft(db)
    conversation = scalar(db, "SELECT conversation_id FROM drafts")
    drafted = scalar(db, "SELECT text FROM drafts")
    result = decide(db, decisions.write_by_hand, conversation, BY, "dashboard", text="Bu Siti, saya telepon jam 2.")
    assert (result.action, result.draft_id) == ("write", None)
    assert one(db, "SELECT status, status_reason FROM drafts") == ("superseded", "replied")
    assert one(db, "SELECT draft_id, text FROM draft_approvals") == (None, "Bu Siti, saya telepon jam 2.")
    decision = one(db, "SELECT draft_id, action, original_text, final_text FROM draft_decisions")
    assert tuple(decision) == (draft_id, "write", drafted, "Bu Siti, saya telepon jam 2.")
    with pytest.raises(Stale, match="a reply already reached the client"):
        decide(db, decisions.approve, draft_id, BY)


def test_asking_for_a_new_draft_after_a_rejection_answers_the_same_messages_at_once(db):
    draft_id = ready_draft(db, "wamid.NEW1")
    decide(db, decisions.reject, draft_id, BY, reason="wrong_facts")
    requested = decide(db, decisions.redraft, scalar(db, "SELECT conversation_id FROM drafts"), BY)
    assert requested.countdown == 0
    assert draft(db, requested).status == "ready"
    newest = one(db, "SELECT answers FROM drafts WHERE status = 'ready'")
    import json
    answers = newest.answers if isinstance(newest.answers, list) else json.loads(newest.answers)
    assert answers == ["wamid.NEW1"]


def test_asking_for_a_new_draft_supersedes_the_open_one(db):
    draft_id = ready_draft(db, "wamid.RE1")
    conversation = scalar(db, "SELECT conversation_id FROM drafts")
    requested = decide(db, decisions.redraft, conversation)
    assert one(db, "SELECT status, status_reason FROM drafts WHERE id = :d", d=draft_id) == ("superseded", "redraft")
    with pytest.raises(Stale, match="a new draft was asked for"):
        decide(db, decisions.approve, draft_id, BY)
    assert draft(db, requested).status == "ready"


def test_there_is_nothing_to_redraft_once_the_reply_was_approved(db):
    draft_id = ready_draft(db)
    decide(db, decisions.approve, draft_id, BY)
    with pytest.raises(NothingToDraft):
        decide(db, decisions.redraft, scalar(db, "SELECT conversation_id FROM drafts"))


def test_the_decisions_log_and_what_an_approval_approved_never_change(db):
    draft_id = ready_draft(db)
    decide(db, decisions.approve, draft_id, BY)
    with pytest.raises(sa.exc.DatabaseError):
        with transaction(db) as conn:
            conn.execute(sa.text("UPDATE draft_decisions SET final_text = 'something else'"))
    with pytest.raises(sa.exc.DatabaseError):
        with transaction(db) as conn:
            conn.execute(sa.text("UPDATE draft_approvals SET text = 'something else'"))
    if db.startswith("postgresql"):
        with pytest.raises(sa.exc.DatabaseError):
            with transaction(db) as conn:
                conn.execute(sa.text("DELETE FROM draft_decisions"))
    with transaction(db) as conn:  # the outbox's own column still moves
        conn.execute(sa.text("UPDATE draft_approvals SET handed_at = :t"), {"t": datetime.now(timezone.utc)})
    assert rows(db, "SELECT final_text FROM draft_decisions")[0][0] != "something else"
