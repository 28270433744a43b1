"""Draft review: the draft panel of a conversation page and what a lawyer does in it.

Approve as drafted, edit then approve, reject with a reason, write a reply by hand, ask for a new draft, and
outside Meta's 24-hour window approve an approved template instead: each through the plain function the CLI
calls (``waflow.drafts.decisions``, ``via="dashboard"``), in one transaction that also gives the lawyer the
conversation (``claims.take``: acting takes it), then published after the commit (``publish``). A refusal
changes nothing and is said in words: the client wrote again (the new messages show, the lawyer's words are
kept to send by hand), someone decided first (who, what, when), the window closed (the templates are offered).

Every action answers the draft panel (``_draft.html``) to an htmx request, and the whole conversation page to a
plain form post (a browser without scripts).
"""
from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any, Callable

from flask import Blueprint, Response, abort, current_app, flash, redirect, render_template, request, url_for
from flask_babel import gettext
from flask_login import current_user

from waflow.dashboard import claims, thread, words
from waflow.dashboard.panel import panel, refusal_words
from waflow.drafts import decisions, publish, queries as drafts
from waflow.drafts.errors import REFUSALS
from waflow.web import request_connection

logger = logging.getLogger(__name__)

bp = Blueprint("review", __name__, url_prefix="/dashboard")
MAX_TEXT = 4096  # Meta's limit for a text message


def _conversation(conn: Any, conversation_id: int) -> Any:
    found = thread.header(conn, conversation_id)
    if found is None:
        abort(404)
    return found


def _answer(conversation_id: int, refusal: str | None = None, notice: str | None = None,
            kept_text: str | None = None) -> Response:
    """The panel (htmx), or back to the page (a plain post: what happened rides in the session's flashes)."""
    if not request.headers.get("HX-Request"):
        if refusal or notice:
            flash(refusal or notice or "", "refusal" if refusal else "notice")
        return redirect(url_for("conversations.show", conversation_id=conversation_id), 303)
    conn = request_connection()
    with conn.begin():
        shown = panel(conn, _conversation(conn, conversation_id), refusal=refusal, notice=notice,
                      kept_text=kept_text)
    response = current_app.make_response(render_template("dashboard/_draft.html", panel=shown))
    response.headers["HX-Trigger"] = "waflow:messages"  # the page shows the messages as they stand now
    return response


def _decide(conversation_id: int, act: Callable[[Any], Any], kept_text: str | None = None,
            done: str | None = None) -> Response:
    """Run a decision and take the conversation, in one transaction; publish after the commit."""
    conn = request_connection()
    now = datetime.now(timezone.utc)
    try:
        with conn.begin():
            _conversation(conn, conversation_id)
            result = act(conn)
            claims.take(conn, conversation_id, current_user.id, now)
    except REFUSALS as exc:
        logger.info("dashboard: user %s refused on conversation %s (%s)", current_user.id, conversation_id,
                    getattr(exc, "code", type(exc).__name__))
        with conn.begin():
            said = refusal_words(conn, exc)
        return _answer(conversation_id, refusal=said, kept_text=kept_text)
    if isinstance(result, decisions.Approved):
        publish.approved(result.approval_id)
    elif result is not None and hasattr(result, "request_id"):
        publish.request(result)
    return _answer(conversation_id, notice=done)


def _text() -> str | None:
    text = request.form.get("text")
    return text.replace("\r\n", "\n")[:MAX_TEXT + 1] if text is not None else None


def _draft_conversation(draft_id: int) -> int:
    conn = request_connection()
    with conn.begin():
        shown = drafts.show_draft(conn, draft_id)
    if shown is None:
        abort(404)
    return int(shown["conversation_id"])


@bp.route("/drafts/<int:draft_id>/approve", methods=["POST"])
def approve(draft_id: int) -> Response:
    conversation_id = _draft_conversation(draft_id)
    text = _text()
    return _decide(conversation_id, lambda conn: decisions.approve(
        conn, draft_id, current_user.person, "dashboard", text=text if text and text.strip() else None),
        kept_text=text, done=gettext("Approved: the reply is on its way."))


@bp.route("/drafts/<int:draft_id>/template", methods=["POST"])
def template(draft_id: int) -> Response:
    conversation_id = _draft_conversation(draft_id)
    name, _, language = request.form.get("template", "").partition("|")
    params = [line.strip() for line in request.form.get("params", "").splitlines() if line.strip()]
    if not name.strip():
        return _answer(conversation_id, refusal=gettext("Choose a template first."))
    return _decide(conversation_id, lambda conn: decisions.approve(
        conn, draft_id, current_user.person, "dashboard", template=name.strip(), params=params,
        language=language.strip() or None), done=gettext("Approved: the template is on its way."))


@bp.route("/drafts/<int:draft_id>/reject", methods=["POST"])
def reject(draft_id: int) -> Response:
    conversation_id = _draft_conversation(draft_id)
    reason = request.form.get("reason", "")
    note = (request.form.get("note") or "").strip()[:1000] or None
    if reason not in words.REJECT_REASONS:
        return _answer(conversation_id, refusal=gettext("Choose why the draft is wrong."))
    if reason == "other" and not note:
        return _answer(conversation_id, refusal=gettext("Say in a few words why the draft is wrong."))
    return _decide(conversation_id, lambda conn: decisions.reject(
        conn, draft_id, current_user.person, "dashboard", reason=reason, note=note),
        done=gettext("Rejected. Write the reply by hand, or ask for a new draft."))


@bp.route("/conversations/<int:conversation_id>/reply", methods=["POST"])
def reply(conversation_id: int) -> Response:
    text = _text()
    if not text or not text.strip():
        return _answer(conversation_id, refusal=gettext("Write the reply first."))
    return _decide(conversation_id, lambda conn: decisions.write_by_hand(
        conn, conversation_id, current_user.person, "dashboard", text=text),
        kept_text=text, done=gettext("Sent: your reply is on its way."))


@bp.route("/conversations/<int:conversation_id>/redraft", methods=["POST"])
def redraft(conversation_id: int) -> Response:
    return _decide(conversation_id, lambda conn: decisions.redraft(conn, conversation_id, current_user.person),
                   done=gettext("A new draft is being written."))
