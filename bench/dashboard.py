"""The dashboard on a large database (issue 19, "Speed"): its pages and its live endpoint, over HTTP.

    .venv/bin/python bench/dashboard.py                # seeds once (a minute or two), then about 3 minutes
    .venv/bin/python bench/dashboard.py --requests 50 --poll-duration 10    # a quick check

1. **Data**: the database ``waflow_bench_dashboard`` (``--database-url``; created if missing, migrated with
   alembic) gets 10,000 conversations and 1,000,000 messages, written with SQL (``bench/dashboard_seed.py``:
   a 2,000-message conversation, a few hundred waiting and urgent ones, media, 100,000 decisions on drafts, the
   change log, and the inbox's columns when its migration exists). The seed is kept and reused while the schema
   (the alembic head) and the sizes stay the same (``--reseed`` writes it again).
2. **The process**: the Procfile's ``dashboard`` line (gunicorn, ``gunicorn.conf.py``, the factory), on a free
   port, ``WEB_CONCURRENCY`` and ``WEB_THREADS`` as configured (default 2 and 16).
3. **Pages**, signed in (the busiest lawyer; the audit page also as an admin and as the least busy lawyer):
   each GET ``--warmup`` times, then ``--requests`` times one after the other. Time is taken by the client on
   loopback, from sending the request to the last byte of the answer on a kept-alive connection: the server's
   time plus a fraction of a millisecond of HTTP. p50, p95, max.
4. **Live**: ``--pollers`` (50) pages each asking ``GET /dashboard/changes?since=N`` every ``--poll-interval``
   (2) s for ``--poll-duration`` (60) s, their schedules spread over the interval, each carrying on from the
   cursor it was given, while a writer records ``--writes-per-second`` (10) new changes. p50, p95, max.

A page or endpoint this branch does not have yet answers 404: it is reported as "not found", and the rest
runs. Output: a table, ``bench/out/dashboard-<timestamp>.json``, the dashboard's log beside it.
"""
from __future__ import annotations

import argparse
import os
import random
import re
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import requests

import _common as common
import dashboard_seed

DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/waflow_bench_dashboard"
PASSWORD = "bench dashboard password"
ADMIN = "admin@bench.invalid"
LAWYERS = [f"lawyer{i:02d}@bench.invalid" for i in range(1, dashboard_seed.LAWYERS + 1)]
MARKER = "bench_dashboard_seed"
GOALS_MS = {"inbox": 100, "conversation": 100, "changes": 10, "audit": 100, "weekly": 100}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=DATABASE_URL)
    parser.add_argument("--conversations", type=int, default=10_000)
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--long", type=int, default=2_000, help="messages in the longest conversation")
    parser.add_argument("--waiting", type=int, default=400, help="conversations whose client wrote last")
    parser.add_argument("--decisions", type=int, default=100_000)
    parser.add_argument("--reseed", action="store_true", help="write the data again even if it is there")
    parser.add_argument("--requests", type=int, default=200, help="timed GETs per page")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--pollers", type=int, default=50)
    parser.add_argument("--poll-interval", type=float, default=2.0)
    parser.add_argument("--poll-duration", type=float, default=60.0)
    parser.add_argument("--writes-per-second", type=float, default=10.0)
    parser.add_argument("--port", type=int, default=0, help="the dashboard's port (default: a free one)")
    parser.add_argument("--root", type=Path, default=common.ROOT,
                        help="the checkout whose migrations and dashboard run (default: this one)")
    return parser.parse_args(argv)


# --- the database ---------------------------------------------------------------------------------------------


def ensure_database(url: str) -> None:
    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    admin = psycopg2.connect(urlunsplit(parts._replace(path="/postgres")))
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
        if cur.fetchone() is None:
            cur.execute(f'CREATE DATABASE "{name}"')
            print(f"created database {name}")
    admin.close()


