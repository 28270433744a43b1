"""Control endpoints under ``/_sim/``: read what happened, steer the simulator, inject traffic.

They take no token: they are for tests, benchmarks and demos on loopback (the simulator binds
127.0.0.1 by default). Errors are plain ``{"error": "<what is wrong>"}`` with status 400.
"""
from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, request

from waflow.simulator.faults import Fault
from waflow.simulator.httpkit import json_response
from waflow.simulator.media import INBOUND_MAX
from waflow.simulator.media_faults import MediaFault
from waflow.simulator.state import current_simulator as _sim
from waflow.simulator.templates import PLACEHOLDER, Template

bp = Blueprint("simulator_control", __name__, url_prefix="/_sim")


def _bad(message: str) -> Response:
    return json_response({"error": message}, 400)


def _body() -> Any:
    return request.get_json(silent=True, force=True)


@bp.get("/health")
def health() -> Response:
    return json_response({"status": "ok"})


@bp.get("/sends")
def sends() -> Response:
    """Accepted sends, oldest first. Filters: after (seq), since (unix time), to, phone_number_id, limit, brief."""
    args = request.args
    try:
        after = int(args.get("after", 0))
        since = float(args["since"]) if "since" in args else None
        limit = int(args.get("limit", 1000))
    except ValueError:
        return _bad("after and limit must be whole numbers, since a unix time")
    if limit < 1:
        return _bad("limit must be at least 1")
    to = args.get("to")
    key = to if to is None or "." in to else "".join(c for c in to if c.isdigit())
    found = _sim().ledger.select(after=after, since=since, key=key, phone_number_id=args.get("phone_number_id"),
                                 limit=limit)
    brief = args.get("brief") in ("1", "true")
    return json_response({"sends": [s.as_json(brief) for s in found], "count": len(found),
                          "next_after": found[-1].seq if found else after})


@bp.get("/reads")
def reads() -> Response:
    ledger = _sim().ledger
    with ledger.lock:
        found = list(ledger.reads)
    return json_response({"reads": found, "count": len(found)})


@bp.get("/stats")
def stats() -> Response:
    """Counts, refusals per code, the busiest 1-s window per number, webhook and fault counters."""
    sim = _sim()
    doc = sim.ledger.stats(brief=request.args.get("brief") in ("1", "true"))
    doc["webhooks"] = {**sim.poster.counts, "pending": sim.poster.pending()}
    doc["faults"] = {"pending": sum(f.count for f in sim.faults.pending()), "used": sim.faults.used}
    doc["media_faults"] = {"pending": len(sim.media_faults.pending()), "used": sim.media_faults.used}
    doc["clock"] = "unix seconds (time.time()) unless a test injected another clock"
    return json_response(doc)


@bp.post("/reset")
def reset() -> Response:
    _sim().reset()
    return json_response({"reset": True})


@bp.route("/config", methods=["GET", "POST"])
def configure() -> Response:
    """Runtime options: rate (optionally per phone_number_id), pair limit, windows, status webhooks."""
    sim = _sim()
    if request.method == "GET":
        return json_response(sim.settings())
    changes = _body()
    if not isinstance(changes, dict) or not changes:
        return _bad("send a JSON object of options to change")
    try:
        return json_response(sim.configure(changes))
    except ValueError as exc:
        return _bad(str(exc))


@bp.post("/windows")
def windows() -> Response:
    """Open or close a recipient's 24-hour window ({"recipient", "open"}), or all of them ({"all"})."""
    sim = _sim()
    doc = _body()
    if isinstance(doc, dict) and isinstance(doc.get("all"), bool):
        return json_response(sim.configure({"open_windows": doc["all"]}))
    if not isinstance(doc, dict) or not isinstance(doc.get("recipient"), str) or not isinstance(
            doc.get("open", True), bool):
        return _bad('send {"recipient": "<wa_id or BSUID>", "open": true|false} or {"all": true|false}')
    recipient = doc["recipient"]
    key = recipient if "." in recipient else "".join(c for c in recipient if c.isdigit())
    sim.ledger.force_window(key, doc.get("open", True))
    return json_response({"recipient": key, "open": doc.get("open", True)})


