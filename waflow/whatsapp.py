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

import json
import logging
import time
from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable

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


def read_answer(status: int, data: bytes) -> Answer:
    """Turn Meta's HTTP answer (its status and body) into an ``Answer``."""
    try:
        doc = json.loads(data)
    except ValueError:
        doc = None
    if status == 200 and isinstance(doc, dict):
        messages = doc.get("messages") if isinstance(doc.get("messages"), list) else []
        contacts = doc.get("contacts") if isinstance(doc.get("contacts"), list) else []
        wamid = messages[0].get("id") if messages and isinstance(messages[0], dict) else None
        wa_id = contacts[0].get("wa_id") if contacts and isinstance(contacts[0], dict) else None
        if wamid or doc.get("success") is True:
            return Answer(Outcome.ACCEPTED, wamid=wamid, wa_id=wa_id, http_status=200)
    error = doc.get("error") if isinstance(doc, dict) and isinstance(doc.get("error"), dict) else {}
    code = error.get("code") if isinstance(error.get("code"), int) else None
    data_ = error.get("error_data") if isinstance(error.get("error_data"), dict) else {}
    title = error.get("message") if isinstance(error.get("message"), str) else None
    details = data_.get("details") if isinstance(data_.get("details"), str) else None
    if status == 200 and code is None:
        # A 200 means Meta took the request, but without a message id there is nothing to record:
        # sending again could deliver it twice. Its status webhooks (our id echoed) will settle it.
        return Answer(Outcome.UNKNOWN_OUTCOME, title="200 without a message id", http_status=200)
    return Answer(classify(code, status), code=code, title=title, details=details, http_status=status)


# A kept-alive connection idle longer than this is not used again: a server closes idle ones after its
# keep-alive timeout (5 s is common: Apache, Node, the simulator's gunicorn), and a send written just as
# the server closes its end is lost with no answer, which leaves the message in doubt. So the client
# opens a fresh connection instead, before the server's timeout can come.
IDLE_REUSE_LIMIT = 4.0


