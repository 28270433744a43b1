"""``/dashboard/conversations/<id>``: one client's conversation, and its fragments that refresh themselves.

The page: who the client is, who has the conversation and who else has it open, the 24-hour window, the
messages (a page at a time, newest first: ``?before=<message id>`` for older ones) with their files and our
replies' ticks, and the draft panel (``panel``, acted on through ``review``). Opening it marks the client's
messages read for this lawyer and says they are viewing it; it never takes the conversation (acting does:
``take``, sent by the page's script when the lawyer starts to edit or to write).

Fragments, fetched by ``static/conversation.js`` when the change log names this conversation: ``messages``
(the newest page), ``draft`` (the panel; ``?was=<draft id>`` says what became of the draft the page showed),
``people`` (the window, the wait, the holder and who else has it open). ``presence`` is the page's heartbeat
(viewing or editing), ``take`` and ``release`` give and let go the conversation.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from flask import Blueprint, Response, abort, get_flashed_messages, render_template, request
from flask_login import current_user

from waflow import changelog
from waflow.dashboard import claims, thread
from waflow.dashboard.panel import panel
from waflow.web import request_connection

bp = Blueprint("conversations", __name__, url_prefix="/dashboard/conversations")


def _conversation(conn: Any, conversation_id: int) -> Any:
    found = thread.header(conn, conversation_id)
    if found is None:
        abort(404)
    return found


def _messages(conn: Any, conversation: Any, before: int | None, now: datetime) -> tuple[thread.Page, list[Any]]:
    page = thread.messages(conn, conversation.id, before)
    pending: list[Any] = []
    if page.newest:
        first = page.messages[0]["sent_at"] if page.messages and page.older else None
        pending = thread.pending(conn, conversation, since=first)
        claims.mark_read(conn, conversation.id, current_user.id, now)
    return page, pending


def _people(conn: Any, conversation_id: int, now: datetime) -> dict[str, Any]:
    return {"holder": claims.holder(conn, conversation_id, now),
            "present": claims.present(conn, conversation_id, now, besides=current_user.id)}


@bp.route("/<int:conversation_id>")
def show(conversation_id: int) -> str:
    before = request.args.get("before", type=int)
    now = datetime.now(timezone.utc)
    flashed = dict((kind, text) for kind, text in get_flashed_messages(with_categories=True))
    conn = request_connection()
    with conn.begin():
        cursor = changelog.latest(conn)  # before reading: a change made meanwhile is fetched again, not lost
        conversation = _conversation(conn, conversation_id)
        page, pending = _messages(conn, conversation, before, now)
        shown = panel(conn, conversation, refusal=flashed.get("refusal"), notice=flashed.get("notice"))
        people = _people(conn, conversation_id, now)
        claims.touch(conn, conversation_id, current_user.id, "viewing", now)
    return render_template("dashboard/conversation.html", conversation=conversation, page=page, pending=pending,
                           panel=shown, now=now, cursor=cursor, heartbeat=claims.HEARTBEAT_SECONDS,
                           window_left=thread.window_left(conversation.last_inbound_at, now), **people)


@bp.route("/<int:conversation_id>/messages")
def messages(conversation_id: int) -> str:
    now = datetime.now(timezone.utc)
    conn = request_connection()
    with conn.begin():
        conversation = _conversation(conn, conversation_id)
        page, pending = _messages(conn, conversation, None, now)
    return render_template("dashboard/_messages.html", conversation=conversation, page=page, pending=pending,
                           now=now, window_left=thread.window_left(conversation.last_inbound_at, now))


@bp.route("/<int:conversation_id>/draft", methods=["GET", "POST"])
def draft(conversation_id: int) -> str:
    """The panel; a POST carries the words the lawyer was editing (``text``), kept in it to send by hand (a
    POST: the words never ride in a URL, which logs keep)."""
    was = request.values.get("was", type=int)
    kept = (request.form.get("text") or "").replace("\r\n", "\n")[:4096] or None
    conn = request_connection()
    with conn.begin():
        shown = panel(conn, _conversation(conn, conversation_id), was=was, kept_text=kept)
    return render_template("dashboard/_draft.html", panel=shown)


def _people_fragment(conversation_id: int, change: str | None = None) -> str:
    now = datetime.now(timezone.utc)
    conn = request_connection()
    with conn.begin():
        conversation = _conversation(conn, conversation_id)
        if change == "take":
            claims.take(conn, conversation_id, current_user.id, now)
            claims.touch(conn, conversation_id, current_user.id, "editing", now)
        elif change == "release":
            claims.release(conn, conversation_id, current_user.id)
            claims.touch(conn, conversation_id, current_user.id, "viewing", now)
        people = _people(conn, conversation_id, now)
    return render_template("dashboard/_people.html", conversation=conversation, now=now,
                           window_left=thread.window_left(conversation.last_inbound_at, now), **people)


@bp.route("/<int:conversation_id>/people")
def people(conversation_id: int) -> str:
    return _people_fragment(conversation_id)


@bp.route("/<int:conversation_id>/take", methods=["POST"])
def take(conversation_id: int) -> str:
    return _people_fragment(conversation_id, "take")


@bp.route("/<int:conversation_id>/release", methods=["POST"])
def release(conversation_id: int) -> str:
    return _people_fragment(conversation_id, "release")


@bp.route("/<int:conversation_id>/presence", methods=["POST"])
def presence(conversation_id: int) -> Response:
    state = request.form.get("state", "viewing")
    if state not in ("viewing", "editing"):
        abort(400)
    conn = request_connection()
    with conn.begin():
        _conversation(conn, conversation_id)
        claims.touch(conn, conversation_id, current_user.id, state)
    return Response(status=204)
