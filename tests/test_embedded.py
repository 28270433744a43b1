"""The embedded broker (``waflow/embedded.py``) shared by several processes, as bin/run shares it.

Every test works in its own folder, with real processes where the behaviour is between processes
(locks, a process that dies without closing anything).
"""
from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from kombu import Connection, Exchange, Queue

from support import ROOT
from waflow import config, embedded, queues

EVENTS = Exchange("celeryev", type="topic")


@pytest.fixture(autouse=True)
def _no_bindings_remembered():
    """kombu remembers, for the whole process, the bindings it has made (and then skips writing them again):
    each test has a folder of its own, so each starts and ends with none remembered."""
    embedded.Transport.global_state.clear()
    yield
    embedded.Transport.global_state.clear()


def _options(var_dir: Path) -> dict:
    return {**queues.transport_options(config.load({"WAFLOW_VAR_DIR": str(var_dir)})), "polling_interval": 0.01}


def _table(var_dir: Path, exchange: str) -> list[str]:
    file = var_dir / "broker" / "control" / f"{exchange}.exchange"
    return [queue for _, _, queue in json.loads(file.read_text())] if file.exists() else []


ROUNDS, BINDERS = 40, 6


def _bind_in_rounds(var_dir: str, worker: int, barrier) -> None:
    """Bind queue ``q-<worker>`` to a fresh exchange each round, all binders released at the same moment:
    the exchange's table is created by whichever comes first, updated by the others."""
    with Connection("embedded://", transport_options=_options(Path(var_dir))) as conn:
        channel = conn.channel()
        for round_ in range(ROUNDS):
            barrier.wait(30)
            Queue(f"q-{worker}", Exchange(f"race-{round_}", type="topic"), routing_key="#")(channel).declare()


def _read_tables(var_dir: str, stop, errors) -> None:
    with Connection("embedded://", transport_options=_options(Path(var_dir))) as conn:
        channel = conn.channel()
        while not stop.is_set():
            for round_ in range(ROUNDS):
                try:
                    channel.get_table(f"race-{round_}")
                except Exception as exc:  # noqa: BLE001 - counted, then reported by the test
                    errors.put(f"{type(exc).__name__}: {exc}")


def test_a_thread_publishing_while_another_writes_the_same_binding_loses_no_message(tmp_path, monkeypatch):
    """Two threads of one process declare the same queue (the gateway's request threads, each with its own
    channel): the second must not publish by a binding the first has not written yet."""
    writing, written = threading.Event(), threading.Event()
    write = embedded._write_atomically

    def slow_write(path, data):  # a busy disk: the table's fsync takes a while
        writing.set()
        time.sleep(0.5)
        write(path, data)
        written.set()

    monkeypatch.setattr(embedded, "_write_atomically", slow_write)
    queue = Queue("work", Exchange("wa", type="direct"), routing_key="work")

    def declare() -> None:
        with Connection("embedded://", transport_options=_options(tmp_path)) as conn:
            queue(conn.channel()).declare()

    first = threading.Thread(target=declare)
    first.start()
    assert writing.wait(10)
    with Connection("embedded://", transport_options=_options(tmp_path)) as conn:
        producer = conn.Producer(conn.channel())
        producer.publish({"n": 1}, exchange=queue.exchange, routing_key="work", declare=[queue])
    first.join(10)
    assert written.is_set()
    with Connection("embedded://", transport_options=_options(tmp_path)) as conn:
        message = conn.SimpleQueue(queue).get(timeout=5)
        assert message.payload == {"n": 1}
        message.ack()


def test_an_unbound_queue_gets_no_more_messages(tmp_path):
    exchange = Exchange("wa", type="direct")
    kept, unbound = Queue("kept", exchange, routing_key="work"), Queue("unbound", exchange, routing_key="work")
    with Connection("embedded://", transport_options=_options(tmp_path)) as conn:
        channel = conn.channel()
        kept(channel).declare()
        unbound(channel).declare()
        unbound(channel).unbind_from(exchange, routing_key="work")
        assert _table(tmp_path, "wa") == ["kept"]
        conn.Producer(channel).publish({"n": 1}, exchange=exchange, routing_key="work")
        assert conn.SimpleQueue(kept).get(timeout=5).payload == {"n": 1}
        with pytest.raises(conn.SimpleQueue(unbound).Empty):
            conn.SimpleQueue(unbound).get(timeout=0.5)


def test_processes_binding_at_once_lose_no_binding_and_readers_never_see_half_a_table(tmp_path):
    ctx = multiprocessing.get_context("fork")
    stop, errors, barrier = ctx.Event(), ctx.Queue(), ctx.Barrier(BINDERS)
    readers = [ctx.Process(target=_read_tables, args=(str(tmp_path), stop, errors)) for _ in range(2)]
    binders = [ctx.Process(target=_bind_in_rounds, args=(str(tmp_path), w, barrier)) for w in range(BINDERS)]
    for p in (*readers, *binders):
        p.start()
    for p in binders:
        p.join(120)
    stop.set()
    for p in readers:
        p.join(10)
    seen = set()
    while not errors.empty():
        seen.add(errors.get())
    assert seen == set()
    assert all(p.exitcode == 0 for p in (*readers, *binders))
    lost = {r: BINDERS - len(_table(tmp_path, f"race-{r}")) for r in range(ROUNDS)}
    assert set(lost.values()) == {0}, lost


