"""The draft pipeline as deployed (issue 17): a client's signed webhook, its draft, a lawyer's approval through
the CLI, the Meta simulator taking the send, and Meta's status webhooks turning the draft's message to read.

gunicorn and every Celery worker of the Procfile (the new ``drafter`` and ``announcer`` lines, ``core`` on both
its queues, a ``sender``) in subprocesses, with the Meta simulator posting its signed webhooks (the client's
message, then the statuses) to the stack's gateway. On RabbitMQ + PostgreSQL when their URLs are set, and on
the embedded default (SQLite, the filesystem broker) that ``bin/run`` uses.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa

from drafting_support import copy_sample
from support import ROOT, SimulatorProcess, Stack, prepared_stack, wait_for, wipe
from waflow.db import get_engine

BY = "ratna@firma.id"
PASSWORD = "correct horse battery staple"
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module", params=["embedded", "rabbitmq+postgresql"])
def deployed(request):
    stack = prepared_stack(request.param, "waflow-drafts-e2e-")
    var_dir = stack.var_dir
    stack.knowledge = copy_sample(Path(var_dir))
    stack.env.update(WAFLOW_KNOWLEDGE_DIR=str(stack.knowledge), DRAFT_QUIET_SECONDS="2",
                     SIMULATOR_WEBHOOK_URL=stack.url)
    meta = SimulatorProcess("--status-delay", "0.2", env=stack.env, log_dir=var_dir).start()
    stack.env["WHATSAPP_API_URL"] = meta.api_url
    stack.meta = meta
    try:
        stack.start()
        stack.start_worker("sender", "wa.outgoing.command,wa.outgoing.broadcast", "-P", "threads")
        stack.wait_ready("sender")
        yield stack
    finally:
        stack.stop()
        meta.stop()


@pytest.fixture
def live(deployed):
    wipe(deployed.settings.database_url)
    deployed.meta.control("POST", "reset")
    flask(deployed, "users", "create", BY, "--name", "Ratna", "--role", "lawyer", "--locale", "id", input=PASSWORD)
    return deployed


def flask(stack: Stack, *args: str, input: str | None = None, ok: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([str(BIN / "flask"), "--app", "wsgi", *args], cwd=ROOT, env=stack.env, input=input,
                          capture_output=True, text=True, timeout=120)
    if ok:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


def query(stack: Stack, sql: str, **params):
    with get_engine(stack.settings.database_url).connect() as conn:
        return conn.execute(sa.text(sql), params).all()


def waiting_for(stack: Stack, what: str, predicate, timeout: float = 60):
    try:
        return wait_for(predicate, timeout, interval=0.2, what=what)
    except AssertionError:
        print(stack.logs())
        raise


def client_says(stack: Stack, wa_id: str, text: str) -> str:
    """A client writes: the simulator signs the webhook and posts it to the stack's gateway."""
    answer = stack.meta.control("POST", "inbound", {"from": wa_id, "text": text, "name": "Siti Aminah"})
    assert answer["gateway_status"] == 200, answer
    return answer["wamid"]


def ready_draft_for(stack: Stack, wamid: str, timeout: float = 60):
    def found():
        rows = query(stack, "SELECT d.id, d.status, d.text, d.answers FROM drafts d "
                            "WHERE d.status IN ('ready', 'failed') ORDER BY d.id DESC")
        return next((r for r in rows if wamid in (r.answers if isinstance(r.answers, list)
                                                  else json.loads(r.answers))), None)
    return waiting_for(stack, f"a draft answering {wamid}", found, timeout)


def test_a_clients_message_is_drafted_approved_through_the_cli_sent_and_read(live):
    wamid = client_says(live, "6281277770001", "Selamat siang, berapa biaya konsultasi pertama dengan pengacara?")
    draft = ready_draft_for(live, wamid)
    assert draft.status == "ready" and draft.text
    waiting_for(live, "the draft in the change log", lambda: query(
        live, "SELECT id FROM changes WHERE kind = 'draft.ready' AND draft_id = :d", d=draft.id))

    approved = json.loads(flask(live, "drafts", "approve", str(draft.id), "--by", BY, "--json", "--wait", "30").stdout)
    assert approved["ok"] and approved["action"] == "approve" and "accepted" in approved["send"], approved
    [sent] = live.meta.sends(to="6281277770001")
    assert sent["body"]["text"]["body"] == draft.text

    def read():
        shown = json.loads(flask(live, "drafts", "show", str(draft.id), "--json").stdout)
        return shown if shown["send"] and shown["send"]["state"] == "read" else None

    shown = waiting_for(live, "Meta's status webhooks to reach read", read, 60)
    assert (shown["status"], shown["send"]["wamid"]) == ("approved", sent["wamid"])
    assert shown["decision"]["by"] == BY and shown["decision"]["via"] == "cli"
    assert json.loads(flask(live, "drafts", "audit", "--json").stdout) == []
    assert query(live, "SELECT id FROM dead_letters") == []


def test_three_lines_typed_in_a_row_get_one_draft_that_answers_them_all(live):
    wamids = [client_says(live, "6281277770002", line) for line in (
        "pak", "suami saya ditangkap polisi semalam", "besok sidang praperadilan, tolong")]
    draft = ready_draft_for(live, wamids[-1])
    answers = draft.answers if isinstance(draft.answers, list) else json.loads(draft.answers)
    assert answers == wamids
    time.sleep(3)  # longer than the quiet period: no second draft follows
    assert len(query(live, "SELECT id FROM drafts")) == 1
    assert "urgent" in json.loads(flask(live, "drafts", "show", str(draft.id), "--json").stdout)["flags"]


