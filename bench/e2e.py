"""End-to-end benchmark: signed webhook in, row in PostgreSQL ``messages`` out.

Run from the repository root: ``.venv/bin/python bench/e2e.py`` (``--help`` for the knobs).

It migrates and empties the benchmark database (``waflow_bench``), purges
waflow's queues on the benchmark vhost, then starts the Procfile's ``web``,
``ingestor``, ``core`` and ``media`` processes (worker concurrency from the
Procfile unless a flag says otherwise) and measures three phases, each with its
own wamids:

batched  ``--messages`` text messages (default 10,000) as POSTs of ``--batch-size``
         updates (default 100: one entry, one change, 100 messages): messages/s
         persisted, from the first POST to the last row visible (``count(*)``
         polled every 0.1 s);
single   the same messages as 1-update POSTs, sent by ``--client-threads``
         threads (default 16) as fast as they are answered;
latency  1-update POSTs at a steady ``--rate`` (default 100 msg/s) for
         ``--latency-duration`` s (default 30): per message, the time from just
         before its POST to the row's ``created_at`` (set by the core worker when
         it inserts): p50, p99, max.

A POST answered other than 200 is sent again, up to 3 times, as Meta would
(sooner than Meta). A phase gives up ``--timeout`` s (default 180) after its
first POST and reports what arrived. Prints tables and writes
``bench/out/e2e-<timestamp>.json``.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import subprocess
import threading
import time
from typing import Any, Sequence

import psycopg2
import requests

import _common as common
from _common import queues

PHASES = ("batched", "single", "latency")
WORKERS = ("ingestor", "core", "media")
STAGE_QUEUES = (queues.INCOMING_RAW, queues.INCOMING_NORMALIZED, queues.MEDIA_PROCESSING)
ATTEMPTS = 3


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=10_000, help="messages in the batched and single phases")
    p.add_argument("--batch-size", type=int, default=100, help="updates per POST in the batched phase")
    p.add_argument("--client-threads", type=int, default=16, help="threads sending POSTs")
    p.add_argument("--rate", type=float, default=100, help="messages/s in the latency phase")
    p.add_argument("--latency-duration", type=float, default=30, help="seconds of the latency phase")
    p.add_argument("--timeout", type=float, default=180, help="a phase gives up this long after its first POST")
    p.add_argument("--senders", type=int, default=500, help="distinct clients the messages come from")
    p.add_argument("--phases", default=",".join(PHASES), help=f"comma-separated, of {', '.join(PHASES)}")
    p.add_argument("--port", type=int, default=0, help="gunicorn port (default: a free one)")
    p.add_argument("--task-events", action="store_true",
                   help="workers send task events (-E), as they do while Flower is attached")
    p.add_argument("--rebuild-schema", action="store_true",
                   help="drop every table of waflow_bench first, then migrate from scratch "
                        "(after a migration was edited in place, which `alembic upgrade` would not apply)")
    for worker in WORKERS:
        default = common.procfile_defaults(worker).get(f"{worker.upper()}_CONCURRENCY")
        p.add_argument(f"--{worker}-concurrency", type=int, default=None,
                       help=f"{worker} worker processes (default: the Procfile's, {default})")
    args = p.parse_args()
    args.phases = [x.strip() for x in args.phases.split(",") if x.strip()]
    unknown = set(args.phases) - set(PHASES)
    if unknown:
        p.error(f"unknown phase(s): {', '.join(sorted(unknown))}")
    return args


# --- database --------------------------------------------------------------------------------------------------


class Database:
    """The benchmark database: created if missing, migrated, emptied, and polled."""

    def __init__(self, url: str = common.DATABASE_URL) -> None:
        self.url = url
        self._ensure_exists()
        self.conn = psycopg2.connect(url)
        self.conn.autocommit = True

    def _ensure_exists(self) -> None:
        base, _, name = self.url.rpartition("/")
        admin = psycopg2.connect(f"{base}/postgres")
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute("select 1 from pg_database where datname = %s", (name,))
            if cur.fetchone() is None:
                cur.execute(f'create database "{name}"')
        admin.close()

    def drop_schema(self) -> None:
        with self.conn.cursor() as cur:
            cur.execute("drop schema public cascade; create schema public")

    def migrate(self, env: dict[str, str]) -> None:
        done = subprocess.run(["alembic", "upgrade", "head"], cwd=common.ROOT, env=env, timeout=120,
                              capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"alembic upgrade head failed:\n{done.stdout}{done.stderr}")

    def truncate(self) -> None:
        with self.conn.cursor() as cur:
            common.truncate_all(cur)

    def count(self, prefix: str) -> int:
        with self.conn.cursor() as cur:
            cur.execute("select count(*) from messages where starts_with(wamid, %s)", (prefix,))
            return cur.fetchone()[0]

    def created_at(self, prefix: str) -> dict[str, float]:
        """wamid -> created_at (Unix seconds) of this phase's rows."""
        with self.conn.cursor() as cur:
            cur.execute("select wamid, extract(epoch from created_at)::float8 from messages "
                        "where starts_with(wamid, %s)", (prefix,))
            return dict(cur.fetchall())

    def close(self) -> None:
        self.conn.close()


