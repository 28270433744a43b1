"""What the simulator's tests share: test options, a fake clock, a webhook receiver, servers, helpers.

The fixtures here (``clock``, ``make``, ``sim``, ``receiver``, ``serve``) are imported by each
``tests/test_simulator*.py`` module that uses them.
"""
from __future__ import annotations

import http.server
import json
import threading
from typing import Any, Iterator

import pytest
from flask import Flask
from werkzeug.serving import make_server

from waflow.simulator import SimulatorOptions, create_simulator

TOKEN = "sim-test-access-token"
SECRET = "sim-test-app-secret"
NUMBER = "100000000000001"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
T0 = 1_764_000_000.0
# Nothing listens on port 9 (discard) on loopback: webhooks there fail at once.
NOWHERE = "http://127.0.0.1:9/webhooks/whatsapp"


class FakeClock:
    """The simulator's clock, moved by the test."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Receiver:
    """A local HTTP server standing in for the gateway: records every POST, answers scripted statuses."""

    def __init__(self) -> None:
        self.posts: list[tuple[dict[str, str], bytes]] = []
        self.script: list[int] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver._lock:
                    receiver.posts.append((dict(self.headers), body))
                    status = receiver.script.pop(0) if receiver.script else 200
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"OK")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/webhooks/whatsapp"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def docs(self) -> list[dict[str, Any]]:
        with self._lock:
            return [json.loads(body) for _, body in self.posts]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make(clock) -> Iterator[Any]:
    """Build simulators (test options, the fake clock) and close them afterwards."""
    apps: list[Flask] = []

    def build(**overrides: Any) -> Flask:
        options = {"access_token": TOKEN, "app_secret": SECRET, "webhook_url": NOWHERE, "clock": clock,
                   "status_webhooks": False, "open_windows": True, "webhook_timeout": 2.0, **overrides}
        app = create_simulator(SimulatorOptions(**options))
        apps.append(app)
        return app

    yield build
    for app in apps:
        app.extensions["waflow.simulator"].close()


@pytest.fixture
def sim(make):
    return make().test_client()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


@pytest.fixture
def serve() -> Iterator[Any]:
    """Serve a simulator app on a real loopback port (werkzeug, threaded; any free one unless given);
    yields its base URL."""
    servers = []

    def start(app: Flask, port: int = 0) -> str:
        server = make_server("127.0.0.1", port, app, threaded=True)
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def text(to: str = "+15551230001", body: str = "Hello from the firm", **extra: Any) -> dict[str, Any]:
    return {"messaging_product": "whatsapp", "recipient_type": "individual", "to": to, "type": "text",
            "text": {"body": body}, **extra}


def template(name: str, language: str = "en_US", params: int = 0, to: str = "+15551230001") -> dict[str, Any]:
    components = [{"type": "body", "parameters": [{"type": "text", "text": f"p{i}"} for i in range(params)]}]
    return {"messaging_product": "whatsapp", "to": to, "type": "template",
            "template": {"name": name, "language": {"code": language}, "components": components}}


def send(client: Any, doc: Any, number: str = NUMBER, headers: dict[str, str] | None = None) -> Any:
    return client.post(f"/v25.0/{number}/messages", json=doc, headers=AUTH if headers is None else headers)


def assert_meta_error(response: Any, code: int, status: int, field: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    error = response.get_json()["error"]
    assert set(error) == {"message", "type", "code", "error_data", "fbtrace_id"}
    assert error["code"] == code
    assert error["type"] == "OAuthException"
    assert error["message"].startswith(f"(#{code}) ") and len(error["message"]) > len(f"(#{code}) ")
    assert error["error_data"]["messaging_product"] == "whatsapp"
    assert error["fbtrace_id"]
    if field is not None:
        assert field in error["error_data"]["details"]
    return error


def sends(client: Any, **params: Any) -> list[dict[str, Any]]:
    return client.get("/_sim/sends", query_string=params).get_json()["sends"]


def stats(client: Any) -> dict[str, Any]:
    return client.get("/_sim/stats").get_json()