class _FreshWhileIdle:
    """A connection that reports itself dropped once idle for IDLE_REUSE_LIMIT (urllib3's pool then
    closes it and connects again before sending)."""

    _last_answer = 0.0

    @property
    def is_connected(self) -> bool:
        if self.sock is not None and time.monotonic() - self._last_answer > IDLE_REUSE_LIMIT:
            return False
        return super().is_connected  # type: ignore[misc]

    def getresponse(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().getresponse(*args, **kwargs)  # type: ignore[misc]
        finally:
            self._last_answer = time.monotonic()


class _HTTPConnection(_FreshWhileIdle, urllib3.connection.HTTPConnection):
    pass


class _HTTPSConnection(_FreshWhileIdle, urllib3.connection.HTTPSConnection):
    pass


class _HTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


class Client:
    """POSTs to the Graph API with the access token.

    Sends go through urllib3 directly (requests' own engine): at hundreds of sends a second,
    requests' layers above it (hooks, cookies, redirects, settings merged per call) cost more CPU
    than the call itself. ``session`` (requests) serves the occasional management call."""

    def __init__(self, api_url: str, access_token: str, session: requests.Session | None = None,
                 pool_size: int = 32) -> None:
        self.api_url = api_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {access_token}", "Content-Type": "application/json"}
        self.session = session or requests.Session()
        # The environment's proxy settings, read once (requests would look them up on every call).
        proxies = requests.utils.get_environ_proxies(self.api_url)
        self.session.proxies.update(proxies)
        self.session.trust_env = False
        proxy = proxies.get(urllib3.util.parse_url(self.api_url).scheme or "https") or proxies.get("all")
        # Timeouts are given per call (send), from CONNECT_TIMEOUT and READ_TIMEOUT as they stand then.
        kwargs = {"maxsize": pool_size, "retries": False, "ca_certs": requests.certs.where()}
        self.http = urllib3.ProxyManager(proxy, **kwargs) if proxy else urllib3.PoolManager(**kwargs)
        self.http.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}

    def __repr__(self) -> str:  # never the token
        return f"Client({self.api_url!r})"

    def preconnect(self, connections: int) -> None:
        """Open ``connections`` connections to the Graph host now (TCP and TLS, no request), as the
        first sends of as many threads at once would otherwise do while their slots pass."""
        pool = self.http.connection_from_url(self.api_url)
        # urllib3 has no public call for this: take connections out of the pool and put them back.
        opened = [pool._get_conn() for _ in range(max(1, min(connections, pool.pool.maxsize)))]
        try:
            for conn in opened:
                conn.connect()
                conn._last_answer = time.monotonic()
        finally:
            for conn in opened:
                pool._put_conn(conn)

    def send(self, phone_number_id: str, body: dict[str, Any], before: Callable[[], Any] | None = None) -> Answer:
        """POST one message; network failures become an ``Answer`` too, never an exception.

        ``before`` runs once the request is ready to write, just before it goes (the wait for the
        send's slot: what follows it is as short as it can be); if it raises, nothing is sent."""
        url = f"{self.api_url}/{phone_number_id}/messages"
        data = json.dumps(body, separators=(",", ":")).encode()
        if before is not None:
            before()
        try:
            response = self.http.request("POST", url, body=data, headers=self._headers,
                                         timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT, read=READ_TIMEOUT))
        except urllib3.exceptions.ReadTimeoutError:
            return Answer(Outcome.UNKNOWN_OUTCOME, title=f"no answer within {READ_TIMEOUT:.0f}s")
        except (urllib3.exceptions.ConnectTimeoutError, urllib3.exceptions.SSLError,
                urllib3.exceptions.ProxyError, urllib3.exceptions.LocationParseError) as exc:
            # Refused, unresolvable, or failed while connecting (NewConnectionError is a
            # ConnectTimeoutError): nothing went out.
            return Answer(Outcome.TRANSIENT, title=f"network error: {type(exc).__name__}")
        except urllib3.exceptions.ProtocolError:
            return Answer(Outcome.UNKNOWN_OUTCOME, title="connection lost before Meta answered")
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            # Anything else (a truncated answer body, an invalid response): the request went out.
            return Answer(Outcome.UNKNOWN_OUTCOME, title=f"unreadable answer: {type(exc).__name__}")
        return read_answer(response.status, response.data)


@dataclass(frozen=True)
class ApprovedTemplate:
    name: str
    language: str
    parameters: int  # how many body parameters it takes
    body: str


def approved_templates(client: Client, waba_id: str, language: str | None = None,
                       pages: int = 5) -> list[ApprovedTemplate]:
    """The account's approved templates (a management call: what a lawyer may send outside the 24-hour
    window). Raises requests' errors."""
    import re

    params: dict[str, Any] = {"status": "APPROVED", "fields": "name,language,status,components", "limit": 100}
    if language:
        params["language"] = language
    url: str | None = f"{client.api_url}/{waba_id}/message_templates"
    found: list[ApprovedTemplate] = []
    for _ in range(pages):
        if url is None:
            break
        response = client.session.get(url, headers=client._headers, params=params,
                                      timeout=(CONNECT_TIMEOUT, READ_TIMEOUT))
        response.raise_for_status()
        doc = response.json()
        for template in doc.get("data", []):
            if template.get("status", "APPROVED") != "APPROVED":
                continue
            body = next((c.get("text", "") for c in template.get("components", [])
                         if str(c.get("type", "")).upper() == "BODY"), "")
            found.append(ApprovedTemplate(template.get("name", ""), template.get("language", ""),
                                          len(set(re.findall(r"\{\{\s*(\w+)\s*\}\}", body))), body))
        url, params = (doc.get("paging") or {}).get("next"), {}
    return found


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
