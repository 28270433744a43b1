"""The simulator as one object (``Simulator``) and its Flask app (``create_simulator``)."""
from __future__ import annotations

import json
import logging
import random
import re
import uuid
from dataclasses import replace
from functools import partial
from typing import Any

import requests
from flask import Flask, Response, current_app

from waflow import config
from waflow.simulator.faults import FaultQueue
from waflow.simulator.ledger import Ledger, Send
from waflow.simulator.media import MediaStore, sample_png
from waflow.simulator.options import RUNTIME_FIELDS, SimulatorOptions
from waflow.simulator.shapes import BSUID
from waflow.simulator.templates import TemplateRegistry
from waflow.simulator.webhooks import DemoTraffic, WebhookPoster, envelope, inbound_message, status_update

logger = logging.getLogger(__name__)

# Duplicates of a status webhook (--duplicate) follow the original this much later.
DUPLICATE_GAP = 0.05
_BOOLS = ("pair_limit", "open_windows", "status_webhooks", "reorder", "duplicate")
_SECONDS = {"pair_interval": (0.001, 3600.0), "status_delay": (0.0, 600.0), "late": (0.0, 3600.0)}


def new_wamid() -> str:
    return f"wamid.sim-{uuid.uuid4().hex}"


def current_simulator() -> "Simulator":
    return current_app.extensions["waflow.simulator"]


def json_response(doc: Any, status: int = 200) -> Response:
    """Compact JSON: cheaper than jsonify on the hot path, and the bytes Meta would send."""
    return Response(json.dumps(doc, separators=(",", ":")), status=status, mimetype="application/json")


class Simulator:
    """Everything one simulator holds: limits and records, templates, faults, media, webhook posting."""

    def __init__(self, options: SimulatorOptions) -> None:
        self.options = options  # as started: /_sim/reset restores the runtime copy from it
        self.runtime = replace(options)
        self.clock = options.clock
        self.ledger = Ledger(self.runtime)
        self.templates = TemplateRegistry()
        self.faults = FaultQueue()
        self.media = MediaStore(options.clock, options.max_media_bytes)
        self.poster = WebhookPoster(options.webhook_url, options.app_secret, attempts=options.webhook_attempts,
                                    backoff=options.webhook_backoff, timeout=options.webhook_timeout,
                                    workers=options.webhook_workers)
        self.demo = DemoTraffic(options.demo_traffic, self.inject_quietly) if options.demo_traffic > 0 else None
        self._shuffle = random.Random()

    def start(self) -> None:
        if self.demo is not None:
            self.demo.start()

    def close(self) -> None:
        """Stop the background threads (demo traffic, webhook posting)."""
        if self.demo is not None:
            self.demo.stop()
        self.poster.close()

    def reset(self) -> None:
        """Forget every send, refusal, window, fault, added template and media; restore the start options."""
        with self.ledger.lock:
            for name in RUNTIME_FIELDS:
                setattr(self.runtime, name, getattr(self.options, name))
        self.ledger.reset()
        self.templates.reset()
        self.faults.clear()
        self.media.clear()
        self.poster.clear()

    def configure(self, changes: dict[str, Any]) -> dict[str, Any]:
        """Apply runtime changes (ValueError names a bad one); ``rate`` with ``phone_number_id`` is per number."""
        changes = dict(changes)
        number = changes.pop("phone_number_id", None)
        checked = {name: _checked(name, value) for name, value in changes.items()}
        with self.ledger.lock:
            if number is not None:
                if set(checked) != {"rate"}:
                    raise ValueError("phone_number_id goes with rate only")
                self.ledger.rates[str(number)] = checked["rate"]
            else:
                for name, value in checked.items():
                    setattr(self.runtime, name, value)
        return self.settings()

    def settings(self) -> dict[str, Any]:
        with self.ledger.lock:
            return {**self.runtime.runtime(), "rates": dict(self.ledger.rates)}

    def schedule_statuses(self, send: Send, category: str | None) -> None:
        """Queue sent → delivered → read for an accepted send (unless status webhooks are off)."""
        rt = self.runtime
        if not rt.status_webhooks:
            return
        # Event times stay in order; with --reorder only the order of delivery is shuffled.
        happened = [rt.late + rt.status_delay * (i + 1) for i in range(3)]
        delivery = self._shuffle.sample(happened, 3) if rt.reorder else happened
        for status, at, delay in zip(("sent", "delivered", "read"), happened, delivery):
            build = partial(self._status_body, send, status, int(send.accepted_at + at), category)
            self.poster.schedule(build, delay)
            if rt.duplicate:
                self.poster.schedule(build, delay + DUPLICATE_GAP)

    def _status_body(self, send: Send, status: str, timestamp: int, category: str | None) -> bytes:
        update = status_update(wamid=send.wamid, status=status, timestamp=timestamp, to=send.to,
                               recipient=send.recipient, biz_opaque_callback_data=send.biz_opaque_callback_data,
                               category=category)
        return envelope(self.options.waba_id, send.phone_number_id, self.options.display_phone_number,
                        {"statuses": [update]})

    def inject(self, doc: Any) -> tuple[dict[str, Any], int]:
        """Post one inbound message webhook now; the answer for /_sim/inbound and its HTTP status."""
        wa_id, text, name, kind, number, user_id = _inbound_fields(doc, self.options.phone_number_id)
        wamid, result = new_wamid(), {}
        if kind == "image":
            media = self.media.put(sample_png(), "image/png")
            content = {"mime_type": media.mime_type, "sha256": media.sha256, "id": media.id,
                       "url": self.media.url_for(media, self.options.base_url)}
            if text:
                content["caption"] = text
            result["media_id"] = media.id
        else:
            content = {"body": text}
        contact: dict[str, Any] = {"profile": {"name": name}, "wa_id": wa_id}
        if user_id:
            contact["user_id"] = user_id
        message = inbound_message(wamid=wamid, wa_id=wa_id, timestamp=int(self.clock()), kind=kind,
                                  content=content, user_id=user_id)
        body = envelope(self.options.waba_id, number, self.options.display_phone_number,
                        {"contacts": [contact], "messages": [message]})
        # The customer wrote: their window opens whether or not the gateway takes the webhook.
        for key in filter(None, (wa_id, user_id)):
            self.ledger.customer_wrote(key)
        return self._deliver_inbound(body, wamid, result)

    def _deliver_inbound(self, body: bytes, wamid: str, result: dict[str, Any]) -> tuple[dict[str, Any], int]:
        try:
            status, error = self.poster.post(body), None
        except requests.RequestException as exc:
            status, error = None, f"{type(exc).__name__} posting to {self.options.webhook_url}"
        retrying = status != 200 and self.options.webhook_attempts > 1
        if retrying:
            self.poster.schedule(body, self.options.webhook_backoff, attempt=2)
        logger.info("simulator: inbound %s -> gateway %s%s", wamid, status or error,
                    ", retrying" if retrying else "")
        result.update(wamid=wamid, gateway_status=status, retrying=retrying)
        if error:
            result["error"] = error
        return result, 200 if status is not None else 502

    def inject_quietly(self, doc: dict[str, Any]) -> None:
        """``inject`` for the demo thread, which must survive a gateway that is down."""
        try:
            self.inject(doc)
        except ValueError:
            logger.exception("simulator: demo message refused")


