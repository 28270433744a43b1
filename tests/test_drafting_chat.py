"""The chat-completions drafter against a local server that speaks the API: answers, failures, fallbacks."""
from __future__ import annotations

import logging
import socket
import time

import pytest

from drafting_support import ask, media
from fake_chat_server import FakeChatServer, Reply, completion
from waflow import config
from waflow.drafting import make_drafter
from waflow.drafting.chat import ChatDrafter
from waflow.drafting.knowledge import KnowledgeBase, SAMPLE_DIR
from waflow.drafting.offline import OfflineDrafter
from waflow.drafting.prompt import MAX_HISTORY_CHARS, MAX_HISTORY_LINES, PROMPT_VERSION, conversation
from waflow.drafting.types import HistoryLine

KEY = "sk-test-0123456789abcdef"


@pytest.fixture(scope="module")
def offline() -> OfflineDrafter:
    return OfflineDrafter(KnowledgeBase(SAMPLE_DIR))


@pytest.fixture
def server():
    with FakeChatServer() as fake:
        yield fake


def chat(offline: OfflineDrafter, server: FakeChatServer, timeout: float = 5.0) -> ChatDrafter:
    # A short backoff keeps the retry tests quick; the policy (how many, on what) is the production one.
    return ChatDrafter(offline, url=server.url, model="fake-model", api_key=KEY, timeout=timeout, backoff=0.01)


def test_it_drafts_with_the_model_and_records_how(offline, server):
    server.then(Reply(body=completion("Untuk perceraian, ajukan gugatan ke Pengadilan Agama.")))
    draft = chat(offline, server).draft(ask("sy mau gugat cerai suami gmn caranya"))
    assert (draft.drafter, draft.model, draft.prompt_version) == ("chat", "fake-model", PROMPT_VERSION)
    assert "Untuk perceraian, ajukan gugatan ke Pengadilan Agama." in draft.text
    assert (draft.prompt_tokens, draft.completion_tokens, draft.finish_reason) == (321, 45, "stop")
    assert draft.language == "id" and "fallback" not in draft.flags and draft.fallback_reason is None
    assert draft.sources[0].entry_id == "cerai-prosedur"


def test_it_sends_the_versioned_prompt_the_retrieved_entries_and_the_conversation(offline, server):
    history = (("client", "selamat pagi"), ("firm", "Selamat pagi, ada yang bisa dibantu?"))
    chat(offline, server).draft(ask("sy mau gugat cerai suami gmn caranya", history=history))
    request = server.received[0]
    assert request.path == "/v1/chat/completions"
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    body = request.body
    assert body["model"] == "fake-model" and body["stream"] is False and body["max_tokens"] > 0
    system = body["messages"][0]
    assert system["role"] == "system" and "A lawyer reads, edits and approves" in system["content"]
    assert "[cerai-prosedur]" in system["content"] and "Indonesian" in system["content"]
    assert [m["role"] for m in body["messages"][1:]] == ["user", "assistant", "user"]
    assert body["messages"][-1]["content"] == "sy mau gugat cerai suami gmn caranya"


def test_it_tells_the_model_about_an_attachment_and_urgency(offline, server):
    chat(offline, server).draft(ask(media("image", "ini surat panggilan dr polres utk besok")))
    body = server.received[0].body
    assert body["messages"][-1]["content"].startswith("[the client sent a image]")
    assert "This is urgent" in body["messages"][0]["content"]


def test_it_opens_a_first_contact_with_the_firms_acknowledgement_before_the_models_reply(offline, server):
    server.then(Reply(body=completion("Hello, we can help with your contract.")))
    draft = chat(offline, server).draft(ask("Hello, can you review my contract?", first_contact=True))
    assert draft.text.startswith("Thank you for contacting Kantor Hukum Wirawan Sinaga & Rekan.")
    assert draft.text.index("not legal advice") < draft.text.index("Hello, we can help with your contract.")
    assert "first_contact" in draft.flags


def test_it_marks_a_reply_cut_at_the_length_limit_incomplete(offline, server):
    server.then(Reply(body=completion("Untuk perceraian, langkah pertama adalah", finish_reason="length")))
    draft = chat(offline, server).draft(ask("gmn cara cerai"))
    assert draft.drafter == "chat" and draft.finish_reason == "length" and "incomplete" in draft.flags


def test_it_takes_a_slow_answer_that_comes_within_the_timeout(offline, server):
    server.then(Reply(delay=0.4))
    draft = chat(offline, server, timeout=3.0).draft(ask("gmn cara cerai"))
    assert draft.drafter == "chat" and draft.latency_ms >= 400 and len(server.received) == 1


