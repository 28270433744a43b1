"""``/dashboard/audit``: every decision on a client's reply (admins see everyone's, a lawyer their own), its
CSV export (``/dashboard/audit.csv``) and the weekly report (``/dashboard/audit/report``).

Each view reads its filters from the query string, calls the plain functions of ``waflow.drafts.history``
and ``waflow.drafts.report``, and renders. Who is seen is decided here, once, for all three: a lawyer's
``user_id`` is their own whatever the URL says; only admins choose a lawyer. A filter that cannot be read
(a date that is no date, an unknown action) answers 400 with the form and what was wrong, never a guess.
Dates and weeks are the firm's (``WAFLOW_TIMEZONE``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import Any
from zoneinfo import ZoneInfo

from flask import Blueprint, Response, current_app, render_template, request, stream_with_context, url_for
from flask_babel import lazy_gettext as _l
from flask_login import current_user

from waflow import users
from waflow.dashboard import audit_csv, audit_labels
from waflow.dashboard.worddiff import word_diff
from waflow.drafts import history, report as weekly_report
from waflow.models import DECISION_ACTIONS, REJECT_REASONS
from waflow.web import request_connection

logger = logging.getLogger(__name__)

bp = Blueprint("audit", __name__, url_prefix="/dashboard")

# The conversation page (the inbox's branch): decisions link to it once it exists.
CONVERSATION_ENDPOINT = "conversations.show"

BAD_DATE = _l("The dates must be days of the calendar (for example 2026-03-02).")
BAD_RANGE = _l("The first day must not be after the last day.")
BAD_ACTION = _l("Choose a decision from the list.")
BAD_LAWYER = _l("Choose a lawyer from the list.")
BAD_PAGE = _l("That link to a page of the list is broken: open the audit page again.")
BAD_WEEK = _l("Choose a week from the calendar (for example 2026-W10).")


@dataclass
class Chosen:
    """The filters as the form shows them, and what could not be read."""

    lawyer: int | None = None
    first: date | None = None
    last: date | None = None
    action: str | None = None
    after: history.Cursor | None = None
    errors: list[Any] = field(default_factory=list)

    def query(self, **changes: Any) -> dict[str, str]:
        """The query string of these filters (for the CSV link and the next page)."""
        values = {"lawyer": self.lawyer if current_user.is_admin else None, "from": self.first, "to": self.last,
                  "action": self.action, **changes}
        return {k: str(v) for k, v in values.items() if v not in (None, "")}


def _zone() -> str:
    return current_app.config["WAFLOW_SETTINGS"].timezone


def _day(text: str | None, chosen: Chosen) -> date | None:
    if not text:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        if BAD_DATE not in chosen.errors:
            chosen.errors.append(BAD_DATE)
        return None


def _lawyer(text: str | None, chosen: Chosen) -> int | None:
    """The lawyer an admin chose (a lawyer's own choice is ignored: they see their own decisions)."""
    if not text or not current_user.is_admin:
        return None
    if not text.isdigit() or len(text) > 18:
        chosen.errors.append(BAD_LAWYER)
        return None
    return int(text)


def _chosen() -> Chosen:
    args = request.args
    chosen = Chosen()
    chosen.lawyer = _lawyer(args.get("lawyer"), chosen)
    chosen.first, chosen.last = _day(args.get("from"), chosen), _day(args.get("to"), chosen)
    if chosen.first and chosen.last and chosen.first > chosen.last:
        chosen.errors.append(BAD_RANGE)
    action = args.get("action") or None
    if action is not None and action not in DECISION_ACTIONS:
        chosen.errors.append(BAD_ACTION)
    else:
        chosen.action = action
    if args.get("after"):
        try:
            chosen.after = history.Cursor.decode(args["after"])
        except ValueError:
            chosen.errors.append(BAD_PAGE)
    return chosen


def _filters(chosen: Chosen) -> history.Filters:
    start, end = history.local_days(chosen.first, chosen.last, _zone())
    return history.Filters(user_id=_seen_user(chosen.lawyer), action=chosen.action, start=start, end=end)


def _seen_user(chosen_lawyer: int | None) -> int | None:
    """Whose decisions this viewer sees: a lawyer only their own; an admin everyone's or the one chosen."""
    return chosen_lawyer if current_user.is_admin else current_user.id


def _people() -> list[users.Person]:
    """The lawyers an admin may choose from (everyone who can decide, deactivated ones included)."""
    if not current_user.is_admin:
        return []
    conn = request_connection()
    with conn.begin():
        return users.listing(conn)


def _conversation_url(conversation_id: int) -> str | None:
    if CONVERSATION_ENDPOINT not in current_app.view_functions:
        return None
    return url_for(CONVERSATION_ENDPOINT, conversation_id=conversation_id)


def _common() -> dict[str, Any]:
    words = audit_labels.translated
    return {"action_labels": words(audit_labels.ACTIONS), "reason_labels": words(audit_labels.REASONS),
            "send_labels": words(audit_labels.SENDS), "via_labels": words(audit_labels.VIAS),
            "drafter_labels": words(audit_labels.DRAFTERS), "w": words(audit_labels.ROW_WORDS),
            "label": audit_labels.label, "people": _people(),
            "actions": DECISION_ACTIONS, "reasons": REJECT_REASONS, "zone": _zone(),
            "conversation_url": _conversation_url}


def _sides(d: history.Decision) -> tuple[list[Any], list[Any]]:
    """The draft and the sent words, marked word by word; a template is not words to compare with a draft."""
    if d.action == "template" or d.original_text == d.final_text:
        return word_diff(d.original_text, None)[0], word_diff(None, d.sent_words)[1]
    return word_diff(d.original_text, d.final_text)


@bp.route("/audit")
def index() -> tuple[str, int]:
    chosen = _chosen()
    found = history.Page([], None)
    if not chosen.errors:
        conn = request_connection()
        with conn.begin():
            found = history.page(conn, _filters(chosen), chosen.after)
    rows = [{"decision": d, "sides": _sides(d)} for d in found.rows]
    older = url_for("audit.index", **chosen.query(after=found.older.encode())) if found.older else None
    newest = url_for("audit.index", **chosen.query()) if chosen.after else None
    return render_template("dashboard/audit.html", chosen=chosen, rows=rows, older=older, newest=newest,
                           csv_url=url_for("audit.export", **chosen.query()), **_common()
                           ), 400 if chosen.errors else 200


@bp.route("/audit.csv")
def export() -> Response | tuple[str, int]:
    chosen = _chosen()
    if chosen.errors:
        return render_template("dashboard/audit.html", chosen=chosen, rows=[], older=None, newest=None,
                               csv_url=None, **_common()), 400
    today = datetime.now(timezone.utc).astimezone(ZoneInfo(_zone())).date()
    filters = _filters(chosen)
    # Who took client text out of the dashboard, and which part (ids, codes and dates only).
    logger.info("dashboard: user %s exported the audit CSV (lawyer %s, action %s, from %s to %s)", current_user.id,
                filters.user_id, filters.action, chosen.first, chosen.last)
    stream = audit_csv.stream(request_connection, filters, _zone())
    return Response(stream_with_context(stream), mimetype="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="waflow-audit-{today}.csv"'})


@bp.route("/audit/report")
def report() -> tuple[str, int]:
    zone = _zone()
    chosen = Chosen()
    chosen.lawyer = _lawyer(request.args.get("lawyer"), chosen)
    week = weekly_report.Week.containing(datetime.now(timezone.utc), zone)
    if request.args.get("week"):
        try:
            week = weekly_report.Week.parse(request.args["week"], zone)
        except ValueError:
            chosen.errors.append(BAD_WEEK)
    figures = None
    if not chosen.errors:
        conn = request_connection()
        with conn.begin():
            figures = weekly_report.weekly(conn, week, _seen_user(chosen.lawyer))

    def link(to: weekly_report.Week) -> str:
        return url_for("audit.report", **chosen.query(week=to.label))

    return render_template("dashboard/audit_report.html", chosen=chosen, week=week, figures=figures,
                           previous=link(week.shifted(-1)), next=link(week.shifted(1)),
                           light_below=weekly_report.LIGHT_EDIT_BELOW, duration=audit_labels.duration,
                           **_common()), 400 if chosen.errors else 200
