"""Fault tests: kill workers, kill the broker, take the database away, hold a delivery too long.

Each starts its own RabbitMQ node and PostgreSQL cluster (``faultkit``) and kills
only those. Short versions of the scenarios; the long runs, with their figures in
``docs/reliability.md``, are ``bench/faults/``. Every run keeps a ledger
(``fault_scenarios``): lost and duplicated are counted, not guessed.
"""
from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from fault_scenarios import Ledger, at, figures, kill_stages_during, send, wait_persisted
from faultkit import PrivatePostgres, PrivateRabbit, requires_private_services
from support import ROOT, Stack, migrate, wait_for, wipe
from waflow import config, tasks
from waflow.db import get_engine

pytestmark = requires_private_services


@pytest.fixture(scope="module")
def rabbit():
    with PrivateRabbit() as node:
        yield node


@pytest.fixture(scope="module")
def database():
    with PrivatePostgres() as cluster:
        url = config.load({"DATABASE_URL": cluster.create_database("waflow")}).database_url
        migrate(url)
        yield cluster, url


@pytest.fixture
def stack(rabbit, database, tmp_path):
    cluster, url = database
    wipe(url)
    running = Stack(database_url=url, broker_url=rabbit.url, var_dir=str(tmp_path))
    running.start()
    yield running
    running.stop()


def _assert_clean(report: dict, stack: Stack) -> None:
    assert report["acknowledged"] == report["sent"], (report, stack.logs())
    assert (report["lost"], report["duplicated"]) == (0, 0), (report, stack.logs())
    assert report["persisted"] == report["sent"] - report["poison_sent"], report
    assert report["media_persisted"] == report["media_expected"], report


def test_killing_a_worker_of_each_stage_mid_stream_persists_every_message_exactly_once(stack):
    rng = random.Random(7)
    ledger = Ledger()
    keys = [ledger.add(n, image=n % 10 == 0) for n in range(300)]
    supervisor, killers = kill_stages_during(stack, duration=300 / 60, kills_per_stage=1, rng=rng)
    send(stack.url, ledger, keys, rate=60)
    for killer in killers:
        killer.join(90)
    assert wait_persisted(stack, ledger, timeout=90), (figures(ledger, stack.database_url), stack.logs())
    report = figures(ledger, stack.database_url)
    _assert_clean(report, stack)
    assert report["dead_lettered"] == 0
    assert sorted(k["stage"] for k in supervisor.kills) == ["core", "ingestor", "media"]


def test_killing_the_broker_mid_stream_loses_no_acknowledged_webhook(stack, rabbit):
    ledger = Ledger()
    keys = [ledger.add(n) for n in range(250)]
    events = at([(1.5, rabbit.kill), (3.0, rabbit.restart)])
    send(stack.url, ledger, keys, rate=50)
    events.join(60)
    assert wait_persisted(stack, ledger, timeout=120), (figures(ledger, stack.database_url), stack.logs())
    report = figures(ledger, stack.database_url)
    _assert_clean(report, stack)
    assert report["posts"] > report["sent"]  # some were answered 503 while the broker was down, and re-posted


def test_a_ten_second_database_outage_is_ridden_out_with_nothing_dead_lettered(stack, database):
    cluster, _ = database
    ledger = Ledger()
    keys = [ledger.add(n, image=n % 10 == 0) for n in range(200)]

    def outage() -> None:
        with cluster.unreachable(10):
            pass

    events = at([(1.0, outage)])
    send(stack.url, ledger, keys, rate=20)  # 10 s of traffic, most of it into the outage
    events.join(60)
    assert wait_persisted(stack, ledger, timeout=90), (figures(ledger, stack.database_url), stack.logs())
    report = figures(ledger, stack.database_url)
    _assert_clean(report, stack)
    assert report["dead_lettered"] == 0
    assert "retry 1 of 3" in stack.logs() or "retry 2 of 3" in stack.logs()  # the outage was met