# Concurrent approvals: only PostgreSQL runs writers at the same time (SQLite serializes them).
@pytest.mark.parametrize("deployed", ["rabbitmq+postgresql"], indirect=True)
def test_two_lawyers_approving_one_draft_at_once_make_one_send_and_the_other_is_told_who(live):
    flask(live, "users", "create", "budi@firma.id", "--name", "Budi", "--role", "lawyer", "--locale", "id",
          input=PASSWORD)
    wamid = client_says(live, "6281277770003", "Saya mau buat surat wasiat, bisa dibantu?")
    draft = ready_draft_for(live, wamid)
    results: dict[str, subprocess.CompletedProcess] = {}
    start = threading.Barrier(2)

    def approve(email: str) -> None:
        start.wait()
        results[email] = flask(live, "drafts", "approve", str(draft.id), "--by", email, ok=False)

    threads = [threading.Thread(target=approve, args=(e,)) for e in (BY, "budi@firma.id")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    won = [e for e, r in results.items() if r.returncode == 0]
    lost = [r for r in results.values() if r.returncode != 0]
    assert len(won) == 1 and len(lost) == 1, {e: r.stdout + r.stderr for e, r in results.items()}
    assert f"already decided: {won[0]} chose approve" in lost[0].stderr
    waiting_for(live, "the send", lambda: live.meta.sends(to="6281277770003"), 30)
    time.sleep(2)
    assert len(live.meta.sends(to="6281277770003")) == 1


def test_a_draft_request_whose_publish_was_lost_is_drafted_by_the_sweep(live):
    wamid = client_says(live, "6281277770004", "Halo, mau tanya soal warisan")
    ready_draft_for(live, wamid)
    now = datetime.now(timezone.utc)
    with get_engine(live.settings.database_url).begin() as conn:  # a request committed, its task never published
        message_id, conversation_id = conn.execute(sa.text(
            "SELECT id, conversation_id FROM messages WHERE wamid = :w"), {"w": wamid}).one()
        conn.execute(sa.text("UPDATE drafts SET status = 'superseded', status_reason = 'client_wrote'"))
        request_id = conn.execute(sa.text(
            "INSERT INTO draft_requests (conversation_id, status, due_at, messages, origin, created_at, updated_at) "
            "VALUES (:c, 'waiting', :due, 1, 'client', :due, :due) RETURNING id"),
            {"c": conversation_id, "due": now - timedelta(seconds=20)}).scalar_one()
        conn.execute(sa.text("INSERT INTO draft_request_messages (request_id, message_id) VALUES (:r, :m)"),
                     {"r": request_id, "m": message_id})
    waiting_for(live, "the sweep to draft the lost request", lambda: query(
        live, "SELECT id FROM drafts WHERE request_id = :r AND status = 'ready'", r=request_id), 45)
    assert "publish was lost" in (live.log_dir / "drafter.log").read_text()


def test_the_drafter_reads_an_edited_knowledge_base_without_a_restart(live):
    marker = "Kode uji tarif: KUT-4471."
    entry = live.knowledge / "biaya.md"
    text = entry.read_text()
    entry.write_text(text.replace("Konsultasi pertama memiliki tarif tersendiri.",
                                  f"Konsultasi pertama memiliki tarif tersendiri. {marker}"))
    time.sleep(2.5)  # the knowledge base looks at its files every 2 s
    try:
        wamid = client_says(live, "6281277770005", "Berapa biaya pengacara untuk menangani perkara saya?")
        assert marker in ready_draft_for(live, wamid).text
    finally:
        entry.write_text(text)


def test_a_drafter_line_with_a_chat_model_but_no_proper_key_refuses_to_start(tmp_path):
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("WAFLOW_TEST_", "DRAFT", "WHATSAPP"))},
           "WAFLOW_ENV": "production", "WHATSAPP_APP_SECRET": "a" * 32, "WHATSAPP_VERIFY_TOKEN": "b" * 32,
           "WHATSAPP_ACCESS_TOKEN": "c" * 32, "WHATSAPP_PHONE_NUMBER_ID": "1122334455",
           "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none", "CELERY_BROKER_URL": "amqp://nobody@127.0.0.1:1//",
           "DRAFTER": "chat", "DRAFT_LLM_URL": "https://llm.example", "DRAFT_LLM_MODEL": "m",
           "DRAFT_LLM_SEND_CLIENT_TEXT": "true", "DRAFT_LLM_API_KEY": "short", "WAFLOW_VAR_DIR": str(tmp_path),
           "WAFLOW_MEDIA_DIR_SHARED": "true"}
    done = subprocess.run([str(BIN / "celery"), "-A", "waflow", "worker", "-Q", "wa.ai.draft.requested", "-n",
                           "drafter@%h", "-P", "threads", "-c", "2"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 78, done.stdout + done.stderr
    assert "DRAFT_LLM_API_KEY must be at least 16 characters long, which drafter refuses in production" in done.stderr
    assert "short" not in done.stderr
