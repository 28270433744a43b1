"""Webhook bodies as an attacker (or a broken client) sends them, for the ingestor's tests (issue 15).

Every text a client could have written carries ``MARKER``, so a test can check that none of it
reaches a log line or a dead-letter message.
"""
from __future__ import annotations

import random
import string
from typing import Any

# A client's words, as distinctive as a test needs them to be.
MARKER = "Zq7MARKERkx9"
SENDER = "15550001111"


def envelope(messages: list[Any] | None = None, statuses: list[Any] | None = None, **value: Any) -> dict[str, Any]:
    """A messages webhook holding the given messages and statuses, with one sender's card."""
    body = {"messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550009999", "phone_number_id": "1122334455"},
            "contacts": [{"profile": {"name": f"{MARKER} name"}, "wa_id": SENDER}], **value}
    if messages is not None:
        body["messages"] = messages
    if statuses is not None:
        body["statuses"] = statuses
    return {"object": "whatsapp_business_account",
            "entry": [{"id": "100200300", "time": 1764000000, "changes": [{"field": "messages", "value": body}]}]}


def text(wamid: str | None, words: str = "hello", **extra: Any) -> dict[str, Any]:
    message = {"from": SENDER, "timestamp": "1764000000", "type": "text", "text": {"body": f"{MARKER} {words}"},
               **extra}
    if wamid is not None:
        message["id"] = wamid
    return message


def nested(depth: int, leaf: Any = MARKER) -> Any:
    value = leaf
    for _ in range(depth):
        value = {MARKER: value}
    return value


def deep_message(wamid: str, depth: int = 600) -> dict[str, Any]:
    """A message with a field nested ``depth`` levels deep."""
    return text(wamid, referral=nested(depth))


def nested_edit(wamid: str, depth: int = 350) -> dict[str, Any]:
    """An edit of an edit of ... ``depth`` times, around a text."""
    inner: dict[str, Any] = {"type": "text", "text": {"body": MARKER}}
    for _ in range(depth):
        inner = {"type": "edit", "edit": {"original_message_id": "wamid.ORIGINAL", "message": inner}}
    return {"from": SENDER, "id": wamid, "timestamp": "1764000000", **inner}


def bracket_flow(wamid: str) -> dict[str, Any]:
    """An nfm_reply whose response_json is 100,000 opening brackets (a RecursionError in json.loads)."""
    return {"from": SENDER, "id": wamid, "timestamp": "1764000000", "type": "interactive",
            "interactive": {"type": "nfm_reply", "nfm_reply": {"body": f"{MARKER} sent", "name": "flow",
                                                                "response_json": "[" * 100_000}}}


def random_id(length: int = 6000) -> str:
    return "".join(random.choices(string.ascii_letters + string.digits, k=length))


def idless_batch(n: int = 299, good: list[str] = ()) -> dict[str, Any]:
    """``n`` text messages without an id (about 200 bytes each: 299 make a body of about 60 KB, the one
    the issue measured), then one good message per wamid in ``good``."""
    words = "please call me back about my contract " * 3
    return envelope([text(None, f"{words}{i}") for i in range(n)] + [text(w) for w in good])
