"""HTTP pieces the simulator's blueprints share: compact JSON, Meta's error answer, the Bearer
check, the version check, and closing a client's connection without an answer."""
from __future__ import annotations

import hmac
import json
import re
import socket
from typing import Any

from flask import Response, abort, request

from waflow.simulator.errors import MetaError
from waflow.simulator.state import Simulator

VERSION = re.compile(r"v[0-9]+(\.[0-9]+)?")


class ConnectionDropped(RuntimeError):
    """A fault that closes the connection, under a server that exposes no socket (Flask's test client)."""


def json_response(doc: Any, status: int = 200) -> Response:
    """Compact JSON: cheaper than jsonify on the hot path, and the bytes Meta would send."""
    return Response(json.dumps(doc, separators=(",", ":")), status=status, mimetype="application/json")


def error_response(exc: MetaError) -> Response:
    response = json_response(exc.body(), exc.status)
    if exc.code == 190:
        response.headers["WWW-Authenticate"] = 'OAuth "Facebook Platform" "invalid_token" "Invalid OAuth access token"'
    return response


def authorize(sim: Simulator) -> None:
    """Raise 190 unless the request carries the simulator's Bearer token (compared in constant time)."""
    header = request.headers.get("Authorization", "")
    given = header[7:].strip() if header.startswith("Bearer ") else ""
    if not given or not hmac.compare_digest(given.encode(), sim.options.access_token.encode()):
        raise MetaError(190, "the Bearer access token is missing or invalid")


def check_version(version: str) -> None:
    if not VERSION.fullmatch(version):
        abort(404)


def client_socket() -> socket.socket:
    """The client's connection (gunicorn and werkzeug expose it); ConnectionDropped without one."""
    sock = request.environ.get("gunicorn.socket") or request.environ.get("werkzeug.socket")
    if sock is None:
        raise ConnectionDropped("this server exposes no socket to close")
    return sock


def shut(sock: socket.socket) -> None:
    """Close a client's connection at once, both ways: whatever the server writes next is lost."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
