"""Gateway: Meta's webhook at ``/webhooks/whatsapp``; produces ``wa.incoming.raw``.

GET is Meta's verification handshake. POST does three things and nothing else:
verify ``X-Hub-Signature-256`` over the raw bytes, publish the bytes unchanged
to ``wa.incoming.raw`` (durably, confirmed by the broker), answer 200. No JSON
parsing, no database, no per-message work: Meta must never wait. Anything that
means "not queued" answers 503, and Meta redelivers.

Protocol: ``../shared/reference/whatsapp-cloud-api.md`` sections 1-3.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import time

from flask import Blueprint, Response, current_app, request
from werkzeug.exceptions import ClientDisconnected, RequestEntityTooLarge

from waflow.broker import PublishError

logger = logging.getLogger(__name__)

bp = Blueprint("gateway", __name__)

SIGNATURE_HEADER = "X-Hub-Signature-256"


def signature_for(app_secret: str, body: bytes) -> str:
    """Meta's ``X-Hub-Signature-256`` value for ``body``: HMAC-SHA256 of the raw bytes, app secret as key."""
    return "sha256=" + hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()


def signature_is_valid(app_secret: str, body: bytes, header: str) -> bool:
    """Check a ``sha256=<hex>`` header against ``body``, in constant time."""
    if not header.startswith("sha256="):
        return False
    # Bytes, not str: compare_digest refuses non-ASCII str, and a forged header may hold any character.
    given = ("sha256=" + header[7:].strip().lower()).encode("utf-8", "replace")
    return hmac.compare_digest(signature_for(app_secret, body).encode(), given)


def _text(body: str, status: int) -> Response:
    return Response(body, status=status, mimetype="text/plain")


def _whole_body() -> bytes:
    """The request's whole body; a werkzeug ``HTTPException`` (and a log line) if it is too large or cut short.

    Too large (413): with a Content-Length over ``MAX_CONTENT_LENGTH`` werkzeug refuses before reading. A
    chunked body has no length: werkzeug reads it up to the limit and returns what it has, which would then
    fail the signature as if forged; one byte read beyond the limit tells a cut body from one that ends
    exactly there. Cut short (400): gunicorn returns what arrived when the client leaves, or stops sending
    past ``WAFLOW_BODY_TIMEOUT`` (waflow.webserver); that is not a forgery either."""
    limit = request.max_content_length
    try:
        body = request.get_data(cache=False)
        if limit is not None and len(body) >= limit and request.input_stream.read(1):
            raise RequestEntityTooLarge()
    except RequestEntityTooLarge:
        logger.warning("gateway: rejected webhook: body over %d bytes", limit)
        raise
    expected = request.content_length
    if expected is not None and len(body) < expected:
        logger.warning("gateway: rejected webhook: body ended after %d of %d bytes", len(body), expected)
        raise ClientDisconnected()
    return body


@bp.get("/webhooks/whatsapp")
def verify_subscription() -> Response:
    """Answer Meta's handshake with the challenge, as plain text, if the token matches."""
    settings = current_app.config["WAFLOW_SETTINGS"]
    token = request.args.get("hub.verify_token", "")
    if request.args.get("hub.mode") == "subscribe" and hmac.compare_digest(
        token.encode(), settings.verify_token.encode()
    ):
        return _text(request.args.get("hub.challenge", ""), 200)
    logger.warning("gateway: handshake refused (mode=%r)", request.args.get("hub.mode"))
    return _text("Forbidden", 403)


@bp.post("/webhooks/whatsapp")
def receive_webhook() -> Response:
    """Verify, queue durably, answer."""
    received_at = time.time()
    header = request.headers.get(SIGNATURE_HEADER)
    if not header:
        logger.warning("gateway: rejected webhook: no %s header", SIGNATURE_HEADER)
        return _text("Missing signature", 401)
    body = _whole_body()
    if not signature_is_valid(current_app.config["WAFLOW_SETTINGS"].app_secret, body, header):
        logger.warning("gateway: rejected webhook: signature mismatch (%d bytes)", len(body))
        return _text("Invalid signature", 403)
    try:
        current_app.extensions["waflow.publisher"].publish_raw(body, received_at)
    except PublishError as exc:
        logger.error("gateway: webhook not queued, answering 503: %s", exc)
        response = _text("Not queued, retry later", 503)
        response.headers["Retry-After"] = "1"
        return response
    return _text("OK", 200)
