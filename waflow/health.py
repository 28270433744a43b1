"""Health of the web process, for load balancers and monitors.

- ``/healthz``: the process is alive and serving.
- ``/readyz``: ready to take Meta's webhooks, which means the broker takes
  publishes (the webhook needs nothing else). The body also reports whether the
  database answers, but a database outage never makes ``/readyz`` fail: the
  webhook keeps queueing and the workers catch up when it is back.
- ``/readyz/database``: the database alone (200 or 503), for monitoring.

Each check is cached for a moment, so probes every second cost no broker or
database round trip each.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

import sqlalchemy as sa
from flask import Blueprint, Response, current_app, jsonify

from waflow.broker import PublishError

logger = logging.getLogger(__name__)

bp = Blueprint("health", __name__)

# How long a check's answer is reused.
CACHE_SECONDS = 1.0
# The database check waits no longer than this for a connection.
DATABASE_TIMEOUT = 1


class _Cached:
    """One check's last answer, recomputed by at most one thread at a time once it is stale."""

    def __init__(self, check: Callable[[], str | None]) -> None:
        self.check = check
        self.lock = threading.Lock()
        self.answer: str | None = None
        self.at = float("-inf")

    def get(self) -> str | None:
        """None if healthy, else the reason."""
        if time.monotonic() - self.at < CACHE_SECONDS:
            return self.answer
        with self.lock:
            if time.monotonic() - self.at >= CACHE_SECONDS:
                self.answer, self.at = self.check(), time.monotonic()
        return self.answer


def _broker_check() -> str | None:
    try:
        current_app.extensions["waflow.publisher"].ready()
    except PublishError as exc:
        # The reason goes to the log; the unauthenticated answer only says "unavailable".
        logger.warning("readyz: broker not ready: %s", exc)
        return "unavailable"
    return None


def _database_check(url: str) -> Callable[[], str | None]:
    engine = None

    def check() -> str | None:
        nonlocal engine
        if engine is None:
            args = {"connect_timeout": DATABASE_TIMEOUT} if url.startswith("postgresql") else {"timeout": 1}
            engine = sa.create_engine(url, hide_parameters=True, pool_size=1, max_overflow=0,
                                      pool_pre_ping=True, connect_args=args)
        try:
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        except sa.exc.SQLAlchemyError as exc:
            logger.warning("readyz: database unreachable: %s", type(exc.orig or exc).__name__)
            return "unreachable"
        return None

    return check


def _checks() -> tuple[_Cached, _Cached]:
    found = current_app.extensions.get("waflow.health")
    if found is None:
        settings = current_app.config["WAFLOW_SETTINGS"]
        found = current_app.extensions["waflow.health"] = (_Cached(_broker_check),
                                                           _Cached(_database_check(settings.database_url)))
    return found


@bp.get("/healthz")
def healthz() -> Response:
    """The process is alive."""
    return Response("ok", mimetype="text/plain")


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    """Ready when the broker takes publishes; the database is reported, never decisive."""
    broker, database = (c.get() for c in _checks())
    body = {"ready": broker is None, "broker": broker or "ok", "database": database or "ok"}
    return jsonify(body), 200 if broker is None else 503


@bp.get("/readyz/database")
def readyz_database() -> tuple[Response, int]:
    """The database alone, for monitoring."""
    database = _checks()[1].get()
    return jsonify({"database": database or "ok"}), 200 if database is None else 503
