"""Health endpoints: alive, ready when the broker takes publishes, the database reported apart."""
from __future__ import annotations

import socket
import time

import pytest

from conftest import requires_rabbitmq
from support import AMQP_URL, RecordingPublisher
from waflow import config
from waflow.broker import ConfirmingPublisher, PublishError
from waflow.tasks import celery_app


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def make_client(var_dir):
    from waflow import create_app

    def make(publisher=None, database_url: str | None = None):
        env = {"WAFLOW_VAR_DIR": var_dir}
        if database_url:
            env["DATABASE_URL"] = database_url
        app = create_app({"TESTING": True, "WAFLOW_SETTINGS": config.load(env),
                          "WAFLOW_PUBLISHER": publisher or RecordingPublisher()})
        return app.test_client()

    return make


def test_healthz_answers_while_the_process_lives(make_client):
    response = make_client(RecordingPublisher(error=PublishError("down"))).get("/healthz")
    assert (response.status_code, response.text) == (200, "ok")


def test_readyz_is_ready_when_the_broker_takes_publishes(make_client):
    response = make_client().get("/readyz")
    assert response.status_code == 200
    assert response.json == {"ready": True, "broker": "ok", "database": "ok"}


def test_readyz_is_not_ready_when_the_broker_does_not_take_publishes(make_client):
    response = make_client(RecordingPublisher(error=PublishError("broker unavailable: refused"))).get("/readyz")
    assert response.status_code == 503
    # The reason goes to the log, not to an unauthenticated answer.
    assert response.json == {"ready": False, "broker": "unavailable", "database": "ok"}


def test_a_database_outage_never_takes_the_webhook_out_of_the_load_balancer(make_client):
    client = make_client(database_url=f"postgresql://nobody@127.0.0.1:{_closed_port()}/none")
    started = time.monotonic()
    ready = client.get("/readyz")
    assert time.monotonic() - started < 2
    assert ready.status_code == 200
    assert ready.json == {"ready": True, "broker": "ok", "database": "unreachable"}
    database = client.get("/readyz/database")
    assert database.status_code == 503 and database.json == {"database": "unreachable"}


def test_readyz_answers_from_a_cache_between_checks(make_client):
    publisher = RecordingPublisher()
    calls = []
    publisher.ready = lambda: calls.append(1)
    client = make_client(publisher)
    for _ in range(20):
        assert client.get("/readyz").status_code == 200
    assert len(calls) == 1


def test_the_embedded_broker_is_ready_when_its_folders_are_writable():
    from waflow.broker import CeleryPublisher

    CeleryPublisher(celery_app).ready()


@requires_rabbitmq
def test_the_confirming_publisher_is_ready_against_rabbitmq_and_not_against_a_closed_port():
    ConfirmingPublisher(celery_app, AMQP_URL, timeout=2).ready()
    started = time.monotonic()
    with pytest.raises(PublishError):
        ConfirmingPublisher(celery_app, f"amqp://guest:guest@127.0.0.1:{_closed_port()}//", timeout=0.9).ready()
    assert time.monotonic() - started < 1.0