def _items() -> list[Any]:
    """The objects of a POST: one object, or {"faults": [...]}."""
    doc = _body()
    return (doc.get("faults") if isinstance(doc, dict) and "faults" in doc else [doc]) or []


@bp.route("/faults", methods=["GET", "POST", "DELETE"])
def faults() -> Response:
    """Queue forced outcomes of sends (one object or {"faults": [...]}), list them, or clear them."""
    queue = _sim().faults
    if request.method == "POST":
        try:
            parsed = [Fault.parse(item) for item in _items()]
        except (TypeError, ValueError) as exc:
            return _bad(str(exc))
        if not parsed:
            return _bad("no fault given")
        queue.add(parsed)
    elif request.method == "DELETE":
        queue.clear()
    return json_response({"faults": [f.as_json() for f in queue.pending()]})


@bp.route("/media/faults", methods=["GET", "POST", "DELETE"])
def media_faults() -> Response:
    """Queue forced outcomes of media look-ups and downloads (shapes: ``media_faults``), list, clear.

    ``expired`` is not queued: it ends the media id's life at once (unknown id: 400).
    """
    sim = _sim()
    if request.method == "POST":
        try:
            parsed = [MediaFault.parse(item) for item in _items()]
        except (TypeError, ValueError) as exc:
            return _bad(str(exc))
        if not parsed:
            return _bad("no media fault given")
        unknown = [f.media_id for f in parsed if f.expired and sim.media.get(f.media_id) is None]
        if unknown:
            return _bad(f"no live media with id {unknown[0]} to expire")
        for fault in parsed:
            if fault.expired:
                sim.media.expire(fault.media_id)
        sim.media_faults.add([f for f in parsed if not f.expired])
    elif request.method == "DELETE":
        sim.media_faults.clear()
    return json_response({"faults": [f.as_json() for f in sim.media_faults.pending()]})


@bp.route("/templates", methods=["GET", "POST"])
def templates() -> Response:
    """List the templates, or add one: {"name", "language" (en_US), "category" (UTILITY), "body",
    "examples"?: one value per placeholder, in order}."""
    registry = _sim().templates
    if request.method == "POST":
        doc = _body()
        if not isinstance(doc, dict) or not all(isinstance(doc.get(k), str) and doc[k] for k in ("name", "body")):
            return _bad('send {"name": "...", "body": "text with {{1}} placeholders", "language": "en_US"}')
        examples = doc.get("examples", [])
        if not isinstance(examples, list) or not all(isinstance(e, str) and e for e in examples):
            return _bad("examples must be a list of non-empty strings, one per placeholder")
        template = Template(doc["name"], str(doc.get("language") or "en_US"),
                            str(doc.get("category") or "UTILITY").upper(), doc["body"], tuple(examples))
        registry.add(template)
        return json_response({**template.as_meta(), "parameter_count": template.parameter_count}, 201)
    return json_response({"data": [t.as_meta() for t in registry.find()], "placeholder": PLACEHOLDER.pattern})


@bp.post("/inbound")
def inbound() -> Response:
    """Post a signed inbound message webhook to the gateway now; it opens the sender's 24-hour window.

    Body: see ``inbound`` (text, a generated image, or media with given bytes and MIME type).
    Answer: {"wamid", "user_id", "gateway_status", "retrying", "media_id"? (media),
    "error"? (gateway unreachable: HTTP 502)}.
    """
    # A file of up to Meta's inbound cap (100 MB), base64 in JSON: a third more, and the envelope.
    request.max_content_length = INBOUND_MAX * 4 // 3 + 2**20
    try:
        result, status = _sim().inject(_body())
    except ValueError as exc:
        return _bad(str(exc))
    return json_response(result, status)
