"""The WhatsApp Cloud API client waflow sends with, and Meta's answers sorted by what to do.

The send path calls only ``POST /{phone_number_id}/messages``. Meta's answers
are classified by error ``code`` (never the HTTP status or the deprecated
subcode), in one table, into what the sender does next:

- ``THROUGHPUT`` (130429): the number is over its throughput; pause every send
  for the number until the window clears and put the message back, without
  spending a retry.
- ``PAIR`` (131056): too many messages to this one recipient; wait 4^X seconds
  before trying that recipient again, other recipients unaffected.
- ``MAINTENANCE`` (131057): the account is in maintenance (e.g. a throughput
  upgrade); wait at least 60 s.
- ``TRANSIENT``: Meta or the network had a passing problem (codes 1, 2, 4,
  80007, 131000, 131016, 133004, a 5xx without a code, a refused or timed-out
  connection); the retry policy retries it, 3 times, then dead-letters it.
- ``PERMANENT``: anything else with a code (a bad parameter, an undeliverable
  recipient, a closed 24-hour window, a template problem, an expired token...):
  the message fails at once, keeping Meta's code and text.
- ``UNKNOWN_OUTCOME``: the request went out and no readable answer came back (a
  read timeout, a connection dropped mid-answer, a truncated body, a 200 without
  a message id). Meta takes no idempotency key, so sending again could deliver
  it twice: the message is left in doubt, for status webhooks or a person to settle.

Codes and their meaning: ``../shared/reference/whatsapp-cloud-api.md`` section 7.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import Enum
from typing import Any

import requests
import urllib3

logger = logging.getLogger(__name__)


class Outcome(str, Enum):
    ACCEPTED = "accepted"
    THROUGHPUT = "throughput"
    PAIR = "pair"
    MAINTENANCE = "maintenance"
    TRANSIENT = "transient"
    PERMANENT = "permanent"
    UNKNOWN_OUTCOME = "unknown_outcome"


THROUGHPUT_CODES = frozenset({130429})
PAIR_CODES = frozenset({131056})
MAINTENANCE_CODES = frozenset({131057})
# Meta: "try again" / temporary downtime / service or server temporarily unavailable, and the
# app- and WABA-level API rate limits, which clear by themselves with backoff.
TRANSIENT_CODES = frozenset({1, 2, 4, 80007, 131000, 131016, 133004})
# Every other code of the reference's table is permanent for this message: named here so a test
# can check the table is covered, and so a reader sees the decision.
PERMANENT_CODES = frozenset({
    0, 3, 10, 100, 190, 368, 130403, 130497, 131005, 131008, 131009, 131021, 131026, 131030, 131031, 131042,
    131045, 131047, 131048, 131049, 131050, 131051, 131052, 131053, 131062, 131064,
    132000, 132001, 132005, 132007, 132012, 132015, 132016, 133010, 135000,
}) | frozenset(range(200, 300))

# Connect and read timeouts for every call (the sender runs on the threads pool, which has no
# task time limits: a call without a timeout could hold a worker thread forever).
CONNECT_TIMEOUT = 3.05
READ_TIMEOUT = 15.0


@dataclass(frozen=True)
class Answer:
    """What one send came to."""

    outcome: Outcome
    wamid: str | None = None
    wa_id: str | None = None
    code: int | None = None
    title: str | None = None
    details: str | None = None
    http_status: int | None = None

    @property
    def reason(self) -> str:
        parts = [f"#{self.code}" if self.code is not None else f"HTTP {self.http_status}" if self.http_status else "",
                 self.title or "", self.details or ""]
        return " ".join(p for p in parts if p) or self.outcome.value


def classify(code: int | None, http_status: int | None) -> Outcome:
    """What to do about an error answer, by Meta's code (the HTTP status only when there is no code)."""
    if code is not None:
        if code in THROUGHPUT_CODES:
            return Outcome.THROUGHPUT
        if code in PAIR_CODES:
            return Outcome.PAIR
        if code in MAINTENANCE_CODES:
            return Outcome.MAINTENANCE
        if code in TRANSIENT_CODES:
            return Outcome.TRANSIENT
        return Outcome.PERMANENT
    if http_status is not None and (http_status >= 500 or http_status == 429):
        return Outcome.TRANSIENT
    return Outcome.PERMANENT


