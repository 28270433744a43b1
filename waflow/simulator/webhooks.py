"""Webhooks the simulator posts to the gateway: status updates and inbound messages (the demo traffic's
clients are ``demo.py``'s).

Shapes follow Meta's (reference §4, held key by key against pywa's fixtures in
``tests/test_simulator_shapes.py``): ``entry[].id`` is the WABA id; ``value.contacts`` names the user
(``wa_id`` and, since April 2026, ``user_id``) in every message and status webhook except a
``failed`` status, which Meta sends without it.

Every body is compact JSON signed as Meta signs it (``X-Hub-Signature-256``, HMAC-SHA256 of the
raw bytes with the app secret). Status posts never happen on a request thread: a scheduler thread
keeps a heap of due posts and hands them to a small thread pool; a non-200 answer or a network
error is retried with doubling backoff, as Meta does (a few attempts, each failure logged).
Delays are measured on ``time.monotonic()``; the ``timestamp`` fields come from the simulator's clock.
"""
from __future__ import annotations

import heapq
import itertools
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import requests

from waflow.gateway import SIGNATURE_HEADER, signature_for
from waflow.simulator.errors import TITLES

logger = logging.getLogger(__name__)

Body = bytes | Callable[[], bytes]
# Posts waiting past this many are dropped (and counted): a gateway that is down for long must
# not grow the simulator's memory without bound.
MAX_PENDING = 100_000


def compact(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def envelope(waba_id: str, phone_number_id: str, display_phone_number: str, value: dict[str, Any]) -> bytes:
    """A ``messages`` webhook body around ``value`` (which holds ``messages`` or ``statuses``)."""
    value = {"messaging_product": "whatsapp",
             "metadata": {"display_phone_number": display_phone_number, "phone_number_id": phone_number_id},
             **value}
    return compact({"object": "whatsapp_business_account",
                    "entry": [{"id": waba_id, "changes": [{"value": value, "field": "messages"}]}]})


class WebhookPoster:
    """Signed POSTs to one URL, now or later, with retries; counters for /_sim/stats."""

    def __init__(self, url: str, app_secret: str, *, attempts: int, backoff: float, timeout: float,
                 workers: int) -> None:
        self.url = url
        self._secret = app_secret
        self._attempts, self._backoff, self._timeout, self._workers = attempts, backoff, timeout, workers
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, int, Body]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._closed = False
        self.counts = {"delivered": 0, "retried": 0, "failed": 0, "dropped": 0}

    def post(self, body: bytes) -> int:
        """POST ``body`` once, now, on the calling thread; the HTTP status (raises requests' errors)."""
        response = requests.post(self.url, data=body, timeout=self._timeout, headers={
            "Content-Type": "application/json", SIGNATURE_HEADER: signature_for(self._secret, body)})
        return response.status_code

    def schedule(self, body: Body, delay: float, attempt: int = 1) -> None:
        """Post ``body`` (or what the callable builds, when due) after ``delay`` seconds, off this thread."""
        with self._cond:
            if self._closed:
                return
            if len(self._heap) >= MAX_PENDING:
                self.counts["dropped"] += 1
                return
            heapq.heappush(self._heap, (time.monotonic() + delay, next(self._order), attempt, body))
            if self._thread is None:
                self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="sim-webhook")
                self._thread = threading.Thread(target=self._run, name="sim-webhook-scheduler", daemon=True)
                self._thread.start()
            self._cond.notify()

    def pending(self) -> int:
        with self._cond:
            return len(self._heap)

    def clear(self) -> None:
        with self._cond:
            self._heap.clear()
            self.counts = dict.fromkeys(self.counts, 0)

    def close(self) -> None:
        """Stop the scheduler and the pool; posts not yet due are abandoned."""
        with self._cond:
            self._closed = True
            self._heap.clear()
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and (not self._heap or self._heap[0][0] > time.monotonic()):
                    self._cond.wait(self._heap[0][0] - time.monotonic() if self._heap else None)
                if self._closed:
                    return
                due = []
                now = time.monotonic()
                while self._heap and self._heap[0][0] <= now:
                    due.append(heapq.heappop(self._heap))
                for _, _, attempt, body in due:
                    self._pool.submit(self._deliver, body, attempt)

    def _deliver(self, body: Body, attempt: int) -> None:
        raw = body() if callable(body) else body
        try:
            status, problem = self.post(raw), None
        except requests.RequestException as exc:
            status, problem = None, type(exc).__name__
        with self._cond:
            if status == 200:
                self.counts["delivered"] += 1
                return
            retry = attempt < self._attempts and not self._closed
            self.counts["retried" if retry else "failed"] += 1
        outcome = problem or f"HTTP {status}"
        if retry:
            delay = self._backoff * 2 ** (attempt - 1)
            logger.info("simulator: webhook to %s got %s (attempt %d/%d), retrying in %.1fs",
                        self.url, outcome, attempt, self._attempts, delay)
            self.schedule(raw, delay, attempt + 1)
        else:
            logger.warning("simulator: webhook to %s got %s after %d attempts, giving up",
                           self.url, outcome, attempt)


ERROR_CODES_URL = "https://developers.facebook.com/documentation/business-messaging/whatsapp/support/error-codes/"


def contact(*, wa_id: str | None, user_id: str | None, name: str | None = None) -> dict[str, Any]:
    """One ``contacts[]`` item: the profile name (inbound messages only), the number, the BSUID."""
    card: dict[str, Any] = {}
    if name is not None:
        card["profile"] = {"name": name}
    if wa_id is not None:
        card["wa_id"] = wa_id
    if user_id is not None:
        card["user_id"] = user_id
    return card


def webhook_error(code: int, details: str) -> dict[str, Any]:
    """One ``errors[]`` item of a webhook, as a failed status carries it (§4.2)."""
    title = TITLES.get(code, "Simulated error")
    return {"code": code, "title": title, "message": title, "error_data": {"details": details},
            "href": ERROR_CODES_URL}


def status_update(*, wamid: str, status: str, timestamp: int, to: str | None, recipient: str | None,
                  biz_opaque_callback_data: str | None, category: str | None,
                  error: dict[str, Any] | None = None) -> dict[str, Any]:
    """One ``statuses[]`` item; ``category`` is the template's, None for a free-form (service) message;
    ``error`` (a ``webhook_error``) goes with a ``failed`` status."""
    update: dict[str, Any] = {"id": wamid, "status": status, "timestamp": str(timestamp)}
    if to is not None:
        update["recipient_id"] = "".join(c for c in to if c.isdigit())
    if recipient is not None:
        update["recipient_user_id"] = recipient
    if biz_opaque_callback_data is not None:
        update["biz_opaque_callback_data"] = biz_opaque_callback_data
    if status == "sent":
        # Per-message pricing (PMP); a free-form reply inside the customer's window is free.
        update["pricing"] = ({"billable": True, "pricing_model": "PMP", "type": "regular",
                              "category": category.lower()} if category else
                             {"billable": False, "pricing_model": "PMP", "type": "free_customer_service",
                              "category": "service"})
    if error is not None:
        update["errors"] = [error]
    return update


def inbound_message(*, wamid: str, wa_id: str, timestamp: int, kind: str, content: dict[str, Any],
                    user_id: str | None) -> dict[str, Any]:
    message = {"from": wa_id, "id": wamid, "timestamp": str(timestamp), "type": kind, kind: content}
    if user_id is not None:
        message["from_user_id"] = user_id
    return message
