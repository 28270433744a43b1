"""Draft pipeline benchmark: a client's signed webhook in, a ``ready`` draft in PostgreSQL out.

Run from the repository root: ``.venv/bin/python bench/drafts.py`` (``--help`` for the knobs).

It migrates and empties the benchmark database, purges waflow's queues on the benchmark vhost, starts the
Procfile's ``web``, ``ingestor``, ``core``, ``drafter`` and ``announcer`` lines (RabbitMQ + PostgreSQL), and
measures two phases:

latency  ``--rate`` new conversations a second (default 20) for ``--duration`` s (default 30): each a new
         client's one text message, one signed POST each on an even schedule. Per conversation, the time from
         just before its POST to its draft's ``finished_at`` (set by the drafter as it stores the draft
         ``ready``). The quiet period (``DRAFT_QUIET_SECONDS``, 3 s) is part of it by design: the goal is the
         quiet period + 1 s at p95. The offline drafter (the default).
chat     the drafter line restarted with ``DRAFTER=chat`` against a local fake chat-completions server
         (``tests/fake_chat_server.py``, in this process) that answers every request after ``--chat-delay`` s
         (default 2): ``--chat-conversations`` (default 20) new conversations posted at once; the time until
         the last is drafted, the model requests that overlapped, per ``--chat-concurrency`` value (default
         ``20,4``: the Procfile's, and a smaller line for contrast).

Prints tables and writes ``bench/out/drafts-<timestamp>.json``. By default on the benchmark vhost and database
(``waflow_bench``); ``--broker-url`` and ``--database-url`` point it at others (a scratch vhost and database
of your own: both are emptied).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import sys
import threading
import time
import zlib
from typing import Any

import requests

import _common as common
from _common import queues
from e2e import Database

sys.path.insert(0, str(common.ROOT / "tests"))
from fake_chat_server import FakeChatServer, Reply, completion  # noqa: E402

WORKERS = ("ingestor", "core", "drafter", "announcer")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=float, default=20, help="new conversations a second in the latency phase")
    p.add_argument("--duration", type=float, default=30, help="seconds of the latency phase")
    p.add_argument("--chat-delay", type=float, default=2.0, help="seconds the fake model takes to answer")
    p.add_argument("--chat-conversations", type=int, default=20, help="conversations posted at once (chat phase)")
    p.add_argument("--chat-concurrency", default="20,4",
                   help="drafter threads to try in the chat phase, comma-separated")
    p.add_argument("--phases", default="latency,chat", help="comma-separated, of latency, chat")
    p.add_argument("--timeout", type=float, default=120, help="a phase gives up this long after its first POST")
    p.add_argument("--broker-url", default=common.BROKER_URL)
    p.add_argument("--database-url", default=common.DATABASE_URL)
    p.add_argument("--redis-url", help="the send limiter's Redis (the ingestor debits inbound messages there); "
                                       "default: waflow's default")
    p.add_argument("--port", type=int, default=0, help="gunicorn port (default: a free one)")
    args = p.parse_args()
    args.phases = [x.strip() for x in args.phases.split(",") if x.strip()]
    args.chat_concurrency = [int(x) for x in args.chat_concurrency.split(",") if x.strip()]
    return args


_RUN = common.stamp()


def conversation_post(n: int, phase: str) -> tuple[str, bytes]:
    """A new client's first message: (wamid, signed body)."""
    wa_id = f"62{zlib.crc32(phase.encode()) % 10**4:04d}{n:07d}"
    wamid = f"wamid.bench-{_RUN}-{phase}-{n:06d}"
    text = common.SHORT_TEXTS[n % len(common.SHORT_TEXTS)]
    return wamid, common.webhook_body([common.text_message(wamid, wa_id, text)], {wa_id: f"Client {n}"})


