"""``/dashboard/``: the inbox. Conversations in the order a lawyer should answer them (``queries.inbox``),
each with its last message, the lawyer's unread count, its draft's state and who has it; filters (all,
mine, unassigned, urgent) and a search by name or number. The list (``#inbox-list``) refreshes itself
when the change log says a conversation changed (``static/inbox.js``, ``live.py``).
"""
from __future__ import annotations

from datetime import datetime, timezone

from flask import Blueprint, render_template, request
from flask_login import current_user

from waflow import changelog
from waflow.dashboard import queries
from waflow.web import request_connection

bp = Blueprint("inbox", __name__, url_prefix="/dashboard")
MAX_PAGES = 200  # 10,000 conversations at 50 a page


def _arguments() -> dict[str, object]:
    chosen = request.args.get("filter", "all")
    try:
        page = min(max(int(request.args.get("page", "1")), 1), MAX_PAGES)
    except ValueError:
        page = 1
    return {"filter": chosen if chosen in queries.FILTERS else "all",
            "search": request.args.get("q", "")[:queries.MAX_SEARCH], "page": page}


@bp.route("/")
def index() -> str:
    args = _arguments()
    now = datetime.now(timezone.utc)
    conn = request_connection()
    with conn.begin():
        cursor = changelog.latest(conn)  # before the rows: a change made meanwhile is fetched again, not lost
        found = queries.inbox(conn, current_user.id, filter=str(args["filter"]), search=str(args["search"]),
                             offset=(int(args["page"]) - 1) * queries.PAGE, now=now)
    template = "dashboard/_inbox_list.html" if request.headers.get("HX-Request") else "dashboard/inbox.html"
    return render_template(template, inbox=found, now=now, cursor=cursor, filters=queries.FILTERS, **args)
