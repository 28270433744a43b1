"""Fault scenarios with a ledger: short runs in the test suite, long ones in ``bench/faults/``.

Every scenario streams signed one-message webhooks, each with its own wamid, into
a real stack (gunicorn, the Procfile's workers, the dead-letter recorder) and
keeps a ledger per wamid: how often it was posted, whether it was answered 200,
and how many rows it became. A sender that is not answered 200 posts again, as
Meta does. "Lost" (answered 200, never persisted) and "duplicated" (more than
one row) are counted from the ledger and the database, not guessed.
"""
from __future__ import annotations

import heapq
import os
import random
import re
import signal
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

import requests
import sqlalchemy as sa

from support import Stack, compact, sign, wait_for
from waflow.db import get_engine

STAGES = (("ingestor", "wa.incoming.raw"), ("core", "wa.incoming.normalized,wa.ai.draft.approved"),
          ("media", "wa.media.processing"))


def webhook(wamid: str, n: int, *, image: bool = False) -> bytes:
    """A one-message webhook from client ``n``: text, or an image (which also makes a media job)."""
    wa_id = f"3162{n % 500:07d}"
    message: dict[str, Any] = {"from": wa_id, "id": wamid, "timestamp": str(int(time.time())),
                               "type": "image" if image else "text"}
    if image:
        message["image"] = {"id": f"media-{wamid}", "mime_type": "image/jpeg", "sha256": "c2hhMjU2",
                            "caption": "the contract, page 2"}
    else:
        message["text"] = {"body": f"Question {n} about my rental contract"}
    value = {"messaging_product": "whatsapp",
             "metadata": {"display_phone_number": "15550009999", "phone_number_id": "1122334455"},
             "contacts": [{"profile": {"name": f"Client {n}"}, "wa_id": wa_id}], "messages": [message]}
    return compact({"object": "whatsapp_business_account",
                    "entry": [{"id": "100200300", "changes": [{"field": "messages", "value": value}]}]})


POISON = b'{"object":"whatsapp_business_account","entry":[{"changes":[{"field":"messages","value":'


@dataclass
class Ledger:
    """What happened to each webhook of a run."""

    bodies: dict[str, bytes] = field(default_factory=dict)
    media: set[str] = field(default_factory=set)
    posts: dict[str, int] = field(default_factory=dict)
    acked: set[str] = field(default_factory=set)
    poison: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, n: int, *, image: bool = False, poison: bool = False) -> str:
        key = f"wamid.fault-{uuid.uuid4().hex}"
        if poison:
            # Signed, so the gateway takes it, but not a webhook: it must be dead-lettered.
            self.bodies[key] = POISON + key.encode()
            self.poison.add(key)
        else:
            self.bodies[key] = webhook(key, n, image=image)
        if image:
            self.media.add(key)
        return key


_local = threading.local()


def _session() -> requests.Session:
    if not hasattr(_local, "session"):
        _local.session = requests.Session()
    return _local.session


def wait_persisted(stack: Stack, ledger: Ledger, timeout: float) -> bool:
    """Wait until every acknowledged, non-poison webhook has its row (and media row); False on timeout."""
    want = {k for k in ledger.acked if k not in ledger.poison}
    want_media = {k for k in ledger.media if k in ledger.acked}

    def done() -> bool:
        try:
            with get_engine(stack.database_url).connect() as conn:
                rows = conn.execute(sa.text("SELECT count(*) FROM messages WHERE wamid LIKE 'wamid.fault-%'")).scalar()
                media = conn.execute(sa.text("SELECT count(*) FROM media WHERE wamid LIKE 'wamid.fault-%'")).scalar()
        except sa.exc.OperationalError:  # this process's pooled connections died with the database
            return False
        return rows >= len(want) and media >= len(want_media)

    try:
        wait_for(done, timeout, interval=0.5, what="every acknowledged webhook persisted")
        return True
    except AssertionError:
        return False


def at(moments: list[tuple[float, Callable[[], None]]]) -> threading.Thread:
    """Run each action at its moment (seconds from now) in a background thread."""
    def run() -> None:
        started = time.monotonic()
        for moment, action in sorted(moments, key=lambda m: m[0]):
            time.sleep(max(0.0, started + moment - time.monotonic()))
            action()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


# --- posting, counting, killing ----------------------------------------------------------------------------------

WAMID = re.compile(r"wamid\.fault-[0-9a-f]{32}")


@dataclass
class Traffic:
    """What the sender saw. Times are ``time.time()``; ``lags`` are seconds each first POST started late."""

    started: float = 0.0
    finished: float = 0.0
    first_post: dict[str, float] = field(default_factory=dict)
    acked_at: dict[str, float] = field(default_factory=dict)
    statuses: Counter = field(default_factory=Counter)
    gave_up: set[str] = field(default_factory=set)
    lags: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        lags = sorted(self.lags)
        posts = sum(self.statuses.values())
        return {
            "first_post_at": min(self.first_post.values(), default=None),
            "last_ack_at": max(self.acked_at.values(), default=None),
            "posting_seconds": (max(self.acked_at.values()) - min(self.first_post.values())) if self.acked_at else None,
            "posts": posts, "answers": dict(sorted(self.statuses.items())),
            "non_200": posts - self.statuses.get("200", 0), "gave_up": len(self.gave_up),
            "send_lag_p99_ms": round(lags[max(0, int(len(lags) * 0.99) - 1)] * 1000, 1) if lags else None,
            "send_lag_max_ms": round(lags[-1] * 1000, 1) if lags else None,
        }