# --- client ----------------------------------------------------------------------------------------------------


class Client:
    """POSTs signed webhooks from a pool of threads, one ``requests.Session`` each."""

    def __init__(self, url: str, threads: int) -> None:
        self.url = url
        self.pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="client")
        self._local = threading.local()
        self._lock = threading.Lock()
        self.stats = {"posts": 0, "non_200": 0, "errors": 0, "failed": 0, "unsent": 0}

    def post(self, body: bytes, deadline: float) -> bool:
        """POST until a 200 (at most ATTEMPTS times, never past ``deadline``); True if acknowledged.

        A webhook not acknowledged counts as ``failed``, or ``unsent`` if the deadline came before its first try.
        """
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        headers = {"Content-Type": "application/json", "X-Hub-Signature-256": common.sign(body)}
        for attempt in range(ATTEMPTS):
            if time.time() >= deadline:
                with self._lock:
                    self.stats["unsent" if attempt == 0 else "failed"] += 1
                return False
            try:
                status = session.post(self.url, data=body, headers=headers, timeout=10).status_code
            except requests.RequestException:
                status = None
            with self._lock:
                self.stats["posts"] += 1
                if status == 200:
                    return True
                self.stats["errors" if status is None else "non_200"] += 1
            time.sleep(0.5 * (attempt + 1))  # Meta waits longer; a benchmark cannot
        with self._lock:
            self.stats["failed"] += 1
        return False

    def take_stats(self) -> dict[str, int]:
        with self._lock:
            stats, self.stats = self.stats, dict.fromkeys(self.stats, 0)
        return stats

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def make_posts(prefix: str, messages: int, per_post: int, senders: int) -> list[tuple[bytes, int]]:
    """(body, number of messages) for each POST; message ``i`` has wamid ``<prefix><i>``."""
    now = int(time.time())
    posts = []
    for start in range(0, messages, per_post):
        batch, names = [], {}
        for i in range(start, min(start + per_post, messages)):
            wa_id, name = common.sender(i % senders)
            names[wa_id] = name
            batch.append(common.text_message(f"{prefix}{i:07d}", wa_id,
                                             common.SHORT_TEXTS[i % len(common.SHORT_TEXTS)], now))
        posts.append((common.webhook_body(batch, names), len(batch)))
    return posts


# --- phases ----------------------------------------------------------------------------------------------------


class Arrivals:
    """Polls the phase's row count until ``target()`` rows are visible or the deadline passes."""

    def __init__(self, db: Database, prefix: str, start: float, deadline: float) -> None:
        self.db, self.prefix, self.start, self.deadline = db, prefix, start, deadline
        self.samples: list[tuple[float, int]] = []  # (seconds since start, rows), about one a second

    def wait(self, target, sending_done) -> tuple[int, float]:
        """Return (rows seen, seconds from start until the last of them was seen, or until the deadline)."""
        last_sample = -1.0
        while True:
            now = time.time()
            rows = self.db.count(self.prefix)
            if now - self.start - last_sample >= 1:
                self.samples.append((round(now - self.start, 1), rows))
                last_sample = now - self.start
            if sending_done() and rows >= target():
                self.samples.append((round(now - self.start, 1), rows))
                return rows, now - self.start
            if now >= self.deadline:
                return rows, now - self.start
            time.sleep(0.1)


