"""The web process against slow and oversized clients, as it runs in production.

gunicorn is started with ``gunicorn.conf.py`` as shipped (the Procfile's ``web`` line), with the default
2 workers x 16 threads and the default ``WAFLOW_BODY_TIMEOUT``, on RabbitMQ when
``WAFLOW_TEST_BROKER_URL`` is set and on the embedded broker otherwise: a 200 is a webhook the broker took.
"""
from __future__ import annotations

import selectors
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import pytest
import requests

from support import AMQP_URL, Stack, compact, sign, text_webhook
from waflow import config

DEFAULTS = config.load({})
TIMEOUT = DEFAULTS.body_timeout
LIMIT = DEFAULTS.max_body_bytes
# What the tests allow beyond the timeout for the cut to happen and be seen (the watchdog looks every 0.25 s).
SLACK = 3.0
# Client text the stalled requests carry: it must never reach the web process's log.
CLIENT_TEXT = "Halo, saya perlu bantuan soal kontrak sewa"


@pytest.fixture(scope="module")
def web(tmp_path_factory) -> Iterator[Stack]:
    var_dir = tmp_path_factory.mktemp("webserver")
    stack = Stack(database_url=f"sqlite:///{var_dir}/waflow.db", broker_url=AMQP_URL or "embedded://",
                  var_dir=str(var_dir))
    for name in ("WEB_CONCURRENCY", "WEB_THREADS", "WAFLOW_BODY_TIMEOUT", "WAFLOW_MAX_BODY_BYTES"):
        stack.env.pop(name, None)  # the shipped defaults
    assert (DEFAULTS.web_concurrency, DEFAULTS.web_threads) == (2, 16) and TIMEOUT <= 10
    stack.start_web().wait_web()
    yield stack
    stack.stop()


def assert_cut_cleanly(stack: Stack) -> None:
    """The cuts were logged without client text, and no worker failed or was replaced."""
    log = (stack.log_dir / "web.log").read_text()
    assert "web: cut " in log
    assert CLIENT_TEXT not in log
    assert "Traceback" not in log and "Error" not in log, log[-3000:]
    assert log.count("Booting worker") == 2, log[-3000:]


