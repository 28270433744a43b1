"""Every way a message can fail ends in ``wa.dead_letter``, never nowhere (real RabbitMQ, real workers).

The paths: a task failing for good (``test_dlq.py``), a pool process that keeps
dying on the same message, a whole worker that keeps dying on it, a retry that
cannot be published, a rejection without requeue, and a failure whose
dead-letter record cannot be published. For each, the dead-letter queue must
hold the message: the failure handler's record, the broker's own dead-lettered
copy, or both (the recorder merges them by task id).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest
from kombu import Connection

from conftest import SKIP_AMQP, SKIP_PG
from support import AMQP_URL, PG_URL, ROOT, migrate, wait_for
from waflow import queues
from waflow.dlq.records import DEAD_LETTER_QUEUE

pytestmark = [pytest.mark.skipif(not AMQP_URL, reason=SKIP_AMQP), pytest.mark.skipif(not PG_URL, reason=SKIP_PG)]


@pytest.fixture(scope="module")
def env():
    from waflow import config

    migrate(config.load({"DATABASE_URL": PG_URL}).database_url)
    var_dir = tempfile.mkdtemp(prefix="waflow-paths-")
    return {**{k: v for k, v in os.environ.items() if not k.startswith("WAFLOW_TEST_")},
            "WAFLOW_ENV": "development", "WHATSAPP_APP_SECRET": "s", "WHATSAPP_VERIFY_TOKEN": "t",
            "WHATSAPP_ACCESS_TOKEN": "a", "WHATSAPP_PHONE_NUMBER_ID": "1", "DATABASE_URL": PG_URL,
            "CELERY_BROKER_URL": AMQP_URL, "WAFLOW_VAR_DIR": var_dir, "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": str(ROOT / "tests")}


@pytest.fixture
def broker():
    with Connection(AMQP_URL) as conn:
        channel = conn.default_channel
        for name in (queues.MEDIA_PROCESSING, queues.DEAD_LETTER):
            queues.queue(name)(channel).declare()
            queues.queue(name)(channel).purge()
        yield conn
        for name in (queues.MEDIA_PROCESSING, queues.DEAD_LETTER):
            queues.queue(name)(channel).purge()


def send(env, task: str) -> str:
    """Publish one task message from a separate process, as a stage would; return its id."""
    task_id = str(uuid.uuid4())
    code = ("from waflow.tasks import celery_app as a; "
            f"a.send_task({task!r}, args=('marker',), task_id={task_id!r}, queue='wa.media.processing')")
    subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, check=True, timeout=60)
    return task_id


def run_worker(env, log: Path, pool: str, until, timeout: float = 40) -> subprocess.CompletedProcess | None:
    """Run a worker until ``until()`` holds or it exits by itself; return its exit if it did."""
    argv = [str(Path(sys.executable).parent / "celery"), "-A", "waflow", "worker", "-Q", queues.MEDIA_PROCESSING,
            "-I", "dead_letter_tasks", "-P", pool, "-c", "1", "-l", "INFO", "--without-mingle", "--without-gossip",
            "-n", f"paths-{uuid.uuid4().hex[:6]}@%h"]
    with open(log, "a") as out:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: proc.poll() is not None or until(), timeout, interval=0.2, what="the worker's outcome")
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
    return proc.returncode


def dead_letters(conn) -> list[tuple[dict | list, dict]]:
    """Everything in wa.dead_letter now, as (decoded body, headers), left in place."""
    found = []
    channel = conn.channel()
    try:
        while True:
            message = channel.basic_get(queue=DEAD_LETTER_QUEUE.name, no_ack=False)
            if message is None:
                break
            found.append((json.loads(message.body), dict(message.headers or {})))
    finally:
        channel.close()  # unacknowledged: they go back to the queue
    return found


def for_task(conn, task_id: str) -> tuple[dict | None, dict | None]:
    """The failure handler's record and the broker's copy of one task message, if there."""
    record = copy = None
    for body, headers in dead_letters(conn):
        if isinstance(body, dict) and body.get("task_id") == task_id:
            record = body
        elif headers.get("id") == task_id:
            copy = headers
    return record, copy


def test_a_pool_process_that_keeps_dying_on_a_message_is_retried_then_dead_lettered(env, broker, tmp_path):
    task_id = send(env, "tests.paths.die")
    run_worker(env, tmp_path / "prefork.log", "prefork", lambda: all(for_task(broker, task_id)))
    record, copy = for_task(broker, task_id)
    assert record is not None, (tmp_path / "prefork.log").read_text()[-3000:]
    assert record["error_type"] == "WorkerLostError" and record["retries"] == 3
    assert copy["x-death"][0]["reason"] == "rejected" and copy["x-death"][0]["queue"] == queues.MEDIA_PROCESSING


def test_a_message_that_keeps_killing_its_whole_worker_is_dead_lettered_not_looped(env, broker, tmp_path):
    task_id = send(env, "tests.paths.die")
    log = tmp_path / "solo.log"
    for _ in range(4):  # the first run and REDELIVERY_LIMIT (1) redeliveries die; the next is refused
        if all(for_task(broker, task_id)):
            break
        run_worker(env, log, "solo", lambda: all(for_task(broker, task_id)))
    record, copy = for_task(broker, task_id)
    assert record is not None and copy is not None, log.read_text()[-3000:]
    assert record["error_type"] == "Reject" and "keeps killing its worker" in record["error_message"]
    assert copy["x-death"][0]["reason"] == "rejected"


def test_a_rejection_without_requeue_lands_in_the_dead_letter_queue(env, broker, tmp_path):
    task_id = send(env, "tests.paths.reject")
    run_worker(env, tmp_path / "reject.log", "solo", lambda: all(for_task(broker, task_id)))
    record, copy = for_task(broker, task_id)
    assert record["error_message"] == "this message is refused"
    assert copy["x-death"][0]["reason"] == "rejected"


def test_a_retry_that_cannot_be_published_lands_in_the_dead_letter_queue(env, broker, tmp_path):
    task_id = send(env, "tests.paths.unpublishable_retry")
    run_worker(env, tmp_path / "retry.log", "solo", lambda: for_task(broker, task_id)[1] is not None)
    record, copy = for_task(broker, task_id)
    assert copy is not None and copy["x-death"][0]["reason"] == "rejected"
    assert copy["task"] == "tests.paths.unpublishable_retry"


def test_a_failure_whose_record_cannot_be_published_still_lands_there_as_the_brokers_copy(env, broker, tmp_path):
    task_id = send(env, "tests.paths.fail_unrecorded")
    run_worker(env, tmp_path / "unrecorded.log", "solo", lambda: for_task(broker, task_id)[1] is not None)
    record, copy = for_task(broker, task_id)
    assert record is None
    assert copy["task"] == "tests.paths.fail_unrecorded" and copy["x-death"][0]["reason"] == "rejected"
    assert "dead-letter record not published" in (tmp_path / "unrecorded.log").read_text()
