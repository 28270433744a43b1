"""Fault scenarios with a ledger: short runs in the test suite, long ones in ``bench/faults/``.

Every scenario streams signed one-message webhooks, each with its own wamid, into
a real stack (gunicorn, the Procfile's workers, the dead-letter recorder) and
keeps a ledger per wamid: how often it was posted, whether it was answered 200,
and how many rows it became. A sender that is not answered 200 posts again, as
Meta does. "Lost" (answered 200, never persisted) and "duplicated" (more than
one row) are counted from the ledger and the database, not guessed.
"""
from __future__ import annotations

import json
import random
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

import requests
import sqlalchemy as sa

from support import Stack, compact, sign, wait_for
from waflow.db import get_engine

STAGES = (("ingestor", "wa.incoming.raw"), ("core", "wa.incoming.normalized"), ("media", "wa.media.processing"))


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

    def report(self, database_url: str) -> dict[str, Any]:
        """Sent, acknowledged, persisted, lost, duplicated, dead-lettered, from the database."""
        keys = [k for k in self.bodies if k not in self.poison]
        rows: dict[str, int] = {}
        media_rows: dict[str, int] = {}
        with get_engine(database_url).connect() as conn:
            for chunk in range(0, len(keys), 1000):
                part = keys[chunk:chunk + 1000]
                for wamid, n in conn.execute(sa.text("SELECT wamid, count(*) FROM messages WHERE wamid IN :w "
                                                     "GROUP BY wamid").bindparams(sa.bindparam("w", expanding=True)),
                                             {"w": part}):
                    rows[wamid] = n
                for wamid, n in conn.execute(sa.text("SELECT wamid, count(*) FROM media WHERE wamid IN :w "
                                                     "GROUP BY wamid").bindparams(sa.bindparam("w", expanding=True)),
                                             {"w": part}):
                    media_rows[wamid] = n
            dead = conn.execute(sa.text("SELECT error_message, args FROM dead_letters")).all()
        poison_dead = sum(1 for d in dead if any(p in json.dumps(d.args) for p in self.poison)) if self.poison else 0
        acked = [k for k in keys if k in self.acked]
        return {
            "sent": len(self.bodies), "posts": sum(self.posts.values()),
            "acknowledged": len(self.acked), "not_acknowledged": len(self.bodies) - len(self.acked),
            "persisted": sum(1 for k in keys if rows.get(k)),
            "lost": sum(1 for k in acked if not rows.get(k)),
            "duplicated": sum(n - 1 for n in rows.values() if n > 1) + sum(n - 1 for n in media_rows.values() if n > 1),
            "media_expected": len(self.media), "media_persisted": sum(1 for k in self.media if media_rows.get(k)),
            "dead_lettered": len(dead), "poison_sent": len(self.poison), "poison_dead_lettered": poison_dead,
        }


def stream(stack: Stack, ledger: Ledger, keys: list[str], rate: float, *, threads: int = 16,
           give_up_after: float = 120.0, retry_pause: float = 0.5) -> float:
    """Post each key's webhook at ``rate`` per second, re-posting anything not answered 200 until
    it is (or ``give_up_after`` seconds pass for it). Returns the seconds from first to last 200."""
    started = time.monotonic()
    last_ack = [started]

    def deliver(key: str) -> None:
        body = ledger.bodies[key]
        headers = {"Content-Type": "application/json", "X-Hub-Signature-256": sign(body)}
        deadline = time.monotonic() + give_up_after
        wait = retry_pause
        session = _session()
        while time.monotonic() < deadline:
            with ledger.lock:
                ledger.posts[key] = ledger.posts.get(key, 0) + 1
            try:
                status = session.post(stack.url, data=body, headers=headers, timeout=5).status_code
            except requests.RequestException:
                status = None
            if status == 200:
                with ledger.lock:
                    ledger.acked.add(key)
                    last_ack[0] = time.monotonic()
                return
            time.sleep(wait)
            wait = min(5.0, wait * 2)

    with ThreadPoolExecutor(threads) as pool:
        for i, key in enumerate(keys):
            due = started + i / rate
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            pool.submit(deliver, key)
    return last_ack[0] - started


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


class Restartable:
    """Kill -9 a stage's worker and start it again at once, as a process supervisor would."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.kills: list[dict[str, Any]] = []

    def kill(self, name: str) -> None:
        import os
        import signal

        queue = dict(STAGES)[name]
        for i, (proc_name, proc) in enumerate(self.stack.procs):
            if proc_name == name and proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)  # the main process; its pool processes die with it
                proc.wait(10)
        self.kills.append({"stage": name, "at": time.time()})
        log = self.stack.log_dir / f"{name}.log"
        readies = log.read_text().count("ready.")
        self.stack.start_worker(name, queue)
        wait_for(lambda: log.read_text().count("ready.") > readies, 60, what=f"{name} restarted")


def kill_workers_during(stack: Stack, duration: float, kills: int, rng: random.Random) -> Restartable:
    """Start a thread that kills ``kills`` workers, stages in turn, at random moments in ``duration``."""
    restartable = Restartable(stack)
    moments = sorted(rng.uniform(0.05, 0.9) * duration for _ in range(kills))

    def run() -> None:
        started = time.monotonic()
        for i, moment in enumerate(moments):
            time.sleep(max(0.0, started + moment - time.monotonic()))
            restartable.kill(STAGES[i % len(STAGES)][0])

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    restartable.thread = thread  # type: ignore[attr-defined]
    return restartable


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