def test_an_outage_past_the_retry_budget_dead_letters_and_replay_persists_each_once(stack, database):
    cluster, url = database
    ledger = Ledger()
    keys = [ledger.add(n) for n in range(20)]
    longest = sum(longest for _, longest in tasks.retry_countdowns())
    with cluster.unreachable(longest + 8):
        send(stack.url, ledger, keys, rate=10)
    # Their ingest tasks spent the budget during the outage; the recorder stores them once it can.
    wait_for(lambda: _count(url, "dead_letters") >= 20, 90, interval=0.5, what="20 dead letters recorded")
    assert _count(url, "messages") == 0
    replay = subprocess.run([str(Path(sys.executable).parent / "flask"), "--app", "wsgi", "dlq", "replay", "--all",
                             "--yes", "--by", "fault-test"], cwd=ROOT, env=stack.env, capture_output=True,
                            text=True, timeout=120)
    assert replay.returncode == 0, replay.stdout + replay.stderr
    assert wait_persisted(stack, ledger, timeout=60), stack.logs()
    report = figures(ledger, url)
    _assert_clean(report, stack)
    assert report["dead_lettered"] == 20 and replay.stdout.count("replayed to wa.incoming.raw") == 20
    assert _count(url, "dead_letters", "status = 'replayed'") == 20


def _count(url: str, table: str, where: str = "1=1") -> int:
    try:
        with get_engine(url).connect() as conn:
            return conn.execute(sa.text(f"SELECT count(*) FROM {table} WHERE {where}")).scalar()
    except sa.exc.OperationalError:
        return -1


@pytest.mark.parametrize("countdown, closed", [(2.5, False), (7.0, True)])
def test_a_countdown_shorter_than_the_consumer_timeout_completes_without_the_channel_closing(
        countdown, closed, tmp_path):
    """Scaled down (a 4-s consumer_timeout checked every 0.5 s): a retry's countdown keeps its message
    unacknowledged in the worker, which is safe only below the timeout. The control proves the test
    sees a closure; bench/faults/consumer_timeout.py runs the real longest countdown (2 minutes)."""
    with PrivateRabbit(consumer_timeout_ms=4000, tick_interval_ms=500) as node:
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("WAFLOW_TEST_")},
               "CELERY_BROKER_URL": node.url, "WAFLOW_VAR_DIR": str(tmp_path), "PYTHONPATH": str(ROOT / "tests"),
               "DATABASE_URL": f"sqlite:///{tmp_path}/unused.db"}
        marks = tmp_path / "runs.txt"
        log = tmp_path / "worker.log"
        code = ("from waflow.tasks import celery_app as a; "
                f"a.send_task('tests.countdown.note', args=({str(marks)!r},), queue='wa.media.processing', "
                f"countdown={countdown})")
        subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, check=True, timeout=60)
        with open(log, "w") as out:
            worker = subprocess.Popen([str(Path(sys.executable).parent / "celery"), "-A", "waflow", "worker", "-Q",
                                       "wa.media.processing", "-I", "countdown_tasks", "-P", "solo", "-l", "INFO",
                                       "--without-mingle", "--without-gossip"], cwd=ROOT, env=env, stdout=out,
                                      stderr=subprocess.STDOUT)
        try:
            # The control: RabbitMQ closes the channel, which Celery 5.7 treats as unrecoverable
            # and the worker exits ("Unrecoverable error: PreconditionFailed").
            wait_for(lambda: worker.poll() is not None if closed else marks.exists(), countdown + 20,
                     what="the worker's outcome")
            time.sleep(1.5)
            assert (worker.poll() is not None) is closed
        except AssertionError:
            raise AssertionError(log.read_text()[-4000:]) from None
        finally:
            if worker.poll() is None:
                worker.terminate()
                worker.wait(20)
        text = log.read_text()
        assert ("delivery acknowledgement on channel 1 timed out" in text) is closed, text[-3000:]
        if not closed:
            assert marks.read_text() == "ran\n"
