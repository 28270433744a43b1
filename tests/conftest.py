"""Shared fixtures.

Service-backed tests read their URLs from the environment and skip, saying so,
when a URL is not set (a fresh laptop has no server; `.ci/run` sets both):

- ``WAFLOW_TEST_DATABASE_URL``: a PostgreSQL database the tests may wipe.
- ``WAFLOW_TEST_BROKER_URL``: a RabbitMQ vhost the tests may purge.

Everything else runs on the embedded default (SQLite, kombu's filesystem
transport) in a temporary folder.
"""
from __future__ import annotations

import os
import tempfile

# Settings are read once, at import: point them at a scratch folder first.
_VAR = tempfile.mkdtemp(prefix="waflow-tests-")
for _name in ("WAFLOW_ENV", "WHATSAPP_APP_SECRET", "WHATSAPP_VERIFY_TOKEN", "FLOWER_BASIC_AUTH", "DATABASE_URL",
              "CELERY_BROKER_URL", "PORT", "SECRET_KEY", "WAFLOW_TRUSTED_PROXIES"):
    os.environ.pop(_name, None)
os.environ["WAFLOW_VAR_DIR"] = _VAR

import pytest  # noqa: E402
import sqlalchemy as sa  # noqa: E402

from support import (  # noqa: E402
    AMQP_URL, PG_URL, REDIS_URL, REFERENCE_SECRET, SKIP_AMQP, SKIP_PG, RecordingPublisher, SimulatorProcess, migrate,
    wipe,
)
from waflow import config  # noqa: E402

SKIP_REDIS = "WAFLOW_TEST_REDIS_URL is not set: no Redis to test against (see README, 'Test it')"



def pytest_sessionstart(session) -> None:
    # CI sets WAFLOW_TEST_REQUIRE_SERVICES=1: there, a missing service is a failure, not a skip.
    if os.environ.get("WAFLOW_TEST_REQUIRE_SERVICES") == "1" and not (PG_URL and AMQP_URL and REDIS_URL):
        pytest.exit("WAFLOW_TEST_REQUIRE_SERVICES=1 but WAFLOW_TEST_DATABASE_URL, WAFLOW_TEST_BROKER_URL or "
                    "WAFLOW_TEST_REDIS_URL is not set", returncode=3)


@pytest.fixture(scope="module")
def meta():
    """The Meta simulator for the tests that send: no status webhooks, every client's 24-hour window open, a
    burst of 1,000 sends per pair of numbers. A module that needs another simulator defines its own ``meta``."""
    sim = SimulatorProcess("--no-status-webhooks", "--open-windows", "--pair-burst", "1000").start()
    yield sim
    sim.stop()


requires_rabbitmq = pytest.mark.skipif(not AMQP_URL, reason=SKIP_AMQP)
requires_redis = pytest.mark.skipif(not REDIS_URL, reason=SKIP_REDIS)


@pytest.fixture(scope="session")
def var_dir() -> str:
    return _VAR


@pytest.fixture
def settings() -> config.Settings:
    """Development settings with the reference vector's app secret."""
    return config.load({"WAFLOW_VAR_DIR": _VAR, "WHATSAPP_APP_SECRET": REFERENCE_SECRET,
                        "WHATSAPP_VERIFY_TOKEN": "let-me-in"})


@pytest.fixture
def publisher() -> RecordingPublisher:
    return RecordingPublisher()


@pytest.fixture
def app(settings, publisher):
    from waflow import create_app

    return create_app({"TESTING": True, "WAFLOW_SETTINGS": settings, "WAFLOW_PUBLISHER": publisher})


@pytest.fixture
def client(app):
    return app.test_client()


_migrated: set[str] = set()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request) -> str:
    """A migrated, empty database: SQLite always, PostgreSQL when WAFLOW_TEST_DATABASE_URL is set."""
    if request.param == "postgresql":
        if not PG_URL:
            pytest.skip(SKIP_PG)
        url = config.load({"DATABASE_URL": PG_URL}).database_url
    else:
        url = f"sqlite:///{_VAR}/unit.db"
    if url not in _migrated:
        migrate(url, fresh=True)
        _migrated.add(url)
    wipe(url)
    return url


def count(session, table: str, where: str = "1=1", **params) -> int:
    return session.execute(sa.text(f"SELECT count(*) FROM {table} WHERE {where}"), params).scalar_one()


@pytest.fixture
def settings_for_app(settings):
    """An app with a recording publisher, for tests that post many requests."""
    from waflow import create_app

    publisher = RecordingPublisher()
    return create_app({"TESTING": True, "WAFLOW_SETTINGS": settings, "WAFLOW_PUBLISHER": publisher}), publisher


@pytest.fixture(scope="session")
def default_db() -> str:
    """The database tasks use when run in this process (SQLite in the scratch folder), migrated."""
    url = config.settings.database_url
    migrate(url, fresh=True)
    return url


# --- the dashboard (tests/dashboard_support.py) ------------------------------------------------------------------


@pytest.fixture
def dashboard_app(db_url, var_dir):
    """The dashboard on a migrated, empty database (SQLite, and PostgreSQL when its URL is set)."""
    from dashboard_support import make_app

    return make_app(db_url, var_dir)


@pytest.fixture
def dashboard_client(dashboard_app):
    return dashboard_app.test_client()


@pytest.fixture
def lawyer(db_url):
    from dashboard_support import make_user

    return make_user(db_url, "ratna@firma.id", name="Ratna", role="lawyer", locale="id")


@pytest.fixture
def admin(db_url):
    from dashboard_support import make_user

    return make_user(db_url, "budi@firma.id", name="Budi", role="admin", locale="en")


def _signed_in(app, person):
    from dashboard_support import login

    client = app.test_client()
    answer = login(client, person.email)
    assert answer.status_code == 302, answer.get_data(as_text=True)[-2000:]
    return client


@pytest.fixture
def lawyer_client(dashboard_app, lawyer):
    """A test client signed in as the lawyer (``lawyer``), on ``dashboard_app``."""
    return _signed_in(dashboard_app, lawyer)


@pytest.fixture
def admin_client(dashboard_app, admin):
    return _signed_in(dashboard_app, admin)


@pytest.fixture(scope="session")
def browser():
    """Chromium (Debian's /usr/bin/chromium) driven by Playwright; skipped, saying why, when it is missing."""
    from dashboard_support import CHROMIUM, CHROMIUM_ARGS, chromium_or_skip

    chromium_or_skip()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="module")
def dashboard_server(tmp_path_factory):
    """The dashboard process as the Procfile runs it (gunicorn, gunicorn.conf.py, the factory) on a free port,
    against a migrated SQLite database of its own; ``.url``, ``.database_url``."""
    from dashboard_support import DashboardProcess, chromium_or_skip

    chromium_or_skip()
    var = tmp_path_factory.mktemp("dashboard")
    url = f"sqlite:///{var}/waflow.db"
    migrate(url, fresh=True)
    server = DashboardProcess({"WAFLOW_VAR_DIR": str(var), "DATABASE_URL": url}, var / "dashboard.log")
    server.database_url = url
    server.start()
    try:
        yield server
    finally:
        server.stop()
