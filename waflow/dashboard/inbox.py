"""``/dashboard/``: the inbox. A placeholder that lists conversations, newest first, so that signing in lands
somewhere; the inbox issue replaces it (waiting time, filters, drafts, live updates)."""
from __future__ import annotations

from flask import Blueprint, render_template

from waflow.dashboard.queries import recent_conversations
from waflow.web import request_connection

bp = Blueprint("inbox", __name__, url_prefix="/dashboard")


@bp.route("/")
def index() -> str:
    conn = request_connection()
    with conn.begin():
        conversations = recent_conversations(conn)
    return render_template("dashboard/inbox.html", conversations=conversations)