class Poster:
    def __init__(self, url: str, threads: int = 16) -> None:
        self.url = url
        self.pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="client")
        self._local = threading.local()
        self.failed = 0

    def post(self, body: bytes) -> bool:
        session = getattr(self._local, "session", None) or requests.Session()
        self._local.session = session
        headers = {"Content-Type": "application/json", "X-Hub-Signature-256": common.sign(body)}
        for _ in range(3):
            try:
                if session.post(self.url, data=body, timeout=10, headers=headers).status_code == 200:
                    return True
            except requests.RequestException:
                pass
            time.sleep(0.5)
        self.failed += 1
        return False


def finished(db: Database, prefix: str) -> dict[str, tuple[float, str, str]]:
    """wamid answered -> (finished_at as Unix seconds, status, drafter) of the phase's drafts."""
    with db.conn.cursor() as cur:
        cur.execute("select answers->>0, extract(epoch from finished_at)::float8, status, drafter from drafts "
                    "where finished_at is not null and starts_with(answers->>0, %s)", (prefix,))
        return {w: (t, s, d) for w, t, s, d in cur.fetchall()}


def wait_drafts(db: Database, prefix: str, count: int, deadline: float) -> dict[str, tuple[float, str, str]]:
    while True:
        done = finished(db, prefix)
        if len(done) >= count or time.time() > deadline:
            return done
        time.sleep(0.1)


def latency_phase(args: argparse.Namespace, db: Database, poster: Poster, quiet: float) -> dict[str, Any]:
    count = round(args.rate * args.duration)
    prefix = f"wamid.bench-{_RUN}-latency-"
    posts = [conversation_post(n, "latency") for n in range(count)]
    sent_at: dict[str, float] = {}
    start = time.time() + 0.5

    def send(n: int) -> None:
        wamid, body = posts[n]
        time.sleep(max(0.0, start + n / args.rate - time.time()))
        sent_at[wamid] = time.time()
        poster.post(body)

    print(f"[latency] {count} new conversations at {args.rate:g}/s ...", flush=True)
    futures = [poster.pool.submit(send, n) for n in range(count)]
    concurrent.futures.wait(futures)
    done = wait_drafts(db, prefix, count, start + args.duration + args.timeout)
    latencies = sorted(done[w][0] - t for w, t in sent_at.items() if w in done)
    seconds = {f"p{p}": _r(common.percentile(latencies, p)) for p in (50, 95, 99)}
    seconds["max"] = _r(latencies[-1]) if latencies else None
    return {"conversations": count, "rate": args.rate, "quiet_seconds": quiet, "drafted": len(done),
            "ready": sum(1 for v in done.values() if v[1] == "ready"), "post_failures": poster.failed,
            "seconds": seconds, "goal_p95_seconds": quiet + 1,
            "over_quiet_p95_seconds": _r(seconds["p95"] - quiet) if seconds["p95"] is not None else None}