def throughput_phase(name: str, client: Client, db: Database, posts: Sequence[tuple[bytes, int]],
                     timeout: float) -> dict[str, Any]:
    """Send every POST as fast as the client threads go; time until every acknowledged message is a row."""
    prefix = phase_prefix(name)
    total = sum(n for _, n in posts)
    acked, lock = [0], threading.Lock()
    last_answer = [0.0]

    def send(body: bytes, n: int) -> None:
        ok = client.post(body, deadline)
        with lock:
            acked[0] += n if ok else 0
            last_answer[0] = max(last_answer[0], time.time())

    start = time.time()
    deadline = start + timeout
    futures = [client.pool.submit(send, body, n) for body, n in posts]
    arrivals = Arrivals(db, prefix, start, deadline)
    rows, elapsed = arrivals.wait(lambda: acked[0], lambda: all(f.done() for f in futures))
    concurrent.futures.wait(futures, timeout=max(0.0, deadline - time.time()) + 15)
    posting = last_answer[0] - start
    return {
        "messages": total, "posts": len(posts), "per_post": posts[0][1] if posts else 0,
        # Not complete: the phase gave up, and rows / seconds is what arrived by then.
        "acknowledged": acked[0], "rows": rows, "complete": rows >= total,
        "seconds": elapsed, "messages_per_s": rows / elapsed if elapsed > 0 else None,
        "posting_seconds": posting, "posts_per_s": len(posts) / posting if posting > 0 else None,
        "client": client.take_stats(), "progress": arrivals.samples,
    }


