"""Meta's messaging side of the Graph API, as waflow's sender calls it (§6, §7): sends, read
receipts and the template list. Media endpoints are in ``graph_media``.

``POST /<version>/<phone_number_id>/messages`` checks, in Meta's order of concern: the Bearer
token (190), a queued fault, the shape (100 / 131008 / 131009), the template (132001 / 132000),
the 24-hour window (131047), throughput (130429) and the pair limit (131056). Every refusal is
counted by code; only accepted sends are recorded.
"""
from __future__ import annotations

import json
import time
from urllib.parse import urlencode

from flask import Blueprint, Response, request

from waflow.simulator.errors import MetaError
from waflow.simulator.faults import Fault
from waflow.simulator.httpkit import (authorize, check_version, client_socket, error_response, json_response,
                                      shut)
from waflow.simulator.ledger import Send
from waflow.simulator.shapes import check_read_receipt, check_send, is_read_receipt, recipient_key
from waflow.simulator.state import Simulator, current_simulator, new_wamid
from waflow.simulator.templates import listing

bp = Blueprint("simulator_graph", __name__)


@bp.post("/<version>/<phone_number_id>/messages")
def send_message(version: str, phone_number_id: str) -> Response:
    """Accept or refuse one send (or mark a message as read)."""
    check_version(version)
    sim = current_simulator()
    try:
        return _send(sim, phone_number_id)
    except MetaError as exc:
        sim.ledger.refuse(exc.code)
        return error_response(exc)


def _send(sim: Simulator, phone_number_id: str) -> Response:
    authorize(sim)
    raw = request.get_data()
    try:
        doc = json.loads(raw)
    except ValueError:
        raise MetaError(100, "the request body is not valid JSON") from None
    read = is_read_receipt(doc)
    key = recipient_key(doc)
    fault = sim.faults.take(key, "read" if read else "send")
    if fault is not None:
        forced = _apply(fault)
        if forced is not None:
            return forced
    if read:
        check_read_receipt(doc)
        sim.ledger.record_read(phone_number_id, doc["message_id"], "typing_indicator" in doc)
        return json_response({"success": True})
    kind = check_send(doc)
    template = sim.templates.check(doc["template"]) if kind == "template" else None
    wamid = new_wamid()
    send = sim.ledger.admit(phone_number_id, key, kind, lambda seq, now: Send(
        seq, wamid, phone_number_id, doc.get("to"), doc.get("recipient"), kind, raw,
        doc.get("biz_opaque_callback_data"), doc.get("context"), now))
    failure = fault if fault is not None and fault.fail is not None else None
    sim.schedule_statuses(send, template.category if template else None, failure)
    contact = {"input": doc["to"], "wa_id": key} if "to" in doc else {"input": key, "user_id": key}
    message = {"id": wamid, "message_status": "accepted"} if template else {"id": wamid}
    return json_response({"messaging_product": "whatsapp", "contacts": [contact], "messages": [message]})


def _apply(fault: Fault) -> Response | None:
    """Play a fault: wait, then drop, refuse or answer body-less; None lets the request go on
    (a delay alone, or ``fail``, whose failed status follows the accepted send)."""
    if fault.delay:
        time.sleep(fault.delay)
    if fault.drop:
        shut(client_socket())
        # The server's attempt to write this fails on the closed socket; the client sees no answer.
        return Response(b"", status=500)
    if fault.code is not None:
        raise MetaError(fault.code, fault.details or "simulated fault", fault.status)
    if fault.status is not None:
        response = Response(b"", status=fault.status)
        del response.headers["Content-Type"]
        return response
    return None


@bp.get("/<version>/<waba_id>/message_templates")
def list_templates(version: str, waba_id: str) -> Response:
    """Meta's template list: filters, fields, cursor paging and, when asked, the summary."""
    check_version(version)
    sim = current_simulator()
    root = f"{sim.options.base_url.rstrip('/')}/{version}/{waba_id}/message_templates"
    try:
        authorize(sim)
        page = listing(sim.templates.find(), request.args, lambda query: f"{root}?{urlencode(query)}")
    except MetaError as exc:
        return error_response(exc)
    return json_response(page)
