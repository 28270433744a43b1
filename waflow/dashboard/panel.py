"""The draft panel of a conversation page: the open draft with its flags and sources, or what became of the
last one, the 24-hour window, the approved templates when it has closed, and refusals in words.

Used by the conversation page (``conversations``) and by the draft review's actions (``review``), which answer
an htmx request with the panel alone.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from flask import current_app
from flask_babel import get_locale, gettext
from flask_login import current_user

from waflow import users
from waflow.dashboard import thread, words
from waflow.dashboard.formatting import when
from waflow.drafts import queries as drafts
from waflow.drafts.errors import AlreadyDecided, InvalidDecision, NotReady, NothingToDraft, OutsideWindow, Stale


@dataclass
class Panel:
    """What the draft panel shows."""

    conversation_id: int
    draft: dict[str, Any] | None  # the open draft (pending, ready, failed)
    last: dict[str, Any] | None  # else the newest decided or superseded one
    window_left: Any
    sources: list[Any] = field(default_factory=list)
    templates: list[Any] | None = None
    refusal: str | None = None
    notice: str | None = None
    kept_text: str | None = None  # the lawyer's own words, kept after a refusal
    last_words: str | None = None  # who did what with the last draft, in words


def panel(conn: Any, conversation: Any, *, refusal: str | None = None, notice: str | None = None,
          kept_text: str | None = None, was: int | None = None) -> Panel:
    """The panel for the conversation as it stands. ``was``: the draft the lawyer's page showed; when it is no
    longer the open one, the panel says what became of it."""
    newest = drafts.list_drafts(conn, conversation_id=conversation.id, limit=1)
    draft = newest[0] if newest and newest[0]["status"] in ("pending", "ready", "failed") else None
    found = Panel(conversation.id, draft, None if draft else (newest[0] if newest else None),
                  thread.window_left(conversation.last_inbound_at), refusal=refusal, notice=notice,
                  kept_text=kept_text)
    reference = current_app.extensions["waflow.reference"]
    if draft is not None:
        found.sources = reference.sources(draft["sources"], str(get_locale() or "id"))
    if found.window_left is None:
        found.templates = reference.templates()
    if found.last is not None and found.last["decision"]:
        decision = found.last["decision"]
        found.last_words = decided_by(conn, decision.get("by"), decision.get("action"), decision.get("at"))
    if was is not None and (draft is None or draft["id"] != was) and found.notice is None:
        found.notice = became_of(conn, was)
    return found


def became_of(conn: Any, draft_id: int) -> str | None:
    """What became of a draft the lawyer was looking at, in words (None: nothing to say)."""
    shown = drafts.show_draft(conn, draft_id)
    if shown is None or shown["status"] in ("pending", "ready", "failed"):
        return None
    if shown["status"] == "superseded":
        return str(words.STALE.get(shown["status_reason"] or "", words.STALE["client_wrote"]))
    decision = shown["decision"] or {}
    return decided_by(conn, decision.get("by"), decision.get("action"), decision.get("at"))


def decided_by(conn: Any, email: str | None, action: str | None, at: Any) -> str:
    """"Budi approved it as drafted at 14:03." (you, if it was the lawyer reading it)."""
    person = users.find(conn, email) if email else None
    if isinstance(at, str):
        at = datetime.fromisoformat(at)
    what = str(words.ACTIONS.get(action or "", gettext("decided on it")))
    if person is not None and person.id == current_user.id:
        return gettext("You %(what)s at %(time)s.", what=what, time=when(at)) if at else \
            gettext("You %(what)s.", what=what)
    name = person.name if person else gettext("Someone")
    return gettext("%(name)s %(what)s at %(time)s.", name=name, what=what, time=when(at)) if at else \
        gettext("%(name)s %(what)s.", name=name, what=what)


def refusal_words(conn: Any, exc: Exception) -> str:
    """A refusal of ``decisions`` as the lawyer reads it (never a client's words)."""
    if isinstance(exc, Stale):
        return str(words.STALE.get(exc.reason, words.STALE["client_wrote"]))
    if isinstance(exc, AlreadyDecided):
        return gettext("Someone decided first: %(what)s", what=decided_by(conn, exc.by, exc.action, exc.at))
    if isinstance(exc, OutsideWindow):
        return gettext("More than 24 hours have passed since the client last wrote: WhatsApp takes only an "
                       "approved template now. Choose one below.")
    if isinstance(exc, NotReady):
        return gettext("There are no words to approve yet: write them, or wait for the draft.")
    if isinstance(exc, NothingToDraft):
        return gettext("Every message of the client has been answered: there is nothing to draft.")
    if isinstance(exc, InvalidDecision):
        return gettext("WhatsApp would refuse this reply: check its length and its values.")
    return gettext("You cannot decide on drafts with this account.")