def test_it_retries_a_server_error_and_uses_the_answer_that_follows(offline, server):
    server.then(Reply(status=503), Reply(status=502), Reply(body=completion("Baik.")))
    draft = chat(offline, server).draft(ask("gmn cara cerai"))
    assert draft.drafter == "chat" and len(server.received) == 3


@pytest.mark.parametrize("replies, reason, requests", [
    ([Reply(status=500)] * 3, "http_500: the model server failed (3 attempts)", 3),
    ([Reply(status=429, headers={"Retry-After": "0"})] * 3,
     "http_429: the model server is rate limiting (3 attempts)", 3),
    ([Reply(status=401, body={"error": {"message": "bad key"}})], "http_401: the model server refused the API key", 1),
    ([Reply(status=400)], "http_400: the model server rejected the request", 1),
    ([Reply(body=b"<html>gateway</html>")], "malformed: the answer is not JSON", 1),
    ([Reply(body={"choices": []})], "malformed: the answer has no choices[0].message.content", 1),
    ([Reply(body={"choices": [{"message": {"content": None}}]})], "malformed: the answer's content is not text", 1),
    ([Reply(body=completion("   "))], "empty: the model returned no text", 1),
])
def test_every_failure_falls_back_to_the_offline_draft_with_its_reason(offline, server, replies, reason, requests):
    server.then(*replies)
    draft = chat(offline, server).draft(ask("gmn cara cerai", first_contact=True))
    expected = offline.draft(ask("gmn cara cerai", first_contact=True))
    assert draft.drafter == "offline" and draft.model is None and draft.prompt_version is None
    assert draft.fallback_reason == reason
    assert draft.flags == ("first_contact", "fallback")
    assert draft.text == expected.text
    assert len(server.received) == requests


def test_it_falls_back_when_the_model_does_not_answer_within_the_timeout(offline, server):
    server.then(Reply(delay=2.0), Reply(delay=2.0), Reply(delay=2.0))
    started = time.monotonic()
    draft = chat(offline, server, timeout=1.0).draft(ask("gmn cara cerai"))
    assert draft.fallback_reason == "timeout: no answer within 1 s"
    assert "fallback" in draft.flags and draft.drafter == "offline"
    assert time.monotonic() - started < 1.9  # no retry starts once the timeout has passed


def test_it_falls_back_when_the_model_server_cannot_be_reached(offline):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    drafter = ChatDrafter(offline, url=f"http://127.0.0.1:{port}/v1", model="m", api_key=KEY, timeout=2, backoff=0.01)
    draft = drafter.draft(ask("gmn cara cerai"))
    assert draft.fallback_reason == "connection: the model server could not be reached (3 attempts)"


def test_it_never_logs_the_prompt_or_the_answer(offline, server, caplog):
    server.then(Reply(body=completion("JAWABAN-MODEL-RAHASIA")), Reply(status=500, body={"error": "echo Siti"}),
                Reply(status=500), Reply(status=500))
    with caplog.at_level(logging.DEBUG):
        chat(offline, server).draft(ask("Rahasia: Siti Aminah ditangkap", name="Siti Aminah"))
        fallback = chat(offline, server).draft(ask("Rahasia: Siti Aminah ditangkap", name="Siti Aminah"))
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "drafter=chat" in logged and "http_500" in logged
    for word in ("Rahasia", "Siti", "Aminah", "JAWABAN-MODEL-RAHASIA", "A lawyer reads"):
        assert word not in logged
    assert "Siti" not in fallback.fallback_reason


def test_it_bounds_the_conversation_it_sends():
    long_history = tuple(HistoryLine("client" if i % 2 else "firm", f"pesan {i} " + "x" * 900, None)
                         for i in range(40))
    turns = conversation(long_history, ask("yang terakhir").messages)
    history = turns[:-1]
    assert len(history) <= MAX_HISTORY_LINES
    assert sum(len(turn["content"]) for turn in history) <= MAX_HISTORY_CHARS
    assert history[-1]["content"].startswith("pesan 39") and turns[-1]["content"] == "yang terakhir"


def test_make_drafter_builds_the_configured_drafter(server):
    offline_settings = config.load({})
    assert make_drafter(offline_settings).name == "offline"
    chat_settings = config.load({"DRAFTER": "chat", "DRAFT_LLM_URL": server.url, "DRAFT_LLM_MODEL": "fake-model"})
    drafter = make_drafter(chat_settings)
    assert isinstance(drafter, ChatDrafter) and drafter.endpoint == server.url + "/chat/completions"
    assert drafter.draft(ask("gmn cara cerai")).drafter == "chat"