def latency_phase(client: Client, db: Database, posts: Sequence[tuple[bytes, int]], rate: float,
                  timeout: float) -> dict[str, Any]:
    """1-update POSTs on an even schedule of ``rate``/s; per message, POST time to the row's created_at."""
    prefix = phase_prefix("latency")
    sent_at: list[float | None] = [None] * len(posts)
    lag: list[float] = [0.0] * len(posts)
    acked = [0]
    lock = threading.Lock()
    start = time.time() + 0.5
    deadline = start + timeout

    def send(i: int, body: bytes) -> None:
        planned = start + i / rate
        time.sleep(max(0.0, planned - time.time()))
        sent_at[i] = time.time()
        lag[i] = sent_at[i] - planned
        if client.post(body, deadline):
            with lock:
                acked[0] += 1

    futures = [client.pool.submit(send, i, body) for i, (body, _) in enumerate(posts)]
    arrivals = Arrivals(db, prefix, start, deadline)
    rows, elapsed = arrivals.wait(lambda: acked[0], lambda: all(f.done() for f in futures))
    concurrent.futures.wait(futures, timeout=max(0.0, deadline - time.time()) + 15)
    created = db.created_at(prefix)
    latencies = sorted(created[wamid] - t for i, t in enumerate(sent_at)
                       if t is not None and (wamid := f"{prefix}{i:07d}") in created)
    ms = {f"p{p}": _ms(common.percentile(latencies, p)) for p in (50, 90, 99)}
    ms["max"] = _ms(latencies[-1]) if latencies else None
    return {
        "messages": len(posts), "rate": rate, "acknowledged": acked[0], "rows": rows,
        "complete": rows >= len(posts), "seconds": elapsed,
        "latency_ms": ms, "send_lag_ms": {"p99": _ms(common.percentile(sorted(lag), 99)), "max": _ms(max(lag))},
        "client": client.take_stats(), "progress": arrivals.samples,
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


_RUN = common.stamp()


def phase_prefix(phase: str) -> str:
    return f"wamid.bench-{_RUN}-{phase}-"


def settle_queues(wait: float = 10.0) -> dict[str, int]:
    """Between phases: wait for the stage queues to empty; purge what is left (a phase that gave up)."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if all(common.queue_depth(q) == 0 for q in STAGE_QUEUES):
            return {}
        time.sleep(0.5)
    return {q: n for q, n in common.purge(STAGE_QUEUES).items() if n}


# --- the run ---------------------------------------------------------------------------------------------------


def start_stack(procs: common.Processes, env: dict[str, str], port: int, task_events: bool = False) -> None:
    procs.start_procfile("web", env)
    for worker in WORKERS:
        procs.start_procfile(worker, env, extra=["-E"] if task_events else [])
    common.wait_http(procs, "web", common.handshake_url(port))
    for worker in WORKERS:
        common.wait_log(procs, worker, r"@\S+ ready\.")


def run_phases(args: argparse.Namespace, procs: common.Processes, client: Client, db: Database,
               results: dict[str, Any]) -> None:
    for phase in args.phases:
        if phase == "latency":
            count = round(args.rate * args.latency_duration)
            print(f"[latency] {count} messages at {args.rate:g}/s, 1 per POST ...", flush=True)
            posts = make_posts(phase_prefix(phase), count, 1, args.senders)
            result = latency_phase(client, db, posts, args.rate, args.timeout)
        else:
            per_post = args.batch_size if phase == "batched" else 1
            print(f"[{phase}] {args.messages} messages, {per_post} per POST ...", flush=True)
            posts = make_posts(phase_prefix(phase), args.messages, per_post, args.senders)
            result = throughput_phase(phase, client, db, posts, args.timeout)
        results["phases"][phase] = result
        for name in ("web", *WORKERS):
            procs.check_alive(name)
        leftover = settle_queues()
        if leftover:
            results["purged_between_phases"][phase] = leftover


def print_report(results: dict[str, Any]) -> None:
    phases = results["phases"]
    rows = []
    for name in ("batched", "single"):
        if name in phases:
            r = phases[name]
            rows.append([f"{name} ({r['per_post']}/POST)", r["messages"], r["posts"], r["posts_per_s"],
                         r["rows"], r["seconds"], r["messages_per_s"],
                         r["client"]["non_200"] + r["client"]["errors"], r["client"]["failed"] + r["client"]["unsent"],
                         "yes" if r["complete"] else "NO (gave up)"])
    if rows:
        print()
        common.print_table(["phase", "messages", "POSTs", "POSTs/s", "rows", "seconds", "msg/s persisted",
                            "retried", "not acked", "complete"], rows)
    if "latency" in phases:
        r = phases["latency"]
        lat = r["latency_ms"]
        print()
        common.print_table(["phase", "messages", "rows", "p50 ms", "p90 ms", "p99 ms", "max ms", "send lag max ms",
                            "complete"],
                           [[f"latency @{r['rate']:g} msg/s", r["messages"], r["rows"], lat["p50"], lat["p90"],
                             lat["p99"], lat["max"], r["send_lag_ms"]["max"],
                             "yes" if r["complete"] else "NO (gave up)"]])
    for name, purged in results["purged_between_phases"].items():
        print(f"after {name}: purged {purged} (the phase gave up with work queued)")


def main() -> None:
    args = parse_args()
    log_dir = common.OUT_DIR / f"e2e-{_RUN}-logs"
    port = args.port or common.free_port()
    concurrency = {f"{w.upper()}_CONCURRENCY": str(getattr(args, f"{w}_concurrency"))
                   for w in WORKERS if getattr(args, f"{w}_concurrency") is not None}
    env = common.service_env(port, **concurrency)
    effective = {w: int(concurrency.get(f"{w.upper()}_CONCURRENCY")
                        or common.procfile_defaults(w)[f"{w.upper()}_CONCURRENCY"]) for w in WORKERS}

    db = Database()
    if args.rebuild_schema:
        db.drop_schema()
    db.migrate(env)
    db.truncate()
    common.declare_queues()
    purged = {q: n for q, n in common.purge(queues.ALL_QUEUES).items() if n}
    print(f"database waflow_bench migrated and emptied; queues purged {purged or '(were empty)'}")
    print(f"workers: {', '.join(f'{w} -c {n}' for w, n in effective.items())}", flush=True)

    results: dict[str, Any] = {
        "benchmark": "e2e", "started": _RUN, "machine": common.machine_info(),
        "config": {**vars(args), "concurrency": effective, "broker": common.BROKER_URL.split("@")[-1],
                   "database": common.DATABASE_URL.split("@")[-1]},
        "phases": {}, "purged_between_phases": {},
    }
    client = Client(f"http://127.0.0.1:{port}{common.WEBHOOK_PATH}", args.client_threads)
    with common.Processes(log_dir) as procs:
        try:
            start_stack(procs, env, port, task_events=args.task_events)
            run_phases(args, procs, client, db, results)
        finally:
            client.close()  # before the services stop, so no POST is left retrying against them
            db.close()
    print_report(results)
    path = common.write_json(f"e2e-{_RUN}", results)
    print(f"\nwrote {path.relative_to(common.ROOT)} (process logs in {log_dir.relative_to(common.ROOT)})")


if __name__ == "__main__":
    main()
