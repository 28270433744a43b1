"""``/dashboard/media/<media row id>``: a client's file (or one the firm sent), behind the dashboard's login.

``waflow.media.serve.media_response`` streams it with its safe headers (inline only for raster images, audio
and video detected from their bytes; everything else an attachment that no browser renders). Any row that
cannot be served now (unknown, guessed, still pending, failed, deleted) is a plain 404 that says nothing
about which; an anonymous visitor never gets this far (``security``: login first).
"""
from __future__ import annotations

import logging

from flask import Blueprint, Response, abort

from waflow.media.serve import MediaUnavailable, media_response
from waflow.web import request_connection

logger = logging.getLogger(__name__)

bp = Blueprint("media", __name__, url_prefix="/dashboard/media")


@bp.route("/<int:media_row_id>")
def show(media_row_id: int) -> Response:
    conn = request_connection()
    try:
        with conn.begin():
            response = media_response(conn, media_row_id)
    except MediaUnavailable:
        logger.info("dashboard: media %s not served (unavailable)", media_row_id)
        abort(404)
    # The file's own sandboxing policy and caching, not the pages' (security.py sets them only if absent).
    return response