def test_a_table_that_does_not_parse_is_refused_naming_its_file_not_read_as_empty(tmp_path):
    options = _options(tmp_path)
    (Path(options["control_folder"]) / "celeryev.exchange").write_text('[["#", "^.*?$", "celeryev.')
    with Connection("embedded://", transport_options=options) as conn:
        with pytest.raises(Exception, match="celeryev.exchange is not valid JSON"):
            conn.channel().get_table("celeryev")


def test_a_queue_hands_out_messages_in_the_order_they_were_written_even_within_one_millisecond(tmp_path):
    queue = Queue("fifo", Exchange("fifo-x"), routing_key="fifo")
    with Connection("embedded://", transport_options=_options(tmp_path)) as conn:
        simple = conn.SimpleQueue(queue)
        for i in range(300):  # many within each millisecond
            simple.put({"n": i})
        taken = []
        while True:
            try:
                message = simple.get(block=False)
            except simple.Empty:
                break
            taken.append(message.payload["n"])
            message.ack()
        simple.close()
    assert taken == list(range(300))


def test_messages_left_by_stock_kombu_are_handed_out_by_their_millisecond_before_newer_ones(tmp_path):
    queue = Queue("mixed", Exchange("mixed-x"), routing_key="mixed")
    now_ms = time.monotonic_ns() // 10**6
    with Connection("embedded://", transport_options=_options(tmp_path)) as conn:
        simple = conn.SimpleQueue(queue)
        folder = Path(_options(tmp_path)["data_folder_in"])
        for ago, n in ((1000, "old-2"), (2000, "old-1")):  # stock's name: milliseconds since boot, a random id
            (folder / f"{now_ms - ago}_{n}.mixed.msg").write_text(json.dumps(
                {"body": json.dumps({"n": n}), "content-type": "application/json", "content-encoding": "utf-8",
                 "headers": {}, "properties": {"delivery_tag": n, "delivery_info": {}}}))
        simple.put({"n": "new"})
        taken = []
        for _ in range(3):
            message = simple.get(timeout=5)
            taken.append(message.payload["n"])
            message.ack()
        simple.close()
    assert taken == ["old-1", "old-2", "new"]


def test_a_stock_name_that_gained_a_digit_still_sorts_after_the_shorter_ones():
    """Stock kombu sorts its names as text, which puts 10,000,000 ms (2.8 hours after boot) before 9,999,999; a name of ours written at 3 hours comes after both."""
    names = ["10000000_b.q.msg", "9999999_a.q.msg", f"{3 * 3600 * 10**9:020d}000000_c.q.msg"]
    assert sorted(names, key=embedded._written_order) == ["9999999_a.q.msg", "10000000_b.q.msg",
                                                          f"{3 * 3600 * 10**9:020d}000000_c.q.msg"]


def test_two_consumers_of_one_queue_each_take_a_message_once(tmp_path):
    options = _options(tmp_path)
    queue = Queue("shared", Exchange("shared-x"), routing_key="shared")
    with Connection("embedded://", transport_options=options) as conn:
        simple = conn.SimpleQueue(queue)
        for i in range(200):
            simple.put({"n": i})
        simple.close()
    taken: list[int] = []

    def consume() -> None:
        with Connection("embedded://", transport_options=options) as conn:
            simple = conn.SimpleQueue(queue)
            while True:
                try:
                    message = simple.get(timeout=0.5)
                except simple.Empty:
                    break
                taken.append(message.payload["n"])
                message.ack()
            simple.close()

    threads = [threading.Thread(target=consume) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(taken) == list(range(200))
    assert os.listdir(options["claimed_folder"]) == []


OWNER = """
import sys, time
from kombu import Connection, Exchange, Queue
sys.path.insert(0, {tests!r})
from test_embedded import EVENTS, _options
from pathlib import Path
with Connection("embedded://", transport_options=_options(Path({var!r}))) as conn:
    channel = conn.channel()
    Queue({queue!r}, EVENTS, routing_key="#", auto_delete=True)(channel).declare()
    conn.Producer(channel).publish({{"event": "worker-heartbeat"}}, exchange=EVENTS, routing_key="worker.heartbeat")
    print("declared", flush=True)
    time.sleep(60)
"""


def _owner(var_dir: Path, queue: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", OWNER.format(tests=str(ROOT / "tests"), var=str(var_dir),
                                                                queue=queue)],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "declared"
    return proc


def _end(*procs: subprocess.Popen) -> None:
    for proc in procs:
        proc.kill()
        proc.wait(10)
        proc.stdout.close()


