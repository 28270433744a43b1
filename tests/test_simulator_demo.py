"""The simulator's demo traffic (issue 19, item 9): made-up clients writing as the firm's do, mostly chat
Indonesian, each following a script of their own, so a fresh ``bin/run``'s inbox reads like the firm's."""
from __future__ import annotations

import random

from waflow.drafting.signals import detect_language, is_urgent
from waflow.drafting.text import words
from waflow.simulator import demo


def test_each_client_writes_their_own_lines_in_order_then_again():
    traffic = demo.DemoTraffic(60, lambda doc: None)
    random.seed(7)
    seen: dict[str, list[str]] = {}
    for _ in range(200):
        doc = traffic.next_message()
        assert doc["type"] == "text" and doc["text"] and doc["name"]
        seen.setdefault(doc["from"], []).append(doc["text"])
    for wa_id, _, lines in demo.CLIENTS:
        written = seen[wa_id]
        assert written == [lines[i % len(lines)] for i in range(len(written))]


def test_most_clients_write_chat_indonesian_and_some_urgently():
    lines = [line for _, _, script in demo.CLIENTS for line in script]
    indonesian = [line for line in lines if detect_language(words(line), [], {}) == "id"]
    assert len(indonesian) >= 0.75 * len(lines)
    assert {"sy", "yg", "sdh", "blm"} <= set(" ".join(lines).lower().split())  # as they type, abbreviated...
    assert "saya" in words(" ".join(lines))  # ...which the drafting library reads in full
    assert sum(is_urgent(words(line)) for line in lines) >= 2
    assert all(wa_id.isdigit() for wa_id, _, _ in demo.CLIENTS)
