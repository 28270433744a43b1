"""Meta's side of the Graph API, as waflow's sender and media stage call it (§5, §6).

``POST /<version>/<phone_number_id>/messages`` checks, in Meta's order of concern: the Bearer
token (190), a queued fault, the shape (100 / 131008 / 131009), the template (132001 / 132000),
the 24-hour window (131047), throughput (130429) and the pair limit (131056). Every refusal is
counted by code; only accepted sends are recorded.
"""
from __future__ import annotations

import hmac
import json
import re
import socket
import time
from typing import Any

from flask import Blueprint, Response, abort, request

from waflow.simulator import shapes
from waflow.simulator.app import Simulator, current_simulator as _sim, json_response, new_wamid
from waflow.simulator.errors import MetaError, invalid, missing
from waflow.simulator.faults import Fault
from waflow.simulator.ledger import Send
from waflow.simulator.media import DOWNLOAD_PATH, LIMITS, kind_of

bp = Blueprint("simulator_graph", __name__)
VERSION = re.compile(r"v[0-9]+(\.[0-9]+)?")


class ConnectionDropped(RuntimeError):
    """A ``drop`` fault under a server that exposes no socket to close (Flask's test client)."""


def _error(exc: MetaError) -> Response:
    response = json_response(exc.body(), exc.status)
    if exc.code == 190:
        response.headers["WWW-Authenticate"] = 'OAuth "Facebook Platform" "invalid_token" "Invalid OAuth access token"'
    return response


def _authorize(sim: Simulator) -> None:
    header = request.headers.get("Authorization", "")
    given = header[7:].strip() if header.startswith("Bearer ") else ""
    if not given or not hmac.compare_digest(given.encode(), sim.options.access_token.encode()):
        raise MetaError(190, "the Bearer access token is missing or invalid")


def _version(version: str) -> None:
    if not VERSION.fullmatch(version):
        abort(404)


@bp.post("/<version>/<phone_number_id>/messages")
def send_message(version: str, phone_number_id: str) -> Response:
    """Accept or refuse one send (or mark a message as read)."""
    _version(version)
    sim = _sim()
    try:
        return _send(sim, phone_number_id)
    except MetaError as exc:
        sim.ledger.refuse(exc.code)
        return _error(exc)


def _send(sim: Simulator, phone_number_id: str) -> Response:
    _authorize(sim)
    raw = request.get_data()
    try:
        doc = json.loads(raw)
    except ValueError:
        raise MetaError(100, "the request body is not valid JSON") from None
    read = shapes.is_read_receipt(doc)
    key = shapes.recipient_key(doc)
    fault = sim.faults.take(key, "read" if read else "send")
    if fault is not None:
        forced = _apply(fault)
        if forced is not None:
            return forced
    if read:
        shapes.check_read_receipt(doc)
        sim.ledger.record_read(phone_number_id, doc["message_id"], "typing_indicator" in doc)
        return json_response({"success": True})
    kind = shapes.check_send(doc)
    template = sim.templates.check(doc["template"]) if kind == "template" else None
    wamid = new_wamid()
    send = sim.ledger.admit(phone_number_id, key, kind, lambda seq, now: Send(
        seq, wamid, phone_number_id, doc.get("to"), doc.get("recipient"), kind, raw,
        doc.get("biz_opaque_callback_data"), doc.get("context"), now))
    sim.schedule_statuses(send, template.category if template else None)
    contact = {"input": doc["to"], "wa_id": key} if "to" in doc else {"input": key, "user_id": key}
    message = {"id": wamid, "message_status": "accepted"} if template else {"id": wamid}
    return json_response({"messaging_product": "whatsapp", "contacts": [contact], "messages": [message]})


def _apply(fault: Fault) -> Response | None:
    """Play a fault: wait, then drop, refuse or answer body-less; None lets the request go on."""
    if fault.delay:
        time.sleep(fault.delay)
    if fault.drop:
        return _drop_connection()
    if fault.code is not None:
        raise MetaError(fault.code, fault.details or "simulated fault", fault.status)
    if fault.status is not None:
        response = Response(b"", status=fault.status)
        del response.headers["Content-Type"]
        return response
    return None


def _drop_connection() -> Response:
    """Shut the client's connection down so no answer reaches it (gunicorn and werkzeug expose the socket)."""
    sock = request.environ.get("gunicorn.socket") or request.environ.get("werkzeug.socket")
    if sock is None:
        raise ConnectionDropped("drop fault: this server exposes no socket to close")
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    # The server's attempt to write this fails on the closed socket; the client sees no answer.
    return Response(b"", status=500)


@bp.get("/<version>/<waba_id>/message_templates")
def list_templates(version: str, waba_id: str) -> Response:
    """Meta's template list, filtered by ``name`` and ``language``."""
    _version(version)
    sim = _sim()
    try:
        _authorize(sim)
    except MetaError as exc:
        return _error(exc)
    found = sim.templates.find(request.args.get("name"), request.args.get("language"))
    return json_response({"data": [t.as_meta() for t in found]})


@bp.post("/<version>/<phone_number_id>/media")
def upload_media(version: str, phone_number_id: str) -> Response:
    """Store an upload (multipart ``file``, ``type``, ``messaging_product``) and answer its id."""
    _version(version)
    sim = _sim()
    try:
        _authorize(sim)
        if request.form.get("messaging_product") != "whatsapp":
            raise MetaError(100, 'messaging_product must be "whatsapp"')
        upload = request.files.get("file")
        if upload is None:
            raise missing("file")
        mime_type = request.form.get("type") or upload.mimetype
        if not mime_type or "/" not in mime_type:
            raise missing("type")
        data = upload.read()
        if not data:
            raise invalid("file", "is empty")
        kind = kind_of(mime_type)
        if len(data) > LIMITS[kind]:
            raise MetaError(131053, f"file is {len(data)} bytes; {kind} uploads are limited to {LIMITS[kind]} bytes")
    except MetaError as exc:
        return _error(exc)
    return json_response({"id": sim.media.put(data, mime_type).id})


@bp.get("/<version>/<media_id>")
def media_info(version: str, media_id: str) -> Response:
    """A media id's short-lived URL, type, base64 SHA-256 and size."""
    _version(version)
    sim = _sim()
    try:
        _authorize(sim)
        media = _media(sim, media_id)
    except MetaError as exc:
        return _error(exc)
    return json_response({"messaging_product": "whatsapp", "url": sim.media.url_for(media, request.url_root),
                          "mime_type": media.mime_type, "sha256": media.sha256, "file_size": len(media.data),
                          "id": media.id})


@bp.delete("/<version>/<media_id>")
def delete_media(version: str, media_id: str) -> Response:
    _version(version)
    sim = _sim()
    try:
        _authorize(sim)
        _media(sim, media_id)
    except MetaError as exc:
        return _error(exc)
    sim.media.delete(media_id)
    return json_response({"success": True})


def _media(sim: Simulator, media_id: str) -> Any:
    media = sim.media.get(media_id)
    if media is None:
        raise MetaError(100, f"Unsupported request: object with id '{media_id}' does not exist")
    return media


@bp.get(f"/{DOWNLOAD_PATH}")
def download_media() -> Response:
    """The bytes behind a media URL: Bearer token required (401), expired or tampered URL → 404."""
    sim = _sim()
    try:
        _authorize(sim)
    except MetaError as exc:
        return _error(exc)
    args = request.args
    media = sim.media.open(args.get("mid", ""), args.get("ext", ""), args.get("hash", ""))
    if media is None:
        return Response("Not Found", status=404, mimetype="text/plain")
    return Response(media.data, content_type=media.mime_type)