def send(url: str, ledger: Ledger, keys: list[str], rate: float, *, threads: int = 32,
         give_up_after: float = 600.0, retry_pause: float = 0.5, max_pause: float = 5.0,
         timeout: float = 5.0) -> Traffic:
    """Post each key's webhook to ``url``: at ``rate`` per second on an even schedule, or with
    ``rate`` 0 as fast as ``threads`` senders are answered (a closed loop, like bench/e2e.py).

    Anything not answered 200 is posted again after a pause (``retry_pause``, doubling up to
    ``max_pause``) until it is, or until ``give_up_after`` seconds after its first post. Waiting
    re-posts sit in a heap, not in a thread, so they never hold up the schedule. Fills in the
    ledger's ``posts`` and ``acked`` and returns the ``Traffic``."""
    traffic = Traffic(started=time.time())
    heap: list[tuple[float, int, str, float, float]] = []  # (due, seq, key, give-up time, next pause)
    cv = threading.Condition()
    open_keys = [len(keys)]
    seq = 0
    start = time.monotonic() + 0.05
    for i, key in enumerate(keys):
        heap.append((start + (i / rate if rate > 0 else 0.0), i, key, 0.0, retry_pause))
        seq = i + 1
    heapq.heapify(heap)
    pool = ThreadPoolExecutor(threads, thread_name_prefix="sender")

    def finish() -> None:
        with cv:
            open_keys[0] -= 1
            cv.notify_all()

    def post(due: float, key: str, give_up_at: float, pause: float) -> None:
        nonlocal seq
        now = time.monotonic()
        first = give_up_at == 0.0
        if first:
            give_up_at = now + give_up_after
            if rate > 0:
                traffic.lags.append(max(0.0, now - due))
        body = ledger.bodies[key]
        headers = {"Content-Type": "application/json", "X-Hub-Signature-256": sign(body)}
        with ledger.lock:
            ledger.posts[key] = ledger.posts.get(key, 0) + 1
            if first:
                traffic.first_post[key] = time.time()
        try:
            answer = str(_session().post(url, data=body, headers=headers, timeout=timeout).status_code)
        except requests.RequestException as exc:
            answer = type(exc).__name__
        with ledger.lock:
            traffic.statuses[answer] += 1
            if answer == "200":
                ledger.acked.add(key)
                traffic.acked_at.setdefault(key, time.time())
        if answer == "200":
            finish()
            return
        if time.monotonic() + pause > give_up_at:
            with ledger.lock:
                traffic.gave_up.add(key)
            finish()
            return
        with cv:
            seq += 1
            heapq.heappush(heap, (time.monotonic() + pause, seq, key, give_up_at, min(max_pause, pause * 2)))
            cv.notify_all()

    try:
        with cv:
            while open_keys[0] > 0:
                now = time.monotonic()
                if heap and heap[0][0] <= now:
                    due, _, key, give_up_at, pause = heapq.heappop(heap)
                    pool.submit(post, due, key, give_up_at, pause)
                    continue
                cv.wait(min(0.5, heap[0][0] - now) if heap else 0.5)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    traffic.finished = time.time()
    return traffic