def _declare_auto_delete(var_dir: Path, queue: str) -> None:
    with Connection("embedded://", transport_options=_options(var_dir)) as conn:
        Queue(queue, EVENTS, routing_key="#", auto_delete=True)(conn.channel()).declare()


def _queue_files(var_dir: Path, queue: str) -> list[str]:
    return [n for n in os.listdir(var_dir / "broker" / "queue") if n.endswith(f".{queue}.msg")]


def test_an_auto_delete_queue_is_removed_with_its_messages_once_its_owner_was_killed(tmp_path):
    dead = _owner(tmp_path, "celeryev.dead-flower")
    alive = _owner(tmp_path, "celeryev.live-flower")
    try:
        # Each owner's publish reached both queues while both were bound.
        assert len(_queue_files(tmp_path, "celeryev.dead-flower")) >= 1
        os.kill(dead.pid, signal.SIGKILL)  # no close, no clean-up: only the kernel knows it is gone
        dead.wait(10)
        _declare_auto_delete(tmp_path, "celeryev.next-flower")
        assert sorted(_table(tmp_path, "celeryev")) == ["celeryev.live-flower", "celeryev.next-flower"]
        assert _queue_files(tmp_path, "celeryev.dead-flower") == []
        assert _queue_files(tmp_path, "celeryev.live-flower") != []
    finally:
        _end(dead, alive)


def test_a_message_routed_to_a_removed_queue_a_moment_too_late_is_deleted_by_the_next_sweep(tmp_path):
    dead = _owner(tmp_path, "celeryev.gone")
    _end(dead)
    _declare_auto_delete(tmp_path, "celeryev.first-sweep")
    assert "celeryev.gone" not in _table(tmp_path, "celeryev")
    # A publisher that read the table before the queue was unbound writes its message after the purge.
    with Connection("embedded://", transport_options=_options(tmp_path)) as conn:
        conn.channel()._put("celeryev.gone", {"body": "late"})
    assert len(_queue_files(tmp_path, "celeryev.gone")) == 1
    _declare_auto_delete(tmp_path, "celeryev.second-sweep")
    assert _queue_files(tmp_path, "celeryev.gone") == []


def test_an_event_queue_left_by_a_flower_from_before_owner_records_is_removed_too(tmp_path):
    # A var/broker folder from before this transport: a stopped Flower's queue bound, filling, and no owner file.
    options = _options(tmp_path)
    control = Path(options["control_folder"])
    (control / "celeryev.exchange").write_text(json.dumps([["#", "^.*?$", "celeryev.old-flower"]]))
    with Connection("embedded://", transport_options=options) as conn:
        for _ in range(3):
            conn.channel()._put("celeryev.old-flower", {"event": "worker-heartbeat"})
    live = _owner(tmp_path, "celeryev.live-flower")
    try:
        assert _table(tmp_path, "celeryev") == ["celeryev.live-flower"]
        assert _queue_files(tmp_path, "celeryev.old-flower") == []
    finally:
        _end(live)


def test_a_queue_declared_again_by_a_live_process_stays_when_its_earlier_owner_dies(tmp_path):
    # A worker restarted under the same name declares the same pidbox queue as the one it replaces.
    earlier = _owner(tmp_path, "core@host.celery.pidbox")
    later = _owner(tmp_path, "core@host.celery.pidbox")
    try:
        earlier.kill()
        earlier.wait(10)
        _declare_auto_delete(tmp_path, "celeryev.someone")
        assert "core@host.celery.pidbox" in _table(tmp_path, "celeryev")
    finally:
        _end(earlier, later)


def test_a_durable_queue_is_never_removed_by_the_sweep(tmp_path):
    with Connection("embedded://", transport_options=_options(tmp_path)) as conn:
        channel = conn.channel()
        for declaration in queues.declarations():
            declaration(channel).declare()
    _declare_auto_delete(tmp_path, "celeryev.someone")
    assert set(_table(tmp_path, "wa")) >= {queues.INCOMING_RAW, queues.INCOMING_NORMALIZED}


def test_a_poll_with_a_timeout_returns_at_once_after_stop_polling(tmp_path, monkeypatch):
    monkeypatch.setattr(embedded, "_stopping", False)
    with Connection("embedded://", transport_options={**_options(tmp_path), "polling_interval": 0.1}) as conn:
        consumer = conn.Consumer([Queue("idle", Exchange("idle-x"), routing_key="idle")], callbacks=[])
        consumer.consume()
        threading.Timer(0.3, embedded.stop_polling).start()
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            conn.drain_events(timeout=10)
        assert time.monotonic() - started < 1.5


def test_connecting_to_the_embedded_broker_prints_no_hostname_warning(tmp_path):
    code = ("from waflow.tasks import celery_app\n"
            "with celery_app.connection_for_write() as c:\n"
            "    c.ensure_connection(max_retries=1); print(c.as_uri())\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WAFLOW_TEST", "CELERY_BROKER"))}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**env, "WAFLOW_VAR_DIR": str(tmp_path)},
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("embedded://")
    assert "No hostname" not in out.stderr + out.stdout
