"""A local server that speaks the OpenAI chat-completions API, for the chat drafter's tests.

Each test queues what the next requests get (status, JSON body or raw bytes, delay); with nothing queued the
server answers ``default`` (a normal completion at once, unless given another). ``bench/drafts.py`` runs it as
a model that answers in 2 s. Every request is recorded (headers and body) so a test can check what
the drafter sent. It listens on a free loopback port in a thread of the test process.
"""
from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def completion(content: str = "Baik, kami akan membantu.", finish_reason: str = "stop",
               prompt_tokens: int = 321, completion_tokens: int = 45) -> dict[str, Any]:
    return {"id": "chatcmpl-fake", "object": "chat.completion", "model": "fake-model",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": finish_reason}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens}}


@dataclass
class Reply:
    status: int = 200
    body: Any = field(default_factory=completion)  # a JSON value, or bytes sent as they are
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    at: float = 0.0  # time.time() when the request arrived


class FakeChatServer:
    def __init__(self, default: Reply | None = None) -> None:
        self.default = default or Reply()
        self.replies: deque[Reply] = deque()
        self.received: list[Received] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                length = int(self.headers.get("Content-Length", 0))
                server.received.append(Received(self.path, dict(self.headers), json.loads(self.rfile.read(length)),
                                                time.time()))
                reply = server.replies.popleft() if server.replies else server.default
                time.sleep(reply.delay)
                payload = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the drafter gave up waiting (the timeout tests)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02},
                                        name="fake-chat-server", daemon=True)

    def __enter__(self) -> FakeChatServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def then(self, *replies: Reply) -> FakeChatServer:
        self.replies.extend(replies)
        return self
