"""Smoke tests of the fault-test harness: private services that can be killed without harm.

One RabbitMQ node and one PostgreSQL cluster serve the whole module (starting a node takes
about 5 s); a test that kills one leaves it restarted, and the fixtures start it again if not.
"""
from __future__ import annotations

import os
import socket
import time
from typing import Iterator

import amqp
import psycopg2
import pytest

from faultkit import (FAST_TICK_MS, REQUIRE_SERVICES, PrivatePostgres, PrivateRabbit, requires_private_services,
                      shared_rabbitmq_pid)

pytestmark = requires_private_services

CONSUMER_TIMEOUT_MS = 3000


@pytest.fixture(scope="module")
def rabbit_node() -> Iterator[PrivateRabbit]:
    with PrivateRabbit(consumer_timeout_ms=CONSUMER_TIMEOUT_MS) as node:
        yield node


@pytest.fixture
def rabbit(rabbit_node: PrivateRabbit) -> PrivateRabbit:
    """The module's node, started again if an earlier test left it down."""
    return rabbit_node.start()


@pytest.fixture(scope="module")
def pg_cluster() -> Iterator[PrivatePostgres]:
    with PrivatePostgres() as cluster:
        yield cluster


@pytest.fixture
def pg(pg_cluster: PrivatePostgres) -> PrivatePostgres:
    """The module's cluster, started again if an earlier test left it down."""
    return pg_cluster.start()


def publish(rabbit: PrivateRabbit, queue: str, *messages: amqp.Message) -> None:
    """Declare ``queue`` durable and publish ``messages`` to it, each confirmed by the broker."""
    with rabbit.connection() as conn:
        channel = conn.channel()
        channel.queue_declare(queue, durable=True, auto_delete=False)
        for message in messages:
            channel.basic_publish_confirm(message, routing_key=queue)


def bodies(rabbit: PrivateRabbit, queue: str) -> list[bytes]:
    """Take every message off ``queue`` and return the bodies in order."""
    with rabbit.connection() as conn:
        channel = conn.channel()
        taken = iter(lambda: channel.basic_get(queue, no_ack=True), None)
        return [message.body for message in taken]


def assert_gone(pid: int) -> None:
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_a_confirmed_persistent_message_survives_kill_and_restart(rabbit):
    publish(rabbit, "faultkit.durable", amqp.Message(b"one", delivery_mode=2), amqp.Message(b"transient"),
            amqp.Message(b"two", delivery_mode=2))
    old_pid = rabbit.pid

    rabbit.kill()
    assert_gone(old_pid)
    rabbit.restart()

    assert rabbit.pid != old_pid
    assert rabbit.queue_depth("faultkit.durable") == 2
    assert bodies(rabbit, "faultkit.durable") == [b"one", b"two"]


def test_killing_the_private_node_leaves_the_shared_node_alone(rabbit):
    shared = shared_rabbitmq_pid()
    if shared is None:
        (pytest.fail if REQUIRE_SERVICES else pytest.skip)("no shared RabbitMQ node answers `rabbitmqctl status`")

    rabbit.kill()
    rabbit.restart()

    assert shared_rabbitmq_pid() == shared != rabbit.pid


def test_a_consumer_holding_a_delivery_past_the_timeout_loses_its_channel(rabbit):
    publish(rabbit, "faultkit.held", amqp.Message(b"held", delivery_mode=2))
    with rabbit.connection() as conn:
        channel = conn.channel()
        delivered = []
        channel.basic_consume("faultkit.held", callback=lambda message: delivered.append(time.monotonic()))
        conn.drain_events(timeout=5)

        with pytest.raises(amqp.exceptions.PreconditionFailed, match="delivery acknowledgement") as closed:
            conn.drain_events(timeout=CONSUMER_TIMEOUT_MS / 1000 + 10)
        delay = time.monotonic() - delivered[0]

    assert closed.value.reply_code == 406
    # The broker checks on each channel tick: closed between the timeout and one tick later.
    assert CONSUMER_TIMEOUT_MS / 1000 - 0.1 <= delay <= (CONSUMER_TIMEOUT_MS + FAST_TICK_MS) / 1000 + 0.5
    assert rabbit.queue_depth("faultkit.held") == 1  # requeued, not lost


def test_a_consumer_that_acks_in_time_keeps_its_channel(rabbit):
    publish(rabbit, "faultkit.acked", amqp.Message(b"acked", delivery_mode=2))
    with rabbit.connection() as conn:
        channel = conn.channel()
        delivered = []
        channel.basic_consume("faultkit.acked", callback=delivered.append)
        conn.drain_events(timeout=5)
        time.sleep(CONSUMER_TIMEOUT_MS / 1000 / 2)
        channel.basic_ack(delivered[0].delivery_tag)

        # Stay past the timeout plus two ticks: a closure would arrive in drain_events.
        deadline = time.monotonic() + (CONSUMER_TIMEOUT_MS / 2 + 2 * FAST_TICK_MS) / 1000 + 0.5
        while (left := deadline - time.monotonic()) > 0:
            try:
                conn.drain_events(timeout=left)
            except socket.timeout:
                pass

        assert channel.is_open
        assert channel.queue_declare("faultkit.acked", passive=True).message_count == 0


def test_a_row_committed_before_a_kill_is_there_after_restart(pg):
    url = pg.create_database("survivors")
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE t (v text); INSERT INTO t VALUES ('committed')")
    conn.close()
    old_pid = pg.pid

    pg.kill()
    assert_gone(old_pid)
    pg.restart()

    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT v FROM t")
        assert cur.fetchall() == [("committed",)]
    conn.close()


def test_a_connection_fails_fast_while_unreachable_and_succeeds_after(pg):
    started = time.monotonic()
    with pg.unreachable(1.0):
        with pytest.raises(psycopg2.OperationalError, match="refused"):
            psycopg2.connect(pg.url, connect_timeout=5)
        assert time.monotonic() - started < 1.0

    assert time.monotonic() - started >= 1.0
    psycopg2.connect(pg.url, connect_timeout=5).close()
