"""The simulator as one object (``Simulator``): everything it holds, and the webhooks it posts.

``app`` builds one per Flask app and keeps it in ``app.extensions``; the blueprints (``graph``,
``graph_media``, ``control``) reach it with ``current_simulator()``. This module imports none of
them, so the simulator's modules import each other in one direction only.
"""
from __future__ import annotations

import logging
import random
import uuid
from dataclasses import replace
from functools import partial
from typing import Any

import requests
from flask import current_app

from waflow.simulator.demo import DemoTraffic
from waflow.simulator.faults import Fault, FaultQueue
from waflow.simulator.inbound import InboundMedia, media_object, parse_inbound
from waflow.simulator.ledger import Ledger, Send
from waflow.simulator.media import INBOUND_TTL, Media, MediaStore
from waflow.simulator.media_faults import media_fault_queue
from waflow.simulator.options import RUNTIME_FIELDS, SimulatorOptions
from waflow.simulator.templates import TemplateRegistry
from waflow.simulator.users import Users
from waflow.simulator.webhooks import (WebhookPoster, contact, envelope, inbound_message,
                                       status_update, webhook_error)

logger = logging.getLogger(__name__)

# Duplicates of a status webhook (--duplicate) follow the original this much later.
DUPLICATE_GAP = 0.05
_BOOLS = ("pair_limit", "open_windows", "status_webhooks", "reorder", "duplicate", "user_ids")
_SECONDS = {"pair_interval": (0.001, 3600.0), "status_delay": (0.0, 600.0), "late": (0.0, 3600.0)}
EXTENSION = "waflow.simulator"


def new_wamid() -> str:
    return f"wamid.sim-{uuid.uuid4().hex}"


def current_simulator() -> "Simulator":
    return current_app.extensions[EXTENSION]


class Simulator:
    """Everything one simulator holds: limits and records, templates, users, faults, media, webhook posting."""

    def __init__(self, options: SimulatorOptions) -> None:
        self.options = options  # as started: /_sim/reset restores the runtime copy from it
        self.runtime = replace(options)
        self.clock = options.clock
        self.ledger = Ledger(self.runtime)
        self.templates = TemplateRegistry()
        self.users = Users(options.waba_id)
        self.faults = FaultQueue()
        self.media = MediaStore(options.clock, options.max_media_bytes)
        self.media_faults = media_fault_queue()
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
        self.media_faults.clear()
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

    # -- status webhooks ------------------------------------------------------------------------

    def schedule_statuses(self, send: Send, category: str | None, failure: Fault | None = None) -> None:
        """Queue sent → delivered → read for an accepted send, or one failed status for a ``fail`` fault."""
        rt = self.runtime
        if not rt.status_webhooks:
            return
        # Who the statuses name is settled now, with the options in force when the send was accepted.
        who = self._recipient(send)
        if failure is not None:
            at = rt.late + rt.status_delay
            self._schedule(partial(self._failed_body, send, who, int(send.accepted_at + at), failure), at)
            return
        # Event times stay in order; with --reorder only the order of delivery is shuffled.
        happened = [rt.late + rt.status_delay * (i + 1) for i in range(3)]
        delivery = self._shuffle.sample(happened, 3) if rt.reorder else happened
        for status, at, delay in zip(("sent", "delivered", "read"), happened, delivery):
            self._schedule(partial(self._status_body, send, who, status, int(send.accepted_at + at), category), delay)

    def _schedule(self, build: Any, delay: float) -> None:
        self.poster.schedule(build, delay)
        if self.runtime.duplicate:
            self.poster.schedule(build, delay + DUPLICATE_GAP)

    def _recipient(self, send: Send) -> tuple[str | None, str | None]:
        """(wa_id, user_id) of a send's recipient, as its status webhooks name them."""
        if send.to is not None:
            wa_id = "".join(c for c in send.to if c.isdigit())
            return wa_id, self.users.user_id_for(wa_id) if self.runtime.user_ids else None
        return self.users.wa_id_for(send.recipient), send.recipient

    def _status_body(self, send: Send, who: tuple[str | None, str | None], status: str, timestamp: int,
                     category: str | None) -> bytes:
        wa_id, user_id = who
        update = status_update(wamid=send.wamid, status=status, timestamp=timestamp, to=send.to,
                               recipient=send.recipient, biz_opaque_callback_data=send.biz_opaque_callback_data,
                               category=category)
        return envelope(self.options.waba_id, send.phone_number_id, self.options.display_phone_number,
                        {"contacts": [contact(wa_id=wa_id, user_id=user_id)], "statuses": [update]})

    def _failed_body(self, send: Send, who: tuple[str | None, str | None], timestamp: int, failure: Fault) -> bytes:
        update = status_update(wamid=send.wamid, status="failed", timestamp=timestamp, to=send.to,
                               recipient=send.recipient, biz_opaque_callback_data=send.biz_opaque_callback_data,
                               category=None, error=webhook_error(failure.fail, failure.details or "simulated failure"))
        value: dict[str, Any] = {"statuses": [update]}
        if failure.with_contact:
            wa_id, user_id = who
            value = {"contacts": [contact(wa_id=wa_id, user_id=None if wa_id else user_id)], **value}
        return envelope(self.options.waba_id, send.phone_number_id, self.options.display_phone_number, value)

    # -- inbound messages -----------------------------------------------------------------------

    def inject(self, doc: Any) -> tuple[dict[str, Any], int]:
        """Post one inbound message webhook now; the answer for /_sim/inbound and its HTTP status."""
        inbound = parse_inbound(doc, self.options.phone_number_id)
        user_id = inbound.user_id
        if user_id is None and not inbound.phone_only and self.runtime.user_ids:
            user_id = self.users.user_id_for(inbound.wa_id)
        wamid, result = new_wamid(), {"user_id": user_id}
        if inbound.media is not None:
            stored = self._stored(inbound.media)
            content = media_object(inbound.media, stored, self.media.url_for(stored, self.options.base_url),
                                   inbound.text)
            result["media_id"] = stored.id
        else:
            content = {"body": inbound.text}
        message = inbound_message(wamid=wamid, wa_id=inbound.wa_id, timestamp=int(self.clock()) - inbound.sent_ago,
                                  kind=inbound.kind, content=content, user_id=user_id)
        body = envelope(self.options.waba_id, inbound.phone_number_id, self.options.display_phone_number,
                        {"contacts": [contact(name=inbound.name, wa_id=inbound.wa_id, user_id=user_id)],
                         "messages": [message]})
        # The customer wrote: their window opens whether or not the gateway takes the webhook.
        for key in filter(None, (inbound.wa_id, user_id)):
            self.ledger.customer_wrote(key)
        return self._deliver_inbound(body, wamid, result)

    def _stored(self, media: InboundMedia) -> Media:
        """The media an inbound message carries: new bytes stored for 7 days, or a live id sent again."""
        if media.reuse is None:
            return self.media.put(media.data, media.mime_type, INBOUND_TTL)
        stored = self.media.get(media.reuse)
        if stored is None:
            raise ValueError(f"media.id {media.reuse} is no media the simulator holds")
        return stored

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
