"""Helpers shared by the tests: signing, migrations, and a real stack in subprocesses."""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
PG_URL = os.environ.get("WAFLOW_TEST_DATABASE_URL", "")
AMQP_URL = os.environ.get("WAFLOW_TEST_BROKER_URL", "")
SKIP_PG = "WAFLOW_TEST_DATABASE_URL is not set: no PostgreSQL to test against (see README, 'Test it')"
SKIP_AMQP = "WAFLOW_TEST_BROKER_URL is not set: no RabbitMQ to test against (see README, 'Test it')"
REDIS_URL = os.environ.get("WAFLOW_TEST_REDIS_URL", "")

# Meta's known-good signed delivery (../shared/reference/whatsapp-cloud-api.md, section 2).
REFERENCE_SECRET = "1222e786b144d0e85b9f365372d93676"
REFERENCE_BODY = (
    b'{"object":"whatsapp_business_account","entry":[{"id":"264937493375603","changes":[{"value":'
    b'{"messaging_product":"whatsapp","metadata":{"display_phone_number":"15550953877","phone_number_id":'
    b'"277321005464405"},"contacts":[{"profile":{"name":"PyWa Tests"},"wa_id":"972544401243"}],"messages":'
    b'[{"from":"972544401243","id":"wamid.HBgMOTcyNTQ0NDAxMjQzFQIAEhggM0RFQTNCMEEwRTY3QzUwODYzMDc4NjQ4QzM4ODAxM0YA",'
    b'"timestamp":"1730231903","text":{"body":"Hey there! I am using PyWa."},"type":"text"}]},"field":"messages"}]}]}'
)
REFERENCE_SIGNATURE = "sha256=54edfa1d7259e0eb13c677cc7d73d1b5c86cfa12433d19156e058ab9251bc441"

# Children before the tables they reference (SQLite deletes and drops them in this order).
TABLES = ("presence", "conversation_reads", "assignments", "draft_decisions", "outbound_messages", "broadcasts",
          "draft_approvals", "drafts", "draft_request_messages", "draft_requests", "changes", "message_statuses",
          "messages", "conversations", "users", "contacts", "media", "webhook_payloads", "webhook_events",
          "dead_letter_replays", "dead_letters", "redeliveries")


class RecordingPublisher:
    """Stands in for the broker in gateway tests: records what would be queued."""

    def __init__(self, error: Exception | None = None) -> None:
        self.published: list[tuple[bytes, float]] = []
        self.error = error

    def publish_raw(self, body: bytes, received_at: float) -> None:
        if self.error is not None:
            raise self.error
        self.published.append((body, received_at))

    def ready(self) -> None:
        if self.error is not None:
            raise self.error


def sign(body: bytes, secret: str = REFERENCE_SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def compact(doc: Any) -> bytes:
    """JSON as Meta sends it: compact, non-ASCII escaped."""
    return json.dumps(doc, separators=(",", ":")).encode()


def text_webhook(wamids: list[str], *, wa_id: str = "15550001111", phone_number_id: str = "1122334455",
                 body: str = "Hello", statuses: list[tuple[str, str]] = ()) -> dict[str, Any]:
    """A webhook with one text message per wamid and the given (wamid, status) updates."""
    value: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550009999", "phone_number_id": phone_number_id},
    }
    if wamids:
        value["contacts"] = [{"profile": {"name": "Client"}, "wa_id": wa_id}]
        value["messages"] = [
            {"from": wa_id, "id": w, "timestamp": "1764000000", "type": "text", "text": {"body": f"{body} {i}"}}
            for i, w in enumerate(wamids)
        ]
    if statuses:
        value["statuses"] = [
            {"id": w, "status": s, "timestamp": "1764000100", "recipient_id": wa_id} for w, s in statuses
        ]
    return {"object": "whatsapp_business_account",
            "entry": [{"id": "100200300", "changes": [{"field": "messages", "value": value}]}]}


@contextmanager
def orm(url: str) -> Iterator[Any]:
    """An ORM session for reading rows in tests; committed at the end."""
    from sqlalchemy.orm import Session

    from waflow.db import get_engine

    with Session(get_engine(url), expire_on_commit=False) as session, session.begin():
        yield session


