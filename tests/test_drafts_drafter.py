"""The drafter stage's plain functions: claiming once, the draft as a record, failures, takeovers, the sweep
and the announcer (issue 17, items 1, 3, 4, 5).

On SQLite and, when set, PostgreSQL; the chat drafter against the local fake chat-completions server.
"""
from __future__ import annotations

import json
import logging
import threading
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from drafts_support import (client_writes, draft, later, message, offline, one, receive, rows, scalar, webhook)
from fake_chat_server import FakeChatServer, Reply, completion
from waflow.db import transaction
from waflow.drafting import ChatDrafter, PROMPT_VERSION
from waflow.drafts import announcer, claiming, drafter, publish, sweep
from waflow.drafts.decisions import approve


def _json(value):
    return value if isinstance(value, (list, dict)) or value is None else json.loads(value)


def test_a_due_request_becomes_a_ready_draft_that_records_how_it_was_made(db_url):
    requested = client_writes(db_url, "wamid.R1", "Saya mau cerai, bagaimana caranya? Suami sudah pergi 2 tahun")
    outcome = draft(db_url, requested)
    assert outcome.status == "ready" and outcome.announce is not None
    d = one(db_url, "SELECT * FROM drafts")
    assert (d.id, d.status, d.drafter, d.model, d.prompt_version) == (outcome.announce, "ready", "offline", None, None)
    assert _json(d.answers) == ["wamid.R1"]
    assert d.language == "id" and d.text and d.finished_at is not None and d.latency_ms >= 0
    assert "first_contact" in _json(d.flags)
    sources = _json(d.sources)
    assert sources and {"entry_id", "score"} == set(sources[0]) and 0 < d.confidence <= 1
    assert scalar(db_url, "SELECT status FROM draft_requests") == "done"


def test_a_redelivered_drafting_task_makes_no_second_draft(db_url):
    requested = client_writes(db_url, "wamid.RD")
    assert draft(db_url, requested, task="t-1").status == "ready"
    again = draft(db_url, requested, task="t-1")
    assert again.status == "already drafted"
    assert again.announce is not None  # not announced yet: its wa.ai.draft.created may have been lost
    with transaction(db_url) as conn:
        announcer.announce(conn, again.announce)
    assert draft(db_url, requested, task="t-2").status == "request done"
    assert scalar(db_url, "SELECT count(*) FROM drafts") == 1


# Concurrent writers: only PostgreSQL runs them at the same time (SQLite serializes writers).
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_two_drafters_claiming_one_request_at_once_make_one_draft(db_url):
    requested = client_writes(db_url, "wamid.TWO")
    barrier = threading.Barrier(4)
    outcomes = []

    def run(n):
        barrier.wait()
        outcomes.append(draft(db_url, requested, task=f"task-{n}").status)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes).count("ready") == 1
    assert scalar(db_url, "SELECT count(*) FROM drafts") == 1


def test_a_drafter_that_died_mid_draft_is_taken_over_by_its_redelivered_task_or_after_the_lease(db_url):
    requested = client_writes(db_url, "wamid.DIED")
    with transaction(db_url) as conn:
        claimed = claiming.claim(conn, requested.request_id, "t-dead", lease=drafter.lease(),
                                 now=later())
    assert isinstance(claimed, claiming.Claimed)  # ... and its worker was killed before it stored anything
    assert draft(db_url, requested, task="t-other").status == "being drafted by task t-dead"
    assert draft(db_url, requested, task="t-dead").status == "ready"  # the same message, redelivered
    assert rows(db_url, "SELECT id, status FROM drafts") == [(claimed.draft_id, "ready")]


def test_a_claim_past_its_lease_is_taken_over_by_any_task(db_url):
    requested = client_writes(db_url, "wamid.LEASE")
    with transaction(db_url) as conn:
        claiming.claim(conn, requested.request_id, "t-gone", lease=drafter.lease(), now=later())
    outcome = draft(db_url, requested, task="t-sweep", now=later() + drafter.lease() + timedelta(seconds=1))
    assert outcome.status == "ready"
    assert scalar(db_url, "SELECT claimed_by FROM drafts") == "t-sweep"