def migrate(url: str, root: Path) -> None:
    env = {**os.environ, "DATABASE_URL": url, "WAFLOW_ENV": "development", "PATH": f"{common.VENV_BIN}:"
           f"{os.environ.get('PATH', '')}"}
    done = subprocess.run([str(common.VENV_BIN / "alembic"), "upgrade", "head"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=1800)
    if done.returncode:
        sys.exit(f"alembic upgrade head failed:\n{done.stdout}{done.stderr}")


def ensure_users(url: str) -> dict[str, int]:
    """The admin and the lawyers (made once; the seed never empties ``users``): email -> id."""
    from waflow import config, users
    from waflow.db import transaction

    found = {}
    with transaction(config.load({"DATABASE_URL": url}).database_url) as conn:  # the driver waflow uses
        for email in [ADMIN, *LAWYERS]:
            person = users.find(conn, email) or users.create(
                conn, email, name=email.split("@")[0].title(), role="admin" if email == ADMIN else "lawyer",
                locale="en", password=PASSWORD)
            found[email] = person.id
    return found


def prepare(args: argparse.Namespace) -> dict[str, Any]:
    ensure_database(args.database_url)
    migrate(args.database_url, args.root)
    people = ensure_users(args.database_url)
    db = psycopg2.connect(args.database_url)
    wanted = repr((args.conversations, args.messages, args.long, args.waiting, args.decisions))
    with db, db.cursor() as cur:
        cur.execute("SELECT version_num FROM alembic_version")
        head = cur.fetchone()[0]
        cur.execute(f"CREATE TABLE IF NOT EXISTS {MARKER} (head text, sizes text, seeded_at timestamptz)")
        cur.execute(f"SELECT head, sizes, seeded_at FROM {MARKER}")
        marker = cur.fetchone()
    seeded: dict[str, Any] = {"reused": True, "head": head}
    if args.reseed or marker is None or marker[:2] != (head, wanted):
        print(f"seeding {args.database_url.rsplit('/', 1)[-1]} (schema {head}): {args.conversations:,} "
              f"conversations, {args.messages:,} messages, {args.decisions:,} decisions")
        started = time.monotonic()
        with db, db.cursor() as cur:
            seeded.update(dashboard_seed.seed(
                cur, conversations=args.conversations, messages=args.messages, long=args.long,
                waiting=args.waiting, decisions=args.decisions, lawyer_ids=[people[e] for e in LAWYERS],
                bench_lawyer=people[LAWYERS[0]]))
            cur.execute(f"DELETE FROM {MARKER}")
            cur.execute(f"INSERT INTO {MARKER} VALUES (%s, %s, now())", (head, wanted))
        seeded.update(reused=False, seconds_total=round(time.monotonic() - started, 1))
        print(f"seeded in {seeded['seconds_total']} s; vacuum analyze")
    else:
        print(f"reusing the data seeded at {marker[2]:%Y-%m-%d %H:%M} (schema {head}); --reseed writes it again")
    db.autocommit = True
    with db.cursor() as cur:
        if not seeded["reused"]:
            cur.execute("VACUUM ANALYZE")
        seeded["counts"] = dashboard_seed.describe(cur)
    db.close()
    seeded["people"] = people
    return seeded


# --- HTTP -------------------------------------------------------------------------------------------------------

_TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')


def signed_in(base: str, email: str) -> requests.Session:
    session = requests.Session()
    token = _TOKEN.search(session.get(f"{base}/login", timeout=10).text).group(1)
    answer = session.post(f"{base}/login", data={"email": email, "password": PASSWORD, "csrf_token": token},
                          allow_redirects=False, timeout=30)
    if answer.status_code != 302:
        sys.exit(f"signing in as {email} failed: {answer.status_code}")
    return session


def timed(session: requests.Session, url: str, count: int, warmup: int) -> dict[str, Any]:
    """GET ``url`` ``warmup`` times, then ``count`` times timed: milliseconds, statuses, answer size."""
    first = session.get(url, timeout=30)
    if first.status_code == 404:
        return {"found": False}
    for _ in range(warmup):
        session.get(url, timeout=30)
    times, statuses = [], {}
    for _ in range(count):
        started = time.perf_counter()
        answer = session.get(url, timeout=30)
        _ = answer.content
        times.append((time.perf_counter() - started) * 1000)
        statuses[answer.status_code] = statuses.get(answer.status_code, 0) + 1
    return {"found": True, "bytes": len(first.content), "statuses": statuses, **summary(times)}


def summary(times: list[float]) -> dict[str, Any]:
    ordered = sorted(times)
    return {"count": len(ordered), "p50_ms": common.percentile(ordered, 50), "p95_ms": common.percentile(ordered, 95),
            "max_ms": ordered[-1] if ordered else None}


def poll(base: str, cookies: Any, args: argparse.Namespace, cursor: int) -> dict[str, Any]:
    """``--pollers`` pages polling the changes endpoint while a writer records changes (module docstring)."""
    probe = requests.get(f"{base}/dashboard/changes", params={"since": cursor}, cookies=cookies, timeout=10)
    if probe.status_code == 404:
        return {"found": False}
    times: list[float] = []
    statuses: dict[int, int] = {}
    handed = [0]
    lock = threading.Lock()
    start = time.monotonic() + 1.0
    stop = start + args.poll_duration

    def page(offset: float) -> None:
        session = requests.Session()
        session.cookies.update(cookies)
        since, due = cursor, start + offset
        while due < stop:
            time.sleep(max(0.0, due - time.monotonic()))
            began = time.perf_counter()
            answer = session.get(f"{base}/dashboard/changes", params={"since": since}, timeout=10)
            elapsed = (time.perf_counter() - began) * 1000
            with lock:
                times.append(elapsed)
                statuses[answer.status_code] = statuses.get(answer.status_code, 0) + 1
            if answer.ok:
                body = answer.json()
                since = body.get("cursor", since)
                with lock:
                    handed[0] += len(body.get("changes", []))
            due += args.poll_interval

    writer_done = threading.Event()
    written = [0]

    def writer() -> None:
        db = psycopg2.connect(args.database_url)
        db.autocommit = True
        with db.cursor() as cur:
            while not writer_done.is_set():
                cur.execute("INSERT INTO changes (kind, conversation_id, key, created_at) VALUES "
                            "('message.new', %s, %s, now())", (random.randint(1, args.conversations),
                                                               f"bench-live:{time.time_ns()}"))
                written[0] += 1
                writer_done.wait(1 / args.writes_per_second)
        db.close()

    threads = [threading.Thread(target=page, args=(i * args.poll_interval / args.pollers,), daemon=True)
               for i in range(args.pollers)]
    background = threading.Thread(target=writer, daemon=True)
    background.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    writer_done.set()
    background.join()
    return {"found": True, "statuses": statuses, "changes_written": written[0], "changes_handed": handed[0],
            **summary(times)}


def latest_change(url: str) -> int:
    db = psycopg2.connect(url)
    with db, db.cursor() as cur:
        cur.execute("SELECT coalesce(max(id), 0) FROM changes")
        found = cur.fetchone()[0]
    db.close()
    return found


def least_busy_lawyer(url: str, people: dict[str, int]) -> str:
    db = psycopg2.connect(url)
    with db, db.cursor() as cur:
        cur.execute("SELECT user_id, count(*) FROM draft_decisions GROUP BY user_id ORDER BY count(*), user_id LIMIT 1")
        row = cur.fetchone()
    db.close()
    by_id = {v: k for k, v in people.items()}
    return by_id.get(row[0], LAWYERS[-1]) if row else LAWYERS[-1]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    seeded = prepare(args)
    run = f"dashboard-{common.stamp()}"
    port = args.port or common.free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PATH": f"{common.VENV_BIN}:{os.environ.get('PATH', '')}", "WAFLOW_ENV": "development",
           "PORT": str(port), "DATABASE_URL": args.database_url, "WAFLOW_LOG_LEVEL": "WARNING",
           "WAFLOW_VAR_DIR": str(common.OUT_DIR / f"{run}-var"), "PYTHONUNBUFFERED": "1"}
    for name in ("CELERY_BROKER_URL", "REDIS_URL", "SECRET_KEY"):
        env.pop(name, None)
    load_before = os.getloadavg()
    results: dict[str, Any] = {"args": vars(args), "machine": common.machine_info(), "seed": seeded}
    with common.Processes(common.OUT_DIR / f"{run}-logs") as procs:
        procs.start_procfile("dashboard", env, root=args.root)
        common.wait_http(procs, "dashboard", f"{base}/healthz", timeout=60)
        lawyer, admin = signed_in(base, LAWYERS[0]), signed_in(base, ADMIN)
        quiet = signed_in(base, least_busy_lawyer(args.database_url, seeded["people"]))
        year, week, _ = (datetime.now(timezone.utc) - timedelta(days=7)).isocalendar()
        last_week = f"{year}-W{week:02d}"  # a whole week of decisions (this one has only begun)
        pages = {
            "inbox": (lawyer, "/dashboard/"),
            "conversation": (lawyer, "/dashboard/conversations/1"),
            "audit (admin: everyone)": (admin, "/dashboard/audit"),
            "audit (busiest lawyer)": (lawyer, "/dashboard/audit"),
            "audit (least busy lawyer)": (quiet, "/dashboard/audit"),
            "audit (admin: one action, 30 days)": (admin, "/dashboard/audit?action=reject&from="
                                                   + time.strftime("%Y-%m-%d", time.gmtime(time.time() - 30 * 86400))),
            "weekly report (admin, last week)": (admin, f"/dashboard/audit/report?week={last_week}"),
        }
        for name, (session, path) in pages.items():
            print(f"timing {name}: GET {path}")
            results[name] = timed(session, base + path, args.requests, args.warmup)
        print(f"polling: {args.pollers} pages every {args.poll_interval:g} s for {args.poll_duration:g} s")
        results["changes"] = poll(base, lawyer.cookies, args, latest_change(args.database_url))
        procs.check_alive("dashboard")
    results["load_average"] = {"before": load_before, "after": os.getloadavg()}
    rows = []
    for name in [*pages, "changes"]:
        r = results[name]
        goal = GOALS_MS.get(name.split(" ")[0])
        if not r["found"]:
            rows.append([name, "not found (404: not on this branch yet)", "", "", "", ""])
            continue
        rows.append([name, r["count"], r["p50_ms"], r["p95_ms"], r["max_ms"], f"<= {goal} ms" if goal else ""])
    print()
    common.print_table(["GET", "requests", "p50 ms", "p95 ms", "max ms", "goal (p95)"], rows)
    print(f"\nload average before {load_before[0]:.2f}, after {results['load_average']['after'][0]:.2f} "
          f"(a shared 2-core box); data: {seeded['counts']}")
    print(f"results: {common.write_json(run, results)}")


if __name__ == "__main__":
    main(sys.argv[1:])
