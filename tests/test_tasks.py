"""Celery wiring: queues, routes, the Procfile, and what Flower may show."""
from __future__ import annotations

import re
import threading
from types import SimpleNamespace

import pytest

from support import ROOT
from waflow import consumer, queues
from waflow.outbound import warmup
from waflow.celery import app
from waflow.tasks import describe_args

STAGE_TASKS = {name: task for name, task in app.tasks.items() if name.startswith("waflow.")}


def _procfile_queues(name: str) -> dict[str, str]:
    lines = (ROOT / name).read_text().splitlines()
    found = {}
    for line in lines:
        match = re.match(r"^(\w+): .*celery -A waflow worker -Q ([\w.,]+) -n (\w+)@%h", line)
        if match:
            assert match.group(1) == match.group(3), line
            for queue in match.group(2).split(","):
                assert queue not in found, f"{queue} has two worker lines"
                found[queue] = match.group(1)
    return found


def test_every_seed_queue_and_the_dead_letter_queue_are_declared_durable():
    declared = {q.name: q for q in app.conf.task_queues}
    assert set(declared) == set(queues.SEED_QUEUES) | {"wa.outgoing.broadcast", "wa.ai.draft.requested",
                                                      "wa.dead_letter"}
    assert all(q.durable for q in declared.values())
    dead_letter = declared.pop("wa.dead_letter")
    assert {(b.exchange.name, b.routing_key) for b in dead_letter.bindings} == {("wa", "wa.dead_letter"),
                                                                             ("wa.dlx", "wa.dead_letter")}
    for q in declared.values():
        assert q.exchange.durable and q.routing_key == q.name
        # Whatever RabbitMQ drops from a work queue goes to wa.dead_letter, never nowhere.
        assert q.queue_arguments["x-dead-letter-exchange"] == "wa.dlx"
        assert q.queue_arguments["x-dead-letter-routing-key"] == "wa.dead_letter"


def test_every_task_is_routed_by_its_pinned_name_to_its_own_queue():
    assert set(STAGE_TASKS) == {"waflow.ingestor.ingest_raw", "waflow.core.handle_normalized",
                                "waflow.core.send_approved", "waflow.media.record_media",
                                "waflow.outbound.send_message", "waflow.drafts.drafter.draft_reply",
                                "waflow.drafts.announcer.announce_draft"}
    for name, task in STAGE_TASKS.items():
        assert app.conf.task_routes[name] == {"queue": task.queue}
        assert name.split(".")[1] == task.__module__.split(".")[1]  # waflow.<stage>.<task> lives in waflow/<stage>.py


def test_every_task_acknowledges_late_and_retries_only_transient_errors():
    from waflow.failures import PermanentFailure, TransientFailure
    from waflow.tasks import RETRIED

    for task in STAGE_TASKS.values():
        assert task.acks_late and task.ignore_result
        # What autoretry sees of a foreign error is its classification (waflow.tasks.is_transient).
        assert task.autoretry_for == RETRIED and TransientFailure in RETRIED
        assert not any(issubclass(PermanentFailure, t) or issubclass(ValueError, t) for t in task.autoretry_for)
        assert task.max_retries == 3


def test_a_routing_typo_raises_instead_of_creating_a_queue():
    assert app.conf.task_create_missing_queues is False


@pytest.mark.parametrize("procfile", ["Procfile", "Procfile.dev"])
def test_each_consumed_queue_has_exactly_one_worker_line(procfile):
    # The send task also consumes its broadcast lane.
    consumed = {task.queue for task in STAGE_TASKS.values()} | {queues.OUTGOING_BROADCAST}
    assert set(_procfile_queues(procfile)) == consumed


def test_the_send_task_carries_the_design_cards_rate_limit_and_the_workers_pace_it():
    assert app.tasks["waflow.outbound.send_message"].rate_limit == "80/s"  # WHATSAPP_SEND_RATE's default
    assert app.conf.worker_consumer == "waflow.consumer:PacedConsumer"


def test_the_procfile_has_web_release_and_flower():
    lines = dict(line.split(": ", 1) for line in (ROOT / "Procfile").read_text().splitlines() if line)
    # The migrations first; then the dashboard's translations are compiled (waflow/dashboard/translations).
    assert lines["release"].startswith("alembic upgrade head && ")
    # The webhook app, unless a second app of the same repository runs the dashboard (README, "Deploy").
    assert lines["web"].startswith("gunicorn -c gunicorn.conf.py ${WAFLOW_WEB_APP:-wsgi:app}")
    assert lines["flower"].startswith("celery -A waflow flower --port=$PORT")