def chat_phase(args: argparse.Namespace, db: Database, poster: Poster, procs: common.Processes,
               env: dict[str, str], concurrency: int, quiet: float) -> dict[str, Any]:
    prefix = f"wamid.bench-{_RUN}-chat{concurrency}-"
    with FakeChatServer(default=Reply(body=completion("Baik, kami bantu."), delay=args.chat_delay)) as model:
        procs.stop("drafter")
        procs.start_procfile("drafter", {**env, "DRAFTER": "chat", "DRAFT_LLM_URL": model.url,
                                         "DRAFT_LLM_MODEL": "fake-model", "DRAFTER_CONCURRENCY": str(concurrency)})
        common.wait_log(procs, "drafter", r"drafter@\S+ ready\.")
        time.sleep(1)
        posts = [conversation_post(n, f"chat{concurrency}") for n in range(args.chat_conversations)]
        print(f"[chat] {len(posts)} conversations at once, drafter -c {concurrency}, model answers in "
              f"{args.chat_delay:g} s ...", flush=True)
        start = time.time()
        list(poster.pool.map(lambda p: poster.post(p[1]), posts))
        posted = time.time() - start
        done = wait_drafts(db, prefix, len(posts), start + args.timeout)
        arrivals = sorted(r.at for r in model.received)
    ends = [v[0] for v in done.values()]
    overlap = max((sum(1 for b in arrivals if a <= b < a + args.chat_delay) for a in arrivals), default=0)
    return {"conversations": len(posts), "concurrency": concurrency, "model_delay_seconds": args.chat_delay,
            "posting_seconds": _r(posted), "drafted": len(done),
            "by_chat": sum(1 for v in done.values() if v[2] == "chat"),
            "last_draft_after_seconds": _r(max(ends) - start) if ends else None,
            "after_quiet_seconds": _r(max(ends) - start - quiet) if ends else None,
            "model_requests": len(arrivals), "most_model_requests_at_once": overlap}


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def main() -> None:
    args = parse_args()
    common.BROKER_URL = args.broker_url  # _common's broker helpers read it
    log_dir = common.OUT_DIR / f"drafts-{_RUN}-logs"
    port = args.port or common.free_port()
    env = common.service_env(port, CELERY_BROKER_URL=args.broker_url, DATABASE_URL=args.database_url,
                             **({"REDIS_URL": args.redis_url} if args.redis_url else {}))
    quiet = float(env.get("DRAFT_QUIET_SECONDS") or 3)
    db = Database(args.database_url)
    db.migrate(env)
    db.truncate()
    common.declare_queues()
    purged = {q: n for q, n in common.purge(queues.ALL_QUEUES).items() if n}
    print(f"database migrated and emptied; queues purged {purged or '(were empty)'}", flush=True)
    results: dict[str, Any] = {"benchmark": "drafts", "started": _RUN, "machine": common.machine_info(),
                               "config": {**vars(args), "broker": args.broker_url.split("@")[-1],
                                          "database": args.database_url.split("@")[-1],
                                          "procfile": {w: common.procfile_entry(w)[1] for w in WORKERS}},
                               "phases": {}}
    poster = Poster(f"http://127.0.0.1:{port}{common.WEBHOOK_PATH}")
    with common.Processes(log_dir) as procs:
        procs.start_procfile("web", env)
        for worker in WORKERS:
            procs.start_procfile(worker, env)
        common.wait_http(procs, "web", common.handshake_url(port))
        for worker in WORKERS:
            common.wait_log(procs, worker, rf"{worker}@\S+ ready\.")
        if "latency" in args.phases:
            results["phases"]["latency"] = latency_phase(args, db, poster, quiet)
        if "chat" in args.phases:
            results["phases"]["chat"] = [chat_phase(args, db, poster, procs, env, c, quiet)
                                         for c in args.chat_concurrency]
        poster.pool.shutdown(wait=True)
    db.close()
    report(results)
    path = common.write_json(f"drafts-{_RUN}", results)
    print(f"\nwrote {path.relative_to(common.ROOT)} (process logs in {log_dir.relative_to(common.ROOT)})")


def report(results: dict[str, Any]) -> None:
    phases = results["phases"]
    if "latency" in phases:
        r = phases["latency"]
        s = r["seconds"]
        print()
        common.print_table(["phase", "conversations", "drafted", "p50 s", "p95 s", "p99 s", "max s", "goal p95 s"],
                           [[f"webhook -> ready @{r['rate']:g}/s", r["conversations"], r["drafted"], s["p50"],
                             s["p95"], s["p99"], s["max"], r["goal_p95_seconds"]]])
    for r in phases.get("chat", []):
        print()
        common.print_table(["phase", "conversations", "drafted (chat)", "drafter -c", "model s",
                            "last ready after s", "minus quiet s", "model requests at once"],
                           [["chat, all at once", r["conversations"], f"{r['drafted']} ({r['by_chat']})",
                             r["concurrency"], r["model_delay_seconds"], r["last_draft_after_seconds"],
                             r["after_quiet_seconds"], r["most_model_requests_at_once"]]])


if __name__ == "__main__":
    main()