def figures(ledger: Ledger, database_url: str, *, others: set[str] = frozenset()) -> dict[str, Any]:
    """The ledger's figures from the database, in a few queries whatever the size.

    Counted over the ledger's wamids: ``persisted`` (has its message row), ``lost`` (answered 200,
    not a poison, no row), ``duplicated`` (rows beyond one per wamid, messages and media),
    ``persisted_unacknowledged`` (never answered 200, yet the broker had it), and from
    ``dead_letters`` the wamids each row carries (in its arguments, raw body or detail):
    ``dead_lettered`` (rows), ``dead_lettered_wamids``, ``dead_letter_rows_beyond_one`` (a wamid in
    more than one row). Rows for wamids neither in the ledger nor in ``others`` are ``foreign_rows``."""
    keys = set(ledger.bodies)
    poison = ledger.poison
    wanted = keys - poison
    with get_engine(database_url).connect() as conn:
        rows = {w: (n, last) for w, n, last in conn.execute(sa.text(
            "SELECT wamid, count(*), max(extract(epoch FROM created_at))::float8 FROM messages "
            "WHERE starts_with(wamid, 'wamid.fault-') GROUP BY wamid"))}
        media = dict(conn.execute(sa.text("SELECT wamid, count(*) FROM media WHERE starts_with(wamid, 'wamid.fault-') "
                                          "GROUP BY wamid")).all())
        dead = conn.execute(sa.text(
            "SELECT id, queue, task, status, source, error_type, args::text AS args, raw, detail, "
            "extract(epoch FROM recorded_at)::float8 AS recorded, extract(epoch FROM last_failed_at)::float8 AS failed "
            "FROM dead_letters")).all()
        redeliveries = conn.execute(sa.text("SELECT count(*), coalesce(sum(count), 0), coalesce(max(count), 0) "
                                            "FROM redeliveries")).one()
    dead_by_wamid: dict[str, int] = {}
    dead_rows = []
    for d in dead:
        found = set(WAMID.findall(" ".join(filter(None, (d.args, d.raw, d.detail)))))
        for w in found:
            dead_by_wamid[w] = dead_by_wamid.get(w, 0) + 1
        dead_rows.append({"id": d.id, "queue": d.queue, "task": d.task, "status": d.status, "source": d.source,
                          "error_type": d.error_type, "wamids": sorted(found), "recorded_at": d.recorded,
                          "last_failed_at": d.failed})
    ours = [w for w in wanted if w in rows]
    acked = ledger.acked
    return {
        "sent": len(keys), "posts": sum(ledger.posts.get(k, 0) for k in keys),
        "reposted_webhooks": sum(1 for k in keys if ledger.posts.get(k, 0) > 1),
        "acknowledged": len(acked & keys), "not_acknowledged": len(keys - acked),
        "persisted": len(ours),
        "lost": sum(1 for k in wanted & acked if k not in rows),
        "unacknowledged_persisted": sum(1 for k in wanted - acked if k in rows),
        "unacknowledged_missing": sum(1 for k in wanted - acked if k not in rows),
        "duplicated": sum(rows[w][0] - 1 for w in ours) + sum(media[w] - 1 for w in wanted if media.get(w, 0) > 1),
        "media_expected": len(ledger.media & wanted),
        "media_persisted": sum(1 for k in ledger.media & wanted if k in media),
        "foreign_rows": sum(1 for w in rows if w not in keys and w not in others),
        "dead_lettered": len(dead),
        "dead_lettered_wamids": len(set(dead_by_wamid) & keys),
        "dead_letter_rows_beyond_one": sum(n - 1 for w, n in dead_by_wamid.items() if w in keys and n > 1),
        "dead_letters_without_a_wamid": sum(1 for d in dead_rows if not d["wamids"]),
        "poison_sent": len(poison),
        "poison_dead_lettered": sum(1 for k in poison if k in dead_by_wamid),
        "non_poison_dead_lettered": sum(1 for k in wanted if k in dead_by_wamid),
        "redelivered_messages": redeliveries[0], "redeliveries": int(redeliveries[1]),
        "most_redeliveries_of_one_message": redeliveries[2],
        "last_row_at": max((rows[w][1] for w in ours), default=None),
        "last_dead_letter_at": max((d["recorded_at"] for d in dead_rows
                                    if set(d["wamids"]) & keys), default=None),
        "dead_letter_rows": dead_rows,
        "dead_lettered_keys": sorted(set(dead_by_wamid) & keys),
    }


class Supervisor:
    """``kill -9`` a stage worker's main process and start it again at once, as a process supervisor
    would, with a log: when (seconds since ``t0``), which pid, how long the new worker took to be ready.
    Safe to use from one thread per stage."""

    def __init__(self, stack: Stack, t0: float | None = None) -> None:
        self.stack = stack
        self.t0 = t0 if t0 is not None else time.monotonic()
        self.kills: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def kill(self, name: str) -> dict[str, Any]:
        queue = dict(STAGES)[name]
        log = self.stack.log_dir / f"{name}.log"
        readies = log.read_text().count("ready.")
        killed = []
        at = time.monotonic() - self.t0
        for proc_name, proc in list(self.stack.procs):
            if proc_name == name and proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)  # the main process; prefork children die with it (PDEATHSIG)
                proc.wait(10)
                killed.append(proc.pid)
        started = time.monotonic()
        self.stack.start_worker(name, queue)
        wait_for(lambda: log.read_text().count("ready.") > readies, 120, what=f"{name} restarted")
        entry = {"stage": name, "at": round(at, 2), "pids": killed,
                 "ready_after": round(time.monotonic() - started, 2)}
        with self._lock:
            self.kills.append(entry)
        return entry


def kill_stages_during(stack: Stack, duration: float, kills_per_stage: int, rng: random.Random,
                       t0: float | None = None) -> tuple[Supervisor, list[threading.Thread]]:
    """One thread per stage, each killing its stage's worker ``kills_per_stage`` times at random
    moments within ``duration`` (from 5% to 95% of it), restarting it at once each time. A moment
    that comes while the stage's previous restart is still under way waits for it (the log says when)."""
    supervisor = Supervisor(stack, t0)
    threads = []
    for name, _ in STAGES:
        moments = sorted(rng.uniform(0.05, 0.95) * duration for _ in range(kills_per_stage))

        def run(name: str = name, moments: list[float] = moments) -> None:
            for moment in moments:
                time.sleep(max(0.0, supervisor.t0 + moment - time.monotonic()))
                entry = supervisor.kill(name)
                entry["planned_at"] = round(moment, 2)

        thread = threading.Thread(target=run, name=f"kill-{name}", daemon=True)
        thread.start()
        threads.append(thread)
    return supervisor, threads