def test_a_drafter_that_raises_leaves_a_failed_draft_that_is_announced(db_url, caplog):
    class Broken:
        name = "offline"

        def draft(self, request):
            raise RuntimeError(f"boom: {request.messages[0].text}")  # a message that quotes the client

    requested = client_writes(db_url, "wamid.FAIL", "rahasia klien")
    outcome = draft(db_url, requested, using=Broken())
    assert outcome.status == "failed" and outcome.announce is not None
    d = one(db_url, "SELECT status, error, text FROM drafts")
    assert (d.status, d.error, d.text) == ("failed", "the drafter failed (RuntimeError)", None)
    assert "rahasia" not in caplog.text
    with transaction(db_url) as conn:
        assert announcer.announce(conn, outcome.announce) == "draft.failed"


def test_a_media_message_gets_a_draft_that_acknowledges_the_attachment(db_url):
    doc = webhook(message("wamid.IMG", None, kind="image", image={"id": "m-1", "mime_type": "image/jpeg",
                                                                 "caption": "foto sertifikat tanah"}))
    [requested] = receive(db_url, doc)
    assert draft(db_url, requested).status == "ready"
    d = one(db_url, "SELECT flags, text FROM drafts")
    assert "has_media" in _json(d.flags)
    assert offline().knowledge_base.current().templates.media_word("image", "id") in d.text


def test_first_contact_is_flagged_only_before_a_reply_from_the_firm_reached_the_client(db_url):
    first = client_writes(db_url, "wamid.FC1", "Halo, saya mau tanya soal warisan")
    assert draft(db_url, first).status == "ready"
    assert "first_contact" in _json(scalar(db_url, "SELECT flags FROM drafts"))
    with transaction(db_url) as conn:  # the firm's reply, as the sender records one Meta accepted
        conv = conn.execute(sa.text("SELECT conversation_id, contact_id FROM messages")).first()
        conn.execute(sa.text(
            "INSERT INTO messages (wamid, conversation_id, contact_id, phone_number_id, direction, type, body, "
            "sent_at, content, created_at) VALUES ('wamid.OUT', :v, :c, '1122334455', 'outbound', 'text', "
            "'Baik Bu', :t, '{}', :t)"), {"v": conv.conversation_id, "c": conv.contact_id,
                                          "t": datetime.now(timezone.utc)})
    second = client_writes(db_url, "wamid.FC2", "Terima kasih, lalu dokumen apa yang dibawa?")
    assert draft(db_url, second).status == "ready"
    newest = one(db_url, "SELECT flags FROM drafts WHERE status = 'ready'")
    assert "first_contact" not in _json(newest.flags)


def test_urgent_words_flag_the_draft(db_url):
    requested = client_writes(db_url, "wamid.URG", "tolong pak, suami saya ditangkap polisi tadi malam")
    assert draft(db_url, requested).status == "ready"
    assert "urgent" in _json(scalar(db_url, "SELECT flags FROM drafts"))


# --- the chat-completions drafter in the pipeline ----------------------------------------------------------------


def chat(server: FakeChatServer) -> ChatDrafter:
    return ChatDrafter(offline(), url=server.url, model="fake-model", api_key="sk-test-0123456789abcdef",
                       timeout=3.0, backoff=0.01)


def test_the_chat_drafter_records_its_model_prompt_version_tokens_and_finish_reason(db_url, caplog):
    caplog.set_level(logging.DEBUG)
    with FakeChatServer() as server:
        server.then(Reply(body=completion("Untuk perceraian, gugatan diajukan ke Pengadilan Agama.",
                                          finish_reason="length", prompt_tokens=400, completion_tokens=90)))
        requested = client_writes(db_url, "wamid.CHAT", "Gimana cara gugat cerai suami sy?")
        assert draft(db_url, requested, using=chat(server)).status == "ready"
        [sent] = server.received
    d = one(db_url, "SELECT * FROM drafts")
    assert (d.drafter, d.model, d.prompt_version) == ("chat", "fake-model", PROMPT_VERSION)
    assert (d.prompt_tokens, d.completion_tokens, d.finish_reason, d.fallback_reason) == (400, 90, "length", None)
    assert "incomplete" in _json(d.flags)
    assert "Pengadilan Agama" in d.text
    assert "cerai suami" in json.dumps(sent.body)  # the client's words went to the model...
    assert "cerai suami" not in caplog.text and "Pengadilan Agama" not in caplog.text  # ...and into no log line