def _checked(name: str, value: Any) -> Any:
    if name == "rate" or name == "pair_burst":
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 100_000:
            raise ValueError(f"{name} must be a whole number from 1 to 100000")
    elif name in _BOOLS:
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false")
    elif name in _SECONDS:
        low, high = _SECONDS[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise ValueError(f"{name} must be {low} to {high} seconds")
    else:
        raise ValueError(f"{name} cannot be changed at runtime")
    return value


def _inbound_fields(doc: Any, default_number: str) -> tuple[str, str, str, str, str, str | None]:
    """(wa_id, text, name, type, phone_number_id, user_id) from /_sim/inbound's JSON; ValueError if bad."""
    if not isinstance(doc, dict):
        raise ValueError("the body must be a JSON object")
    wa_id, text, kind = doc.get("from"), doc.get("text", ""), doc.get("type", "text")
    if not isinstance(wa_id, str) or not re.fullmatch(r"[0-9]{5,20}", wa_id):
        raise ValueError("from must be a wa_id: 5 to 20 digits, no +")
    if kind not in ("text", "image"):
        raise ValueError('type must be "text" or "image"')
    if not isinstance(text, str) or (kind == "text" and not 1 <= len(text) <= 4096):
        raise ValueError("text must be 1 to 4096 characters for a text message")
    name = doc.get("name") or f"Client {wa_id[-4:]}"
    user_id = doc.get("user_id")
    if user_id is not None and not (isinstance(user_id, str) and BSUID.fullmatch(user_id)):
        raise ValueError("user_id must be a business-scoped user id such as US.13491208655302741918")
    return wa_id, text, str(name), kind, str(doc.get("phone_number_id") or default_number), user_id


def create_simulator(options: SimulatorOptions | None = None) -> Flask:
    """Build the simulator's Flask app; without ``options``, from waflow's settings."""
    from waflow.simulator import control, graph

    simulator = Simulator(options or SimulatorOptions.from_settings(config.settings))
    app = Flask("waflow.simulator", static_folder=None)
    # Documents upload up to 100 MB (§5); a little more for the multipart envelope.
    app.config.update(MAX_CONTENT_LENGTH=101 * 2**20)
    app.extensions["waflow.simulator"] = simulator
    app.register_blueprint(graph.bp)
    app.register_blueprint(control.bp)
    simulator.start()
    return app