def read_answer(response: requests.Response) -> Answer:
    """Turn Meta's HTTP answer into an ``Answer``."""
    try:
        doc = response.json()
    except ValueError:
        doc = None
    if response.status_code == 200 and isinstance(doc, dict):
        messages = doc.get("messages") if isinstance(doc.get("messages"), list) else []
        contacts = doc.get("contacts") if isinstance(doc.get("contacts"), list) else []
        wamid = messages[0].get("id") if messages and isinstance(messages[0], dict) else None
        wa_id = contacts[0].get("wa_id") if contacts and isinstance(contacts[0], dict) else None
        if wamid or doc.get("success") is True:
            return Answer(Outcome.ACCEPTED, wamid=wamid, wa_id=wa_id, http_status=200)
    error = doc.get("error") if isinstance(doc, dict) and isinstance(doc.get("error"), dict) else {}
    code = error.get("code") if isinstance(error.get("code"), int) else None
    data = error.get("error_data") if isinstance(error.get("error_data"), dict) else {}
    title = error.get("message") if isinstance(error.get("message"), str) else None
    details = data.get("details") if isinstance(data.get("details"), str) else None
    if response.status_code == 200 and code is None:
        # A 200 means Meta took the request, but without a message id there is nothing to record:
        # sending again could deliver it twice. Its status webhooks (our id echoed) will settle it.
        return Answer(Outcome.UNKNOWN_OUTCOME, title="200 without a message id", http_status=200)
    return Answer(classify(code, response.status_code), code=code, title=title, details=details,
                  http_status=response.status_code)


class Client:
    """POSTs to the Graph API with the access token; one ``requests.Session`` per client."""

    def __init__(self, api_url: str, access_token: str, session: requests.Session | None = None) -> None:
        self.api_url = api_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {access_token}", "Content-Type": "application/json"}
        self.session = session or requests.Session()
        # Read the environment's proxy settings once, not on every request (requests otherwise looks
        # them up, and for a .netrc, per call: a fifth of the sender's CPU at 400 sends a second).
        self.session.proxies.update(requests.utils.get_environ_proxies(self.api_url))
        self.session.trust_env = False

    def __repr__(self) -> str:  # never the token
        return f"Client({self.api_url!r})"

    def send(self, phone_number_id: str, body: dict[str, Any]) -> Answer:
        """POST one message; network failures become an ``Answer`` too, never an exception."""
        url = f"{self.api_url}/{phone_number_id}/messages"
        try:
            response = self.session.post(url, json=body, headers=self._headers,
                                         timeout=(CONNECT_TIMEOUT, READ_TIMEOUT))
        except requests.ReadTimeout:
            return Answer(Outcome.UNKNOWN_OUTCOME, title=f"no answer within {READ_TIMEOUT:.0f}s")
        except (requests.ConnectionError, requests.Timeout) as exc:
            if _sent_before_failing(exc):
                return Answer(Outcome.UNKNOWN_OUTCOME, title="connection lost before Meta answered")
            return Answer(Outcome.TRANSIENT, title=f"network error: {type(exc).__name__}")
        except requests.RequestException as exc:
            # Anything else (a truncated answer body, an invalid response): the request went out.
            return Answer(Outcome.UNKNOWN_OUTCOME, title=f"unreadable answer: {type(exc).__name__}")
        return read_answer(response)


def _sent_before_failing(exc: requests.RequestException) -> bool:
    """True if the connection broke after the request went out (Meta may have it): the connection
    was aborted or reset mid-exchange. Refused, unresolvable, or timed out while connecting: not sent."""
    if isinstance(exc, requests.ConnectTimeout):
        return False
    inner = exc.args[0] if exc.args else None
    if isinstance(inner, urllib3.exceptions.MaxRetryError):
        inner = inner.reason
    return isinstance(inner, urllib3.exceptions.ProtocolError)


class TemplateNotFound(LookupError):
    """Meta has no approved template by that name and language."""


def template_parameter_count(client: Client, waba_id: str, name: str, language: str) -> int:
    """How many body parameters ({{1}}, {{2}}, ...) the approved template takes (a management call,
    once per broadcast; never on the send path). Raises TemplateNotFound, or requests' errors."""
    import re

    response = client.session.get(f"{client.api_url}/{waba_id}/message_templates", headers=client._headers,
                                  params={"name": name, "language": language},
                                  timeout=(CONNECT_TIMEOUT, READ_TIMEOUT))
    response.raise_for_status()
    for template in response.json().get("data", []):
        if template.get("name") == name and template.get("language") == language:
            body = next((c.get("text", "") for c in template.get("components", [])
                         if str(c.get("type", "")).upper() == "BODY"), "")
            return len(set(re.findall(r"\{\{\s*(\w+)\s*\}\}", body)))
    raise TemplateNotFound(f"no approved template {name!r} in {language}")