def open_request(port: int, head: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(head)
    return sock


def stalled_upload(port: int) -> socket.socket:
    """Headers, a signature and ``Content-Length: 100``, then nothing."""
    return open_request(port, (
        "POST /webhooks/whatsapp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"X-Hub-Signature-256: sha256={'ab' * 32}\r\nX-Note: {CLIENT_TEXT}\r\nContent-Length: 100\r\n\r\n"
    ).encode())


def wait_closed(socks: dict[socket.socket, float], until: float) -> dict[socket.socket, tuple[float, bytes]]:
    """Read each socket until the server closes it; per socket: seconds from its start, and what it got."""
    got: dict[socket.socket, bytes] = {s: b"" for s in socks}
    closed: dict[socket.socket, tuple[float, bytes]] = {}
    with selectors.DefaultSelector() as sel:
        for sock in socks:
            sel.register(sock, selectors.EVENT_READ)
        while len(closed) < len(socks) and time.monotonic() < until:
            for key, _ in sel.select(timeout=max(0.0, until - time.monotonic())):
                sock = key.fileobj
                try:
                    data = sock.recv(65536)
                except ConnectionResetError:
                    data = b""
                if data:
                    got[sock] += data
                    continue
                closed[sock] = (time.monotonic() - socks[sock], got[sock])
                sel.unregister(sock)
    return closed


def post_webhook(stack: Stack, timeout: float = 15) -> tuple[int, float]:
    started = time.monotonic()
    status = stack.post(compact(text_webhook([f"wamid.WS{time.time_ns()}"])), timeout=timeout).status_code
    return status, time.monotonic() - started


def get_healthz(stack: Stack, timeout: float = 15) -> tuple[int, float]:
    started = time.monotonic()
    status = requests.get(f"http://127.0.0.1:{stack.port}/healthz", timeout=timeout).status_code
    return status, time.monotonic() - started


# --- stalled uploads and trickles (issue 15, item 2) --------------------------------------------------------------


def test_a_valid_webhook_and_healthz_are_answered_within_15_s_while_64_stalled_uploads_are_held(web):
    stalled = {}
    for _ in range(64):
        stalled[stalled_upload(web.port)] = time.monotonic()
    time.sleep(1)  # every thread of both workers is now blocked on a body that never comes
    try:
        with ThreadPoolExecutor(2) as pool:
            webhook, health = pool.submit(post_webhook, web), pool.submit(get_healthz, web)
            webhook_status, webhook_took = webhook.result()
            health_status, health_took = health.result()
        assert webhook_status == 200 and webhook_took < 15
        assert health_status == 200 and health_took < 15

        closed = wait_closed(stalled, until=min(stalled.values()) + TIMEOUT + SLACK + 5)
        assert len(closed) == 64, f"{64 - len(closed)} stalled connections still open"
        slowest = max(took for took, _ in closed.values())
        assert slowest <= TIMEOUT + SLACK
        # Each answered 400, the body cut short, and closed: never taken for a webhook, nor for a forgery.
        assert {got.split(b"\r\n", 1)[0] for _, got in closed.values()} == {b"HTTP/1.1 400 BAD REQUEST"}
    finally:
        for sock in stalled:
            sock.close()
    assert post_webhook(web)[0] == 200
    assert_cut_cleanly(web)
    assert "gateway: rejected webhook: body ended after 0 of 100 bytes" in (web.log_dir / "web.log").read_text()


def test_headers_or_a_body_trickling_in_are_cut_at_the_timeout(web):
    # One byte a second: each read returns well within any per-read timeout, so only a deadline ends them.
    headers = open_request(web.port, b"POST /webhooks/whatsapp HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
    body = open_request(web.port, (
        "POST /webhooks/whatsapp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"X-Hub-Signature-256: sha256={'cd' * 32}\r\nContent-Length: 100000\r\n\r\n").encode())
    started = time.monotonic()
    open_ = {headers: started, body: started}
    cut: dict[socket.socket, float] = {}
    try:
        while open_ and time.monotonic() - started < 3 * TIMEOUT:
            for sock, (took, _) in wait_closed(open_, until=time.monotonic() + 1).items():
                cut[sock] = took
                del open_[sock]
            for sock in list(open_):
                try:
                    sock.send(b"a")
                except (BrokenPipeError, ConnectionResetError):
                    cut[sock] = time.monotonic() - started
                    del open_[sock]
        assert headers in cut and cut[headers] <= TIMEOUT + SLACK
        assert body in cut and cut[body] <= TIMEOUT + SLACK
    finally:
        headers.close()
        body.close()
    assert get_healthz(web)[0] == 200
    assert_cut_cleanly(web)


# --- bodies over the limit (issue 15, item 6) ---------------------------------------------------------------------


def chunks(body: bytes, size: int = 64 * 1024) -> Iterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start:start + size]


def padded(size: int) -> bytes:
    """A JSON body of exactly ``size`` bytes."""
    head = b'{"object":"whatsapp_business_account","pad":"'
    return head + b"x" * (size - len(head) - 2) + b'"}'


def test_a_signed_chunked_body_over_the_limit_gets_413(web):
    body = padded(LIMIT + 1)
    response = requests.post(web.url, data=chunks(body), timeout=30,
                             headers={"X-Hub-Signature-256": sign(body), "Content-Type": "application/json"})
    assert response.request.headers.get("Transfer-Encoding") == "chunked"
    assert response.status_code == 413


def test_a_signed_body_over_the_limit_with_content_length_gets_413(web):
    body = padded(LIMIT + 1)
    response = web.post(body, timeout=30)
    assert response.request.headers["Content-Length"] == str(LIMIT + 1)
    assert response.status_code == 413


@pytest.mark.parametrize("size", [LIMIT, 1024])
def test_a_signed_chunked_body_up_to_the_limit_is_queued(web, size):
    body = padded(size)
    assert len(body) == size
    response = requests.post(web.url, data=chunks(body), timeout=30,
                             headers={"X-Hub-Signature-256": sign(body), "Content-Type": "application/json"})
    assert response.request.headers.get("Transfer-Encoding") == "chunked"
    assert response.status_code == 200
