"""Builders shared by the drafting tests: messages, requests, and a knowledge folder of one's own."""
from __future__ import annotations

import shutil
from datetime import datetime, timezone
from pathlib import Path

from waflow.drafting.knowledge import SAMPLE_DIR
from waflow.drafting.types import ClientMessage, DraftInput, HistoryLine

AT = datetime(2026, 12, 7, 9, 30, tzinfo=timezone.utc)


def text(body: str, wamid: str = "wamid.test") -> ClientMessage:
    return ClientMessage(wamid=wamid, type="text", text=body, sent_at=AT)


def media(kind: str, caption: str | None = None) -> ClientMessage:
    return ClientMessage(wamid=f"wamid.{kind}", type=kind, text=caption, sent_at=AT, media_kind=kind)


def ask(*bodies: str | ClientMessage, history: tuple[tuple[str, str], ...] = (), name: str | None = None,
        first_contact: bool = False) -> DraftInput:
    messages = tuple(b if isinstance(b, ClientMessage) else text(b, f"wamid.{i}") for i, b in enumerate(bodies))
    lines = tuple(HistoryLine(role, said, AT) for role, said in history)
    return DraftInput(conversation_id=7, messages=messages, history=lines, contact_name=name,
                      first_contact=first_contact)


def copy_sample(target: Path) -> Path:
    """A copy of the shipped knowledge base that a test may edit."""
    folder = target / "knowledge"
    shutil.copytree(SAMPLE_DIR, folder)
    return folder
