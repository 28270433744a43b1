"""What the long fault runs share: private services, the stack, the run's log, its JSON and tables.

Each script in ``bench/faults/`` starts its own PostgreSQL cluster and RabbitMQ node on free
ports (``tests/faultkit.py``), plus a throwaway ``redis-server`` for the ingestor's send-budget
debit, so nothing it kills or fills is one of the machine's shared services (5432, 5672, 6379).
It starts ``support.Stack`` on them (gunicorn, the ingestor, core and media workers with ``-c 2``,
the dead-letter recorder), streams webhooks kept in a ``fault_scenarios.Ledger``, and counts the
outcome from the ledger and the database (``fault_scenarios.figures``).

Output: ``bench/out/faults-<name>-<timestamp>.json`` (parameters, timings, the event log of
kills and outages, the ledger's figures, the checks) and the processes' logs in
``bench/out/faults-<name>-<timestamp>-logs/``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

ROOT = Path(__file__).resolve().parents[2]
for _path in (ROOT, ROOT / "tests", ROOT / "bench"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import _common as common  # noqa: E402
import fault_scenarios as fs  # noqa: E402
import faultkit  # noqa: E402
import support  # noqa: E402
from waflow import config  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- a private redis-server ------------------------------------------------------------------------------------


class PrivateRedis:
    """A throwaway ``redis-server`` on a free port, nothing saved: the ingestor debits each inbound
    message from the send budget there (``waflow.limiter``), as it would in production, instead
    of in the machine's shared Redis (db 0 on 6379 is the default on RabbitMQ)."""

    def __init__(self) -> None:
        self.port = faultkit.free_ports(1)[0]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "PrivateRedis":
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server not found (apt-get install -y redis-server)")
        self.proc = subprocess.Popen([binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--protected-mode", "yes"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        support.wait_for(self._ready, 15, what="private redis-server")
        return self

    def _ready(self) -> bool:
        import socket

        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def __exit__(self, *_: Any) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


# --- CPU: ours and everyone else's ---------------------------------------------------------------------------------


class CpuWatch:
    """Samples /proc every ``interval`` s: CPU seconds used by this run's processes (descendants of
    this one: the stack, the private services) and by everything else on the machine, so a run
    can say whether it had the box to itself (another engineer's test suite shows up as 'others')."""

    def __init__(self, interval: float = 2.0) -> None:
        self.interval = interval
        self.me = os.getpid()
        self.first: dict[int, int] = {}
        self.last: dict[int, tuple[int, bool, str]] = {}
        self.boot_ticks = self._uptime_ticks()
        self._stop = threading.Event()
        self.others_top: dict[str, float] = {}
        self.thread = threading.Thread(target=self._run, name="cpu-watch", daemon=True)
        self.started = time.monotonic()

    @staticmethod
    def _uptime_ticks() -> int:
        return int(float(Path("/proc/uptime").read_text().split()[0]) * CLK_TCK)

    def _scan(self, initial: bool = False) -> None:
        procs: dict[int, tuple[int, int, int, str]] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                text = stat.read_text()
            except OSError:
                continue
            name = text[text.find("(") + 1:text.rfind(")")]
            fields = text.rsplit(")", 1)[1].split()
            procs[int(stat.parent.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]), int(fields[19]), name)
        for pid, (ppid, ticks, start, name) in procs.items():
            ours, p, hops = False, pid, 0
            while p > 1 and hops < 50:
                if p == self.me:
                    ours = True
                    break
                p = procs.get(p, (0,))[0]
                hops += 1
            if initial:
                self.first[pid] = ticks
            elif pid not in self.first:
                # Started during the run: all its CPU is the run's time (else it predates us: count none).
                self.first[pid] = 0 if start >= self.boot_ticks else ticks
            self.last[pid] = (ticks, ours, name)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._scan()

    def start(self) -> "CpuWatch":
        self._scan(initial=True)
        self.thread.start()
        return self

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self.thread.join(5)
        self._scan()
        wall = time.monotonic() - self.started
        ours = others = 0
        by_name: dict[str, int] = {}
        for pid, (ticks, mine, name) in self.last.items():
            used = max(0, ticks - self.first.get(pid, ticks))
            if mine:
                ours += used
            else:
                others += used
                by_name[name] = by_name.get(name, 0) + used
        top = sorted(by_name.items(), key=lambda kv: -kv[1])[:6]
        return {"wall_seconds": round(wall, 1), "cpus": os.cpu_count(),
                "cpu_seconds_ours": round(ours / CLK_TCK, 1), "cpu_seconds_others": round(others / CLK_TCK, 1),
                "others_top": {n: round(t / CLK_TCK, 1) for n, t in top if t},
                "loadavg_end": os.getloadavg()}


# --- the run ---------------------------------------------------------------------------------------------------


class Run:
    """One invocation of a fault script: its stamp, output paths, event log, checks and results."""

    def __init__(self, name: str, args: argparse.Namespace) -> None:
        self.name = name
        self.stamp = common.stamp()
        self.args = args
        self.log_dir = common.OUT_DIR / f"faults-{name}-{self.stamp}-logs"
        self.var_dir = self.log_dir.parent / f"faults-{name}-{self.stamp}-var"
        self.t0 = time.monotonic()
        self.wall0 = time.time()
        self.events: list[dict[str, Any]] = []
        self.checks: list[dict[str, Any]] = []
        self.results: dict[str, Any] = {}
        self.cpu = CpuWatch()
        self._lock = threading.Lock()
        self.load_start = os.getloadavg()

    def now(self) -> float:
        return round(time.monotonic() - self.t0, 2)

    def event(self, what: str, **data: Any) -> dict[str, Any]:
        entry = {"t": self.now(), "event": what, **data}
        with self._lock:
            self.events.append(entry)
        print(f"[{entry['t']:7.1f}s] {what}" + (f" {json.dumps(data, default=str)}" if data else ""), flush=True)
        return entry

    def check(self, what: str, ok: bool, detail: Any = None) -> bool:
        self.checks.append({"check": what, "ok": bool(ok), "detail": detail})
        return bool(ok)

    @property
    def passed(self) -> bool:
        return all(c["ok"] for c in self.checks)

    def save(self) -> Path:
        data = {
            "benchmark": f"faults-{self.name}", "started": self.stamp, "machine": common.machine_info(),
            "code": code_version(),
            "parameters": vars(self.args), "duration_seconds": self.now(),
            "load": {"loadavg_start": self.load_start, **getattr(self, "cpu_report", {})},
            "passed": self.passed, "checks": self.checks, "events": sorted(self.events, key=lambda e: e["t"]), "results": self.results,
            "logs": str(self.log_dir.relative_to(common.ROOT)),
        }
        return common.write_json(f"faults-{self.name}-{self.stamp}", data)

    def print_checks(self) -> None:
        print()
        common.print_table(["check", "outcome", "detail"],
                           [[c["check"], "ok" if c["ok"] else "FAILED", _short(c["detail"])] for c in self.checks])

    def print_load(self) -> None:
        cpu = getattr(self, "cpu_report", None)
        if cpu:
            print(f"\nmachine: {cpu['cpus']} cpus, {cpu['wall_seconds']:.0f} s wall; CPU seconds used by this run "
                  f"{cpu['cpu_seconds_ours']:.0f}, by other processes {cpu['cpu_seconds_others']:.0f} "
                  f"(top: {', '.join(f'{n} {s:.0f}' for n, s in cpu['others_top'].items()) or '-'}); "
                  f"load average at start {self.load_start[0]:.2f}, at end {cpu['loadavg_end'][0]:.2f}")


def code_version() -> dict[str, Any]:
    """The commit the run's code is at, and any uncommitted change to what runs (waflow, settings,
    migrations). A copy made with ``git archive`` has no .git: a ``.snapshot-commit`` file names it."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        changed = subprocess.run(["git", "status", "--porcelain", "--", "waflow", "migrations", "celeryconfig.py",
                                  "gunicorn.conf.py", "wsgi.py"], cwd=ROOT, capture_output=True, text=True,
                                 timeout=10).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        commit, changed = "", []
    if not commit and (ROOT / ".snapshot-commit").exists():
        return {"commit": (ROOT / ".snapshot-commit").read_text().strip(), "from": "a git archive of it"}
    return {"commit": commit or None, "uncommitted_changes": changed}


def _short(value: Any) -> str:
    if value is None:
        return ""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= 100 else text[:97] + "..."


@contextmanager
def services(run: Run, *, rabbit: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
    """A private PostgreSQL cluster (database ``waflow``, migrated), RabbitMQ node and redis-server."""
    run.cpu.start()
    with faultkit.PrivatePostgres() as pg, faultkit.PrivateRabbit(**(rabbit or {})) as node, PrivateRedis() as redis:
        url = config.load({"DATABASE_URL": pg.create_database("waflow")}).database_url
        support.migrate(url)
        run.event("services up", postgres_port=pg.port, rabbitmq_port=node.port, redis_port=redis.port)
        try:
            yield {"pg": pg, "rabbit": node, "redis": redis, "database_url": url}
        finally:
            run.cpu_report = run.cpu.stop()  # type: ignore[attr-defined]


@contextmanager
def stack(run: Run, env: dict[str, Any]) -> Iterator[support.Stack]:
    """``support.Stack`` on the private services, its logs in the run's log folder; stopped at the end."""
    running = support.Stack(database_url=env["database_url"], broker_url=env["rabbit"].url, var_dir=str(run.var_dir))
    running.log_dir = run.log_dir
    running.log_dir.mkdir(parents=True, exist_ok=True)
    running.env["REDIS_URL"] = env["redis"].url
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        running.start()
        run.event("stack ready", url=running.url)
        yield running
    finally:
        running.stop()
        signal.signal(signal.SIGTERM, previous)
        shutil.rmtree(run.var_dir, ignore_errors=True)


def _interrupt(*_: Any) -> None:
    raise KeyboardInterrupt


# --- progress and log counts ----------------------------------------------------------------------------------


class Progress:
    """Samples ``count(*)`` of the run's message rows every ``interval`` s (None while the database is away)."""

    def __init__(self, run: Run, database_url: str, interval: float = 1.0, prefix: str = "wamid.fault-") -> None:
        self.run, self.url, self.interval, self.prefix = run, database_url.replace("+psycopg2", ""), interval, prefix
        self.samples: list[tuple[float, int | None]] = []
        self._stop = threading.Event()
        self._conn = None
        self.thread = threading.Thread(target=self._loop, name="progress", daemon=True)

    def _count(self) -> int | None:
        import psycopg2

        try:
            if self._conn is None:
                self._conn = psycopg2.connect(self.url, connect_timeout=2)
                self._conn.autocommit = True
            with self._conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM messages WHERE starts_with(wamid, %s)", (self.prefix,))
                return cur.fetchone()[0]
        except psycopg2.Error:
            if self._conn is not None:
                try:
                    self._conn.close()
                except psycopg2.Error:
                    pass
            self._conn = None
            return None

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.samples.append((self.run.now(), self._count()))
            self._stop.wait(self.interval)

    def __enter__(self) -> "Progress":
        self.thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        self.thread.join(10)
        if self._conn is not None:
            self._conn.close()


LOG_MARKERS = {
    "core_already_persisted": ("core", "already persisted, skipped"),
    "media_already_recorded": ("media", "already recorded"),
    "retries_scheduled": (None, " retry "),
    "failed_for_good": (None, "failed for good"),
    "broker_connection_lost": (None, "Connection to broker lost"),
    "unrecoverable_errors": (None, "Unrecoverable error"),
    "requeued_on_broker_error": (None, "message goes back to the queue"),
    "not_a_webhook": ("ingestor", "not a WhatsApp webhook"),
    "publisher_not_queued": ("web", "not queued"),
    "recorder_db_unavailable": ("deadletter", "dlq recorder: database unavailable"),
    "tracebacks": (None, "Traceback (most recent call last)"),
}


def log_counts(log_dir: Path) -> dict[str, int]:
    """How often each marker appears in the stack's logs (a worker's log covers all its restarts)."""
    texts = {p.stem: p.read_text(errors="replace") for p in log_dir.glob("*.log")}
    counts = {}
    for key, (name, marker) in LOG_MARKERS.items():
        counts[key] = sum(t.count(marker) for n, t in texts.items() if name is None or n == name)
    return counts


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return True
        except Exception:  # noqa: BLE001 - the database may be away; try again
            pass
        time.sleep(interval)
    return False


def count(url: str, sql: str) -> int:
    from sqlalchemy import text

    from waflow.db import get_engine

    with get_engine(url).connect() as conn:
        return conn.execute(text(sql)).scalar()


def persisted_all(ledger: fs.Ledger, url: str) -> Callable[[], bool]:
    """A predicate: every acknowledged non-poison webhook of ``ledger`` has its message (and media) row."""
    want = {k for k in ledger.acked if k not in ledger.poison}
    want_media = {k for k in ledger.media if k in want}
    keys = sorted(want)

    def done() -> bool:
        from sqlalchemy import bindparam, text

        from waflow.db import get_engine

        with get_engine(url).connect() as conn:
            rows = media = 0
            for i in range(0, len(keys), 2000):
                part = keys[i:i + 2000]
                rows += conn.execute(text("SELECT count(*) FROM messages WHERE wamid IN :w")
                                     .bindparams(bindparam("w", expanding=True)), {"w": part}).scalar()
                mpart = [k for k in part if k in want_media]
                if mpart:
                    media += conn.execute(text("SELECT count(DISTINCT wamid) FROM media WHERE wamid IN :w")
                                          .bindparams(bindparam("w", expanding=True)), {"w": mpart}).scalar()
        return rows >= len(want) and media >= len(want_media)

    return done


# --- figures as tables -----------------------------------------------------------------------------------------

LEDGER_COLUMNS = ("sent", "posts", "acknowledged", "persisted", "lost", "duplicated", "dead_lettered")


def ledger_table(rows: list[tuple[str, dict[str, Any], float | None]]) -> None:
    """One line per run or phase: label, figures, duration in seconds."""
    print()
    common.print_table(["run", *LEDGER_COLUMNS, "media exp/persisted", "duration s"],
                       [[label, *(f.get(c) for c in LEDGER_COLUMNS),
                         f"{f.get('media_expected', 0)}/{f.get('media_persisted', 0)}", secs]
                        for label, f, secs in rows])


def slim(figs: dict[str, Any]) -> dict[str, Any]:
    """The figures without the per-row lists (kept in the JSON under ``dead_letters``)."""
    return {k: v for k, v in figs.items() if k not in ("dead_letter_rows", "dead_lettered_keys")}


def finish(run: Run) -> int:
    run.print_checks()
    run.print_load()
    path = run.save()
    print(f"\n{'PASSED' if run.passed else 'FAILED'}; results in {path.relative_to(common.ROOT)}, "
          f"logs in {run.log_dir.relative_to(common.ROOT)}/")
    return 0 if run.passed else 1


def exited(st: support.Stack) -> list[dict[str, Any]]:
    """The stack's processes that are no longer running, with their exit codes (a worker killed on
    purpose shows -9; anything else exited by itself)."""
    return [{"name": name, "pid": proc.pid, "code": proc.returncode} for name, proc in st.procs
            if proc.poll() is not None]
