"""``GET /dashboard/changes?since=N``: what changed after change ``N``, for open pages that poll it every 2 s.

``{"cursor": N, "changes": [{"id", "kind", "conversation_id", "draft_id", "message_id"}, ...]}``: ids only,
never a client's words (a page fetches the fragments concerned, which check the user as any page does).
One indexed query on the change log (``changelog.since``, which also holds back changes after an id whose
transaction may still commit); without ``since``, the log's newest id and no changes. Pages poll it only
while visible (``static/live.js``); a closed session answers 401 with ``HX-Redirect`` to the login page, like
every other htmx request.
"""
from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from waflow import changelog
from waflow.web import request_connection

bp = Blueprint("live", __name__, url_prefix="/dashboard")
FIELDS = ("id", "kind", "conversation_id", "draft_id", "message_id")
PAGE = 200


@bp.route("/changes")
def changes() -> Response:
    conn = request_connection()
    try:
        since = int(request.args.get("since", ""))
    except ValueError:
        since = -1
    with conn.begin():
        if since < 0:
            return jsonify(cursor=changelog.latest(conn), changes=[])
        found = changelog.since(conn, since, limit=PAGE)
    return jsonify(cursor=found.cursor, changes=[{name: getattr(row, name) for name in FIELDS} for row in found.rows])