def migrate(url: str, fresh: bool = False) -> None:
    """Apply the Alembic migrations to ``url`` (after wiping it, if ``fresh``)."""
    from alembic import command
    from alembic.config import Config

    from waflow.db import get_engine

    engine = get_engine(url)
    if fresh:
        with engine.begin() as conn:
            if engine.dialect.name == "postgresql":
                conn.execute(sa.text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
            else:
                for table in (*TABLES, "alembic_version"):
                    conn.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.attributes["url"] = url
    cfg.attributes["configure_logger"] = False
    command.upgrade(cfg, "head")


def wipe(url: str) -> None:
    from waflow.db import get_engine

    engine = get_engine(url)
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(sa.text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
        else:
            for table in TABLES:
                conn.execute(sa.text(f"DELETE FROM {table}"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.1, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def purge_queues(broker_url: str, env: dict[str, str]) -> None:
    """Empty every waflow queue on ``broker_url`` (a RabbitMQ vhost or the embedded folders)."""
    code = ("from waflow.tasks import celery_app as a; from waflow import queues as q\n"
            "with a.connection_for_write() as c:\n"
            "    ch = c.default_channel\n"
            "    for d in q.declarations(): d(ch).declare(); d(ch).purge()\n")
    subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, check=True, timeout=60)


class Stack:
    """gunicorn, the ingestor, core, media, drafter and announcer workers and the dead-letter recorder, as the
    Procfile runs them (the sender is started by the tests that send), and the Meta simulator
    (``simulator=False``: none; then the test runs its own)."""

    WORKERS = (("ingestor", "wa.incoming.raw"), ("core", "wa.incoming.normalized,wa.ai.draft.approved"),
               ("media", "wa.media.processing"), ("drafter", "wa.ai.draft.requested"),
               ("announcer", "wa.ai.draft.created"))
    # As the Procfile runs them: the drafter waits on a model's HTTP answer, on threads.
    EXTRA = {"drafter": ("-P", "threads")}

    def __init__(self, *, database_url: str, broker_url: str, var_dir: str, secret: str = REFERENCE_SECRET,
                 simulator: bool = True):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/webhooks/whatsapp"
        self.database_url = database_url
        self.var_dir = var_dir
        self.log_dir = Path(var_dir) / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("WAFLOW_TEST_")},
            # Development, set explicitly: production refuses the Meta simulator the sender tests use.
            "WAFLOW_ENV": "development",
            "WHATSAPP_APP_SECRET": secret, "WHATSAPP_VERIFY_TOKEN": "let-me-in",
            "WHATSAPP_ACCESS_TOKEN": "test-access-token", "WHATSAPP_PHONE_NUMBER_ID": "1122334455",
            "FLOWER_BASIC_AUTH": "ops:secret", "DATABASE_URL": database_url, "CELERY_BROKER_URL": broker_url,
            "WAFLOW_VAR_DIR": var_dir, "PORT": str(self.port), "PYTHONUNBUFFERED": "1",
            "WEB_CONCURRENCY": "1", "WEB_THREADS": "8",
        }
        if REDIS_URL and not broker_url.startswith("embedded"):
            self.env["REDIS_URL"] = REDIS_URL  # the send budget's inbound debit: the tests' Redis database
        # The Meta simulator the media worker downloads from (and that injects clients' messages into this
        # stack's gateway), on a port of its own: never the default one, which a developer's may hold.
        # A media id it never issued (a fixture's) fails at once as unknown to Meta, as it would at Meta.
        self.simulator_url = None
        if simulator:
            sim_port = free_port()
            self.simulator_url = f"http://127.0.0.1:{sim_port}"
            self.env.update(SIMULATOR_PORT=str(sim_port), SIMULATOR_WEBHOOK_URL=self.url,
                            WHATSAPP_API_URL=f"{self.simulator_url}/v25.0")
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self) -> "Stack":
        bin_dir = Path(sys.executable).parent
        if self.simulator_url:
            self._spawn("meta", [sys.executable, "-m", "waflow.simulator", "--no-status-webhooks", "--open-windows"])
        self.start_web()
        for name, queue in self.WORKERS:
            self.start_worker(name, queue)
        self._spawn("deadletter", [str(bin_dir / "flask"), "--app", "wsgi", "dlq", "record"])
        wait_for(self._web_ready, 30, what="gunicorn")
        if self.simulator_url:
            wait_for(self._simulator_ready, 30, what="the Meta simulator")
        for name, _ in self.WORKERS:
            self.wait_ready(name)
        wait_for(lambda: "dlq recorder: consuming" in (self.log_dir / "deadletter.log").read_text(), 60,
                 what="dead-letter recorder")
        return self

    def start_web(self) -> "Stack":
        """Purge the queues and start the Procfile's ``web`` line alone (``start`` adds the workers)."""
        purge_queues(self.env["CELERY_BROKER_URL"], self.env)
        self._spawn("web", [str(Path(sys.executable).parent / "gunicorn"), "-c", "gunicorn.conf.py", "wsgi:app"])
        return self

    def wait_web(self) -> "Stack":
        wait_for(self._web_ready, 30, what="gunicorn")
        return self

    def start_worker(self, name: str, queue: str, *extra: str) -> None:
        bin_dir = Path(sys.executable).parent
        extra = (*self.EXTRA.get(name, ()), *extra)
        self._spawn(name, [str(bin_dir / "celery"), "-A", "waflow", "worker", "-Q", queue, "-n", f"{name}@%h",
                           "-c", "2", "-l", "INFO", "--without-mingle", "--without-gossip", *extra])

    def wait_ready(self, name: str) -> None:
        wait_for(lambda: "ready." in (self.log_dir / f"{name}.log").read_text(), 60, what=f"{name} worker")

    def _spawn(self, name: str, argv: list[str]) -> None:
        with open(self.log_dir / f"{name}.log", "a") as log:
            proc = subprocess.Popen(argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.procs.append((name, proc))

    def _web_ready(self) -> bool:
        import requests

        try:
            return requests.get(self.url, timeout=1).status_code == 403
        except (requests.ConnectionError, requests.Timeout):  # listening, but the worker is still booting
            return False

    def _simulator_ready(self) -> bool:
        import requests

        try:
            return requests.get(f"{self.simulator_url}/_sim/health", timeout=1).ok
        except (requests.ConnectionError, requests.Timeout):
            return False

    def post(self, body: bytes, signature: str | None = None, timeout: float = 10):
        import requests

        return requests.post(self.url, data=body, timeout=timeout, headers={
            "Content-Type": "application/json", "X-Hub-Signature-256": signature or sign(body)})

    def logs(self) -> str:
        return "\n".join(f"== {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.log_dir.glob("*.log")))

    def stop(self) -> None:
        stop_processes([proc for _, proc in self.procs], grace=20)


def stop_processes(procs: list[subprocess.Popen], grace: float) -> None:
    """SIGTERM each main process (a warm shutdown), wait up to ``grace`` seconds in all, then SIGKILL
    whatever is left of each one's process group (pool children). Each was started in its own session."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(5)


class SimulatorProcess:
    """``python -m waflow.simulator`` in a subprocess on a free port, with its control endpoints."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, log_dir: str | None = None) -> None:
        import tempfile

        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.api_url = f"{self.base}/v25.0"
        log = Path(log_dir or tempfile.mkdtemp(prefix="waflow-sim-")) / "simulator.log"
        self.log = log
        with open(log, "w") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "waflow.simulator", "--port", str(self.port), *args],
                                         cwd=ROOT, env=env or dict(os.environ), stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def start(self) -> "SimulatorProcess":
        import requests

        def up() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"the simulator exited\n{self.log.read_text()[-3000:]}")
            try:
                return requests.get(f"{self.base}/_sim/health", timeout=1).ok
            except requests.ConnectionError:
                return False

        wait_for(up, 30, what="the Meta simulator")
        return self

    def control(self, method: str, path: str, body: Any = None) -> Any:
        import requests

        response = requests.request(method, f"{self.base}/_sim/{path}", json=body, timeout=10)
        response.raise_for_status()
        return response.json()

    def sends(self, **params: Any) -> list[dict[str, Any]]:
        import requests

        return requests.get(f"{self.base}/_sim/sends", params={"limit": 100000, **params}, timeout=30).json()["sends"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


def prepared_stack(backends: str, prefix: str, **options: Any) -> Stack:
    """A ``Stack`` (not started) in a fresh folder, its database migrated, ``settings`` set.

    ``backends``: ``embedded`` (SQLite and the embedded broker in the folder), ``rabbitmq+postgresql`` (the
    test's services; it skips without their URLs), or ``best`` (the services when both URLs are set, else
    embedded). ``options`` go to ``Stack`` (``secret=``)."""
    import tempfile

    import pytest

    from waflow import config

    var_dir = tempfile.mkdtemp(prefix=prefix)
    if backends == "best":
        backends = "rabbitmq+postgresql" if PG_URL and AMQP_URL else "embedded"
    if backends == "embedded":
        database_url, broker_url = f"sqlite:///{var_dir}/waflow.db", "embedded://"
    else:
        if not PG_URL:
            pytest.skip(SKIP_PG)
        if not AMQP_URL:
            pytest.skip(SKIP_AMQP)
        database_url, broker_url = PG_URL, AMQP_URL
    settings = config.load({"DATABASE_URL": database_url, "CELERY_BROKER_URL": broker_url, "WAFLOW_VAR_DIR": var_dir})
    migrate(settings.database_url, fresh=True)
    stack = Stack(database_url=database_url, broker_url=broker_url, var_dir=var_dir, **options)
    stack.settings = settings
    return stack


@contextmanager
def running(stack: Stack) -> Iterator[Stack]:
    """``stack`` started, and stopped however the block ends."""
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()