def test_task_arguments_shown_in_flower_carry_ids_not_client_text():
    event = {"event_id": "message:wamid.X", "message": {"text": "my divorce papers"}}
    shown = describe_args((event, "my divorce papers", 12, None))
    assert shown == "(<message:wamid.X>, <17 chars>, 12, None)"
    assert "divorce" not in shown


def test_published_task_messages_carry_the_redacted_representation():
    from waflow.core import handle_normalized

    queue = queues.queue(queues.INCOMING_NORMALIZED)
    with app.connection_for_write() as conn:
        simple = conn.SimpleQueue(queue)
        simple.clear()
        handle_normalized.apply_async(({"event_id": "message:wamid.R", "text": "privileged"},))
        message = simple.get(timeout=5)
        message.ack()
        simple.close()
    assert message.headers["argsrepr"] == "(<message:wamid.R>)"
    assert "privileged" not in message.headers["argsrepr"] + message.headers["kwargsrepr"]


def test_quorum_queues_dead_letter_at_least_once_past_a_delivery_limit_through_topic_exchanges():
    declared = {q.name: q for q in queues.declarations("quorum")}
    dead_letter = declared.pop("wa.dead_letter")
    assert dead_letter.queue_arguments == {"x-queue-type": "quorum"}
    assert {b.exchange.type for b in dead_letter.bindings} == {"topic"}
    for q in declared.values():
        assert q.exchange.type == "topic"  # Celery's native delayed delivery (countdowns) needs it
        assert q.queue_arguments["x-queue-type"] == "quorum"
        assert q.queue_arguments["x-delivery-limit"] == queues.QUORUM_DELIVERY_LIMIT
        assert q.queue_arguments["x-dead-letter-strategy"] == "at-least-once"
        assert q.queue_arguments["x-overflow"] == "reject-publish"


@pytest.mark.parametrize("pool, consumed, expected", [
    ("celery.concurrency.thread", {"wa.outgoing.command"}, "while connecting"),
    ("celery.concurrency.solo", {"wa.outgoing.broadcast"}, "while connecting"),
    ("celery.concurrency.prefork", {"wa.outgoing.command"}, "at ready"),
    ("celery.concurrency.thread", {"wa.incoming.raw"}, "never"),
])
def test_a_sender_warms_up_in_a_thread_while_mingle_waits_unless_its_pool_forks(pool, consumed, expected, monkeypatch):
    warmed = []
    monkeypatch.setattr(warmup, "warm_up", lambda threads: warmed.append((threads, threading.current_thread().name)))
    monkeypatch.setattr(warmup, "_consumed_queues", lambda: consumed)
    paced = type("Consumer", (), {})()  # hashable, as the signal's sender must be
    paced.pool = type("TaskPool", (), {"__module__": pool})()
    paced.controller = SimpleNamespace(concurrency=8)
    # The paced consumer sends `connected` once the broker connection is up, before mingle's wait;
    # again after a reconnection, when nothing is warmed up twice.
    consumer.connected.send(sender=paced)
    consumer.connected.send(sender=paced)
    thread = getattr(paced, "sender_warm_up", None)
    if thread is not None:
        thread.join(5)
    at_connect = list(warmed)
    warmup._warm_up_before_the_first_message(sender=paced)  # worker_ready: waits for the thread, or warms up now
    if expected == "while connecting":
        assert at_connect == [(8, "waflow-sender-warm-up")] and warmed == at_connect
    elif expected == "at ready":
        # A forking pool: connections opened in the parent would not survive the fork.
        assert at_connect == [] and warmed == [(8, threading.current_thread().name)]
    else:
        assert warmed == []


def test_worker_ready_waits_for_a_warm_up_still_running():
    release = threading.Event()
    thread = threading.Thread(target=release.wait, args=(5,))
    thread.start()
    threading.Timer(0.2, release.set).start()
    warmup._warm_up_before_the_first_message(sender=SimpleNamespace(sender_warm_up=thread))
    assert not thread.is_alive()  # the event loop starts only once the sender is warmed up
