"""Helpers for the dashboard's tests: an app on a test database, users, signing in, the real process.

The fixtures built on these are in ``conftest.py``: ``dashboard_app`` / ``dashboard_client`` (anonymous),
``lawyer`` and ``admin`` (users with ``PASSWORD``), ``lawyer_client`` / ``admin_client`` (signed in), and for
the browser ``dashboard_server`` (gunicorn as the Procfile runs it) and ``browser`` (Chromium).
"""
from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from support import ROOT, free_port, wait_for
from waflow import config, conversation_state, users
from waflow.db import transaction

PASSWORD = "correct horse battery staple"
CHROMIUM = "/usr/bin/chromium"
# What a root process in a sandbox needs to run Chromium headless, with nothing phoning home.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
_TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')


def settings_for(db_url: str, var_dir: str, **env: str) -> config.Settings:
    return config.load({"WAFLOW_VAR_DIR": var_dir, "DATABASE_URL": db_url, **env})


def production_settings(db_url: str, var_dir: str, **changes: Any) -> config.Settings:
    """Production's settings on a test database (``config.load`` refuses SQLite in production, rightly; the
    dashboard's own production rules are what these tests are about)."""
    return dataclasses.replace(settings_for(db_url, var_dir), env="production",
                               **{"secret_key": "k" * 40, **changes})


def make_app(db_url: str, var_dir: str, test_config: dict[str, Any] | None = None,
             settings: config.Settings | None = None, **env: str):
    from waflow.dashboard import create_dashboard_app

    chosen = settings or settings_for(db_url, var_dir, **env)
    return create_dashboard_app({"WAFLOW_SETTINGS": chosen, **(test_config or {})})


def make_user(db_url: str, email: str, *, role: str = "lawyer", locale: str = "id", name: str | None = None,
              password: str = PASSWORD, is_demo: bool = False) -> users.Person:
    with transaction(db_url) as conn:
        return users.create(conn, email, name=name or email.split("@")[0].title(), role=role, locale=locale,
                            password=password, is_demo=is_demo)


def csrf_token(client, path: str = "/login", **environ: Any) -> str:
    """The CSRF token a page of ``path`` carries (the session's token, in its forms)."""
    page = client.get(path, **environ)
    match = _TOKEN.search(page.get_data(as_text=True))
    assert match, f"no csrf_token on {path} ({page.status_code})"
    return match.group(1)


def login(client, email: str, password: str = PASSWORD, next: str | None = None, **environ: Any):
    token = csrf_token(client, **{k: v for k, v in environ.items() if k == "base_url"})
    query = {"next": next} if next is not None else None
    return client.post("/login", query_string=query, data={"email": email, "password": password,
                                                           "csrf_token": token}, **environ)


def chromium_or_skip() -> None:
    """Skip a browser test, saying why, when Chromium or Playwright is missing; fail instead in CI."""
    reason = None
    if not Path(CHROMIUM).exists():
        reason = f"{CHROMIUM} is not installed (apt-get install chromium): no browser to test the dashboard in"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            reason = "Playwright is not installed (requirements-test.txt): no browser driver"
    if reason:
        if os.environ.get("WAFLOW_TEST_REQUIRE_SERVICES") == "1":
            pytest.fail(f"WAFLOW_TEST_REQUIRE_SERVICES=1 but {reason}")
        pytest.skip(reason)


class DashboardProcess:
    """The dashboard as the Procfile runs it: ``gunicorn -c gunicorn.conf.py 'waflow.dashboard:
    create_dashboard_app()'``, on a free port, with an environment of its own."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.env = {**{k: v for k, v in os.environ.items() if not k.startswith(("WAFLOW_TEST_", "WAFLOW_",
                                                                                  "DATABASE_URL", "REDIS_URL"))},
                    "PORT": str(self.port), "WEB_CONCURRENCY": "1", "WEB_THREADS": "8", "PYTHONUNBUFFERED": "1",
                    **env}
        self.proc: subprocess.Popen | None = None

    def start(self, wait: bool = True) -> "DashboardProcess":
        gunicorn = str(Path(sys.executable).parent / "gunicorn")
        with open(self.log, "a") as out:
            self.proc = subprocess.Popen([gunicorn, "-c", "gunicorn.conf.py", "waflow.dashboard:create_dashboard_app()"],
                                         cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        if wait:
            wait_for(self._ready, 60, interval=0.2, what="the dashboard's gunicorn")
        return self

    def _ready(self) -> bool:
        import requests

        if self.proc.poll() is not None:
            raise AssertionError(f"the dashboard exited ({self.proc.returncode}):\n{self.output()[-3000:]}")
        try:
            return requests.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait(self, timeout: float = 60) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)



def seed_conversation(db_url: str, *, name: str | None, wa_id: str, bodies: list[str],
                      direction: str = "inbound", phone_number_id: str = "100000000000001",
                      last_at: Any = None) -> int:
    """A contact, their conversation and its text messages, written straight to the tables (not through the
    pipeline), with the inbox's columns derived from them (``conversation_state.recompute``, as a seeding
    script does): for pages that only read them. Returns the conversation's id."""
    import uuid
    from datetime import datetime, timedelta, timezone

    import sqlalchemy as sa

    from waflow.models import Contact, Conversation, Message

    now = last_at or datetime.now(timezone.utc)
    with transaction(db_url) as conn:
        contact_id = conn.execute(sa.insert(Contact).values(wa_id=wa_id, name=name).returning(Contact.id)).scalar_one()
        conversation_id = conn.execute(sa.insert(Conversation).values(
            contact_id=contact_id, phone_number_id=phone_number_id, last_inbound_at=now)
            .returning(Conversation.id)).scalar_one()
        for i, body in enumerate(bodies):
            at = now - timedelta(minutes=len(bodies) - 1 - i)  # the last one at ``last_at``
            conn.execute(sa.insert(Message).values(
                wamid=f"wamid.seed-{uuid.uuid4().hex}", conversation_id=conversation_id, contact_id=contact_id,
                phone_number_id=phone_number_id, direction=direction, type="text", body=body, sent_at=at,
                received_at=at, content={"text": {"body": body}}))
        conversation_state.recompute(conn, conversation_id)
    return conversation_id
