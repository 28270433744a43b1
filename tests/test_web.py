"""The web foundation: a database connection per request, checked out only by routes that use it."""
from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.pool import Pool

from support import REFERENCE_BODY, REFERENCE_SIGNATURE
from waflow import create_app, web
from waflow.db import get_engine


@pytest.fixture
def pool_events():
    """Every connection checked out of, and returned to, any pool while the test runs."""
    seen: list[str] = []

    def checkout(*_):
        seen.append("out")

    def checkin(*_):
        seen.append("in")

    event.listen(Pool, "checkout", checkout)
    event.listen(Pool, "checkin", checkin)
    yield seen
    event.remove(Pool, "checkout", checkout)
    event.remove(Pool, "checkin", checkin)


@pytest.fixture
def app_with_a_database_route(settings, publisher, db_url):
    app = create_app({"TESTING": True, "WAFLOW_SETTINGS": settings.__class__(**{**settings.__dict__,
                                                                                 "database_url": db_url}),
                      "WAFLOW_PUBLISHER": publisher})

    @app.get("/_test/count")
    def count() -> str:
        first = web.request_connection()
        assert web.request_connection() is first  # one connection for the whole request
        return str(first.execute(sa.text("SELECT count(*) FROM messages")).scalar_one())

    get_engine(db_url)  # built before counting: the engine's first connect is not the request's
    return app


def test_the_webhook_checks_out_no_database_connection(app_with_a_database_route, publisher, pool_events):
    response = app_with_a_database_route.test_client().post(
        "/webhooks/whatsapp", data=REFERENCE_BODY, headers={"X-Hub-Signature-256": REFERENCE_SIGNATURE})
    assert response.status_code == 200 and len(publisher.published) == 1
    assert pool_events == []


def test_a_route_that_uses_the_database_borrows_one_connection_and_returns_it(app_with_a_database_route,
                                                                              pool_events):
    response = app_with_a_database_route.test_client().get("/_test/count")
    assert response.status_code == 200 and response.text == "0"
    assert pool_events == ["out", "in"]  # returned at teardown, not left to the garbage collector
