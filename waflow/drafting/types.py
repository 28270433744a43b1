"""What a drafter takes and what it gives back: plain frozen values, so the pipeline can store and queue them.

The pipeline (the ``drafter`` stage) builds a ``DraftInput`` from the database, calls ``Drafter.draft`` and
stores the ``Draft``. Nothing here touches the database, the broker or the network.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

LANGUAGES = ("id", "en")
# Every flag a draft can carry; the dashboard shows them to the lawyer beside the draft.
FLAGS = ("urgent", "low_confidence", "first_contact", "has_media", "incomplete", "fallback")


@dataclass(frozen=True)
class ClientMessage:
    """One client message this draft answers."""

    wamid: str
    type: str  # text, interactive, button, image, document, audio, video, sticker, ...
    text: str | None  # the text, caption, or the title of an interactive/button reply
    sent_at: datetime
    media_kind: str | None = None  # image/document/... when it carries an attachment


@dataclass(frozen=True)
class HistoryLine:
    """A line of the recent conversation, oldest first; the caller bounds how many."""

    role: str  # "client" | "firm"
    text: str
    at: datetime


@dataclass(frozen=True)
class DraftInput:
    conversation_id: int
    messages: tuple[ClientMessage, ...]  # the unanswered client messages, oldest first
    history: tuple[HistoryLine, ...] = ()
    contact_name: str | None = None
    first_contact: bool = False  # no reply from the firm ever reached this client


@dataclass(frozen=True)
class Source:
    """A knowledge-base entry the draft used, with its retrieval score."""

    entry_id: str
    score: float


@dataclass(frozen=True)
class Draft:
    text: str
    language: str  # "id" | "en"
    flags: tuple[str, ...]  # a subset of FLAGS, in FLAGS' order
    confidence: float  # 0..1
    sources: tuple[Source, ...]
    drafter: str  # "offline" | "chat": the drafter whose text this is
    model: str | None
    prompt_version: str | None
    latency_ms: int
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None
    # Why the chat drafter fell back to the offline one: a reason code and a short text, never client text.
    fallback_reason: str | None = None


class Drafter(Protocol):
    name: str

    def draft(self, request: DraftInput) -> Draft: ...


def ordered_flags(flags: set[str]) -> tuple[str, ...]:
    """The flags in ``FLAGS``' order, so equal drafts compare and store equal."""
    unknown = flags.difference(FLAGS)
    if unknown:
        raise ValueError(f"unknown draft flags: {sorted(unknown)}")
    return tuple(flag for flag in FLAGS if flag in flags)