def test_a_failing_model_leaves_the_offline_draft_and_records_why(db_url):
    with FakeChatServer() as server:
        server.then(Reply(status=503), Reply(status=503), Reply(status=503))
        requested = client_writes(db_url, "wamid.FALLBACK", "berapa biaya konsultasi pertama?")
        assert draft(db_url, requested, using=chat(server)).status == "ready"
    d = one(db_url, "SELECT drafter, fallback_reason, flags FROM drafts")
    assert d.drafter == "offline" and d.fallback_reason.startswith("http_503")
    assert "fallback" in _json(d.flags)


# --- the announcer and the change log ----------------------------------------------------------------------------


def test_the_announcer_records_a_ready_draft_once_in_the_change_log(db_url):
    requested = client_writes(db_url, "wamid.ANN")
    outcome = draft(db_url, requested)
    for _ in range(3):  # redelivered
        with transaction(db_url) as conn:
            assert announcer.announce(conn, outcome.announce) == "draft.ready"
    assert [tuple(r) for r in rows(db_url, "SELECT kind, draft_id FROM changes WHERE kind LIKE 'draft.ready'")] == [
        ("draft.ready", outcome.announce)]
    assert scalar(db_url, "SELECT announced_at FROM drafts") is not None
    with transaction(db_url) as conn:
        assert announcer.announce(conn, 999999) is None


# --- the sweep ---------------------------------------------------------------------------------------------------


@pytest.fixture
def published(monkeypatch):
    sent: list[tuple[str, tuple]] = []
    monkeypatch.setattr("waflow.tasks.dispatch", lambda name, args=(), **kw: sent.append((name, tuple(args))))
    return sent


def test_the_sweep_finds_every_kind_of_lost_publish_and_queues_it_again_once(db_url, published):
    lost_request = client_writes(db_url, "wamid.LOST1")  # its drafting task was never published
    stuck = client_writes(db_url, "wamid.LOST2", wa_id="6281300002222")
    with transaction(db_url) as conn:
        claiming.claim(conn, stuck.request_id, "t-dead", lease=drafter.lease(), now=later())
    unannounced = draft(db_url, client_writes(db_url, "wamid.LOST3", wa_id="6281300003333")).announce
    ready = draft(db_url, client_writes(db_url, "wamid.LOST4", wa_id="6281300004444")).announce
    from drafts_support import lawyer
    lawyer(db_url)
    with transaction(db_url) as conn:
        approval = approve(conn, ready, "ratna@firma.id").approval_id  # its publish lost too
    with transaction(db_url) as conn:
        assert not sweep.find_lost(conn, lease=drafter.lease())  # nothing is late yet
        lost = sweep.find_lost(conn, lease=drafter.lease(), now=later(120))
    assert lost.requests == [lost_request.request_id, stuck.request_id]
    assert lost.announce == [unannounced]
    assert lost.approvals == [approval]

    timer = sweep.Timer(drafter.lease(), database_url=db_url)
    timer.sweep()  # now: nothing is late yet
    assert published == []
    timer.sweep(now=later(120))
    timer.sweep(now=later(130))  # again soon after: nothing is published twice
    assert sorted(published) == sorted([
        (publish.DRAFT_TASK, (lost_request.request_id,)), (publish.DRAFT_TASK, (stuck.request_id,)),
        (publish.CREATED_TASK, (unannounced,)), (publish.APPROVED_TASK, (approval,))])


def test_a_sweep_that_fails_tries_again_at_the_next_tick(caplog):
    timer = sweep.Timer(drafter.lease(), interval=0.05, database_url="postgresql+psycopg2://nobody@127.0.0.1:1/none")
    timer.start()
    try:
        import time
        time.sleep(0.5)
    finally:
        timer.stop()
    assert "draft sweep failed (OperationalError)" in caplog.text
