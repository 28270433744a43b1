"""Helpers shared by the benchmarks in ``bench/``: payloads, processes, broker, output.

Nothing here is imported by waflow itself. The benchmarks talk to the same local
services as waflow, but never to the test suite's: RabbitMQ vhost
``waflow_bench`` and PostgreSQL database ``waflow_bench`` (see bench/README.md).
Every process a benchmark starts runs in its own process group, so stopping it
stops its children (gunicorn workers, Celery pool processes) too, and only them.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterable, Sequence

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "bench"
OUT_DIR = BENCH_DIR / "out"
VENV_BIN = Path(sys.executable).parent

sys.path.insert(0, str(ROOT))
from waflow import queues  # noqa: E402  (names and declarations; it loads waflow.config from this environment)

BROKER_URL = "amqp://guest:guest@127.0.0.1:5672/waflow_bench"
DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/waflow_bench"
APP_SECRET = "waflow-bench-app-secret"
VERIFY_TOKEN = "waflow-bench-verify-token"
WEBHOOK_PATH = "/webhooks/whatsapp"

# The business side of every generated webhook (values in Meta's formats).
WABA_ID = "102290129340398"
PHONE_NUMBER_ID = "106540352242922"
DISPLAY_PHONE_NUMBER = "31201234567"

# A client's first message to a law firm: the text of the ~1 KB benchmark body.
CLIENT_TEXT = (
    "Good afternoon, my name is Anna de Vries. Yesterday I received a letter from my landlord saying "
    "that my rental contract for the apartment on Prinsengracht will be terminated at the end of next "
    "month because he wants to sell the property. I have lived there for almost nine years and always "
    "paid the rent on time. The letter also says I must pay for repainting all rooms before I leave. "
    "Is he allowed to do this, and do I have to accept it? I have a copy of the contract and all bank "
    "statements. Could someone from your office call me this week? I am available after 3 pm on "
    "weekdays. I would also like to know what a first consultation costs and whether my legal expenses "
    "insurance covers it. Thank you very much in advance for your help, kind regards, Anna. "
)

SHORT_TEXTS = (
    "Hello, I have a question about my divorce papers.",
    "Can I reschedule my appointment to Thursday morning?",
    "I sent the signed contract by email, did you receive it?",
    "My employer has not paid my salary for two months, what can I do?",
    "Is the office open on Saturday?",
    "Thank you, see you tomorrow at 10.",
    "The court date was moved, I just received a letter.",
    "Could you send me the invoice again please?",
)


# --- webhook payloads ------------------------------------------------------------------------------------------


def sign(body: bytes, secret: str = APP_SECRET) -> str:
    """The ``X-Hub-Signature-256`` value Meta would send for ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def text_message(wamid: str, wa_id: str, text: str, timestamp: int | None = None) -> dict[str, Any]:
    """One inbound text message object, as in ``value.messages[]``."""
    return {"from": wa_id, "id": wamid, "timestamp": str(timestamp or int(time.time())),
            "type": "text", "text": {"body": text}}


def sender(n: int) -> tuple[str, str]:
    """(wa_id, profile name) of the ``n``-th synthetic client."""
    return f"3161{n:07d}", f"Client {n}"


def webhook_body(messages: Sequence[dict[str, Any]], names: dict[str, str]) -> bytes:
    """A compact ``messages`` webhook: one entry, one change, ``messages`` with their senders' contacts.

    ``names`` maps each sender's wa_id to the profile name shown in ``contacts[]``.
    """
    wa_ids = list(dict.fromkeys(m["from"] for m in messages))
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": DISPLAY_PHONE_NUMBER, "phone_number_id": PHONE_NUMBER_ID},
        "contacts": [{"profile": {"name": names.get(w, "")}, "wa_id": w} for w in wa_ids],
        "messages": list(messages),
    }
    doc = {"object": "whatsapp_business_account",
           "entry": [{"id": WABA_ID, "changes": [{"value": value, "field": "messages"}]}]}
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def sized_text_webhook(size: int = 1024) -> bytes:
    """One realistic text-message webhook of exactly ``size`` bytes (the text is cut to fit)."""
    wa_id, _ = sender(1)
    names = {wa_id: "Anna de Vries"}
    wamid = "wamid.HBgLMzE2MTIzNDU2NzgVAgASGBQzQTdFRjYxRDI1QjU0RjY3MzA3OQA="

    def build(text: str) -> bytes:
        return webhook_body([text_message(wamid, wa_id, text, 1764064800)], names)

    room = size - len(build(""))
    if room < 1:
        raise ValueError(f"a webhook cannot be smaller than {len(build('')) + 1} bytes")
    text = (CLIENT_TEXT * (room // len(CLIENT_TEXT) + 1))[:room]
    body = build(text)
    assert len(body) == size
    return body


# --- processes -------------------------------------------------------------------------------------------------


def service_env(port: int, **extra: str) -> dict[str, str]:
    """Environment for waflow's processes on the benchmark broker and database. WAFLOW_ENV=development,
    set explicitly: production refuses the Meta simulator, which stands in for Meta here."""
    env = dict(os.environ)
    env.update(
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        WAFLOW_ENV="development",
        PORT=str(port),
        CELERY_BROKER_URL=BROKER_URL,
        # Production refuses to start without a real database, even where nothing touches it (ack.py).
        DATABASE_URL=DATABASE_URL,
        WHATSAPP_APP_SECRET=APP_SECRET,
        WHATSAPP_VERIFY_TOKEN=VERIFY_TOKEN,
        WHATSAPP_ACCESS_TOKEN="bench-access-token",
        WHATSAPP_PHONE_NUMBER_ID="100000000000001",
        FLOWER_BASIC_AUTH="bench:bench",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def procfile_entry(name: str, root: Path = ROOT) -> tuple[dict[str, str], str]:
    """The Procfile's ``name`` line: (leading VAR=value assignments, the command after them)."""
    for line in (root / "Procfile").read_text().splitlines():
        key, sep, command = line.partition(":")
        if sep and key.strip() == name:
            match = re.match(r"((?:[A-Za-z_]\w*=\S*\s+)*)(.*)", command.strip())
            assert match is not None
            assignments = dict(word.split("=", 1) for word in match.group(1).split())
            return assignments, match.group(2)
    raise KeyError(f"Procfile has no {name!r} process")


def procfile_defaults(name: str) -> dict[str, str]:
    """The ``${VAR:-default}`` defaults in the Procfile's ``name`` command."""
    return dict(re.findall(r"\$\{(\w+):-([^}]*)\}", procfile_entry(name)[1]))


def handshake_url(port: int) -> str:
    """Meta's subscription handshake on the gateway: a 200 with ``ready`` once the app is up."""
    return (f"http://127.0.0.1:{port}{WEBHOOK_PATH}"
            f"?hub.mode=subscribe&hub.verify_token={VERIFY_TOKEN}&hub.challenge=ready")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Processes:
    """Subprocesses started by one benchmark, each in its own process group, logging to a file.

    Use as a context manager: whatever happens, every process started is stopped
    on exit (SIGTERM to its group, SIGKILL after ``grace`` seconds).
    """

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.running: dict[str, subprocess.Popen] = {}

    def __enter__(self) -> "Processes":
        # A SIGTERM to the benchmark unwinds like Ctrl-C, so the children are stopped too.
        signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
        return self

    def __exit__(self, *_: Any) -> None:
        self.stop_all()

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def start(self, name: str, argv: Sequence[str], env: dict[str, str], cwd: Path = ROOT) -> subprocess.Popen:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path(name), "ab") as log:
            proc = subprocess.Popen(list(argv), cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.running[name] = proc
        return proc

    def start_procfile(self, name: str, env: dict[str, str], extra: Sequence[str] = (),
                       root: Path = ROOT) -> subprocess.Popen:
        """Start the Procfile's ``name`` process through bash, so ``${VAR:-default}`` expands as in the Procfile;
        ``extra`` arguments go after its command. ``root``: the checkout whose Procfile and code run."""
        assignments, command = procfile_entry(name, root)
        command = " ".join([command, *extra])
        return self.start(name, ["bash", "-c", f"exec {command}"], {**env, **assignments}, cwd=root)

    def stop(self, name: str, grace: float = 25.0) -> None:
        proc = self.running.pop(name, None)
        if proc is None:
            return
        pgid = proc.pid  # start_new_session: the process leads its own group
        if proc.poll() is None:
            _signal_group(pgid, signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        _signal_group(pgid, signal.SIGKILL)  # stragglers of the group (pool children), if any
        proc.wait()

    def stop_all(self) -> None:
        for name in list(self.running):
            self.stop(name)

    def check_alive(self, name: str) -> None:
        proc = self.running[name]
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}; log {self.log_path(name)}:\n"
                               + tail(self.log_path(name)))


def _raise_keyboard_interrupt(*_: Any) -> None:
    raise KeyboardInterrupt


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def wait_http(procs: Processes, name: str, url: str, timeout: float = 30.0) -> None:
    """Wait until ``url`` answers anything over HTTP (a 403 is fine: the server is up)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        procs.check_alive(name)
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"{name} did not answer {url} within {timeout:.0f}s; log:\n" + tail(procs.log_path(name)))


def wait_log(procs: Processes, name: str, pattern: str, timeout: float = 60.0) -> None:
    """Wait until the process's log has a line matching ``pattern`` (Celery's ``ready.``)."""
    deadline = time.monotonic() + timeout
    regex = re.compile(pattern)
    while time.monotonic() < deadline:
        procs.check_alive(name)
        try:
            if regex.search(procs.log_path(name).read_text(errors="replace")):
                return
        except FileNotFoundError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"{name} not ready within {timeout:.0f}s; log:\n" + tail(procs.log_path(name)))


def require_tools(*names: str) -> None:
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        sys.exit(f"missing tool(s): {', '.join(missing)} (apt-get install -y {' '.join(missing)})")


# --- broker ----------------------------------------------------------------------------------------------------


def _broker():
    from kombu import Connection

    conn = Connection(BROKER_URL, connect_timeout=5)
    try:
        conn.connect()
    except Exception as exc:  # noqa: BLE001 - say what to do, whatever the cause
        sys.exit(f"cannot reach RabbitMQ vhost waflow_bench ({type(exc).__name__}: {exc}).\n"
                 "Create it with: rabbitmqctl add_vhost waflow_bench && "
                 "rabbitmqctl set_permissions -p waflow_bench guest '.*' '.*' '.*'")
    return conn


def declare_queues() -> None:
    """Declare waflow's exchange and queues on the benchmark vhost (as the services would)."""
    with _broker() as conn:
        channel = conn.default_channel
        for queue in queues.declarations():
            queue(channel).declare()


def queue_depth(name: str = queues.INCOMING_RAW) -> int:
    """Ready messages in ``name``, from a passive declare (all of them while nothing consumes it)."""
    with _broker() as conn:
        return conn.default_channel.queue_declare(queue=name, passive=True).message_count


def purge(names: Iterable[str]) -> dict[str, int]:
    """Empty the queues; return how many messages each held."""
    with _broker() as conn:
        return {name: conn.default_channel.queue_purge(name) or 0 for name in names}


def settled_depth(name: str = queues.INCOMING_RAW, quiet: float = 1.0, timeout: float = 15.0) -> int:
    """The queue's depth once it has not changed for ``quiet`` seconds (late confirms land first)."""
    deadline = time.monotonic() + timeout
    last, since = queue_depth(name), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.25)
        depth = queue_depth(name)
        if depth != last:
            last, since = depth, time.monotonic()
        elif time.monotonic() - since >= quiet:
            break
    return last


# --- numbers and output ----------------------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def print_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    cells = [[str(h) for h in headers]] + [[c if isinstance(c, str) else fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if n == 0:
            print("  ".join("-" * w for w in widths))


def stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


def machine_info() -> dict[str, Any]:
    return {"host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform()}


def write_json(name: str, data: dict[str, Any]) -> Path:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


def group_cpu_seconds(pgid: int) -> float:
    """CPU seconds (user + system) used so far by every live process of the process group ``pgid``."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid:  # fields after the command: state, ppid, pgrp, ...; utime and stime at 11, 12
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def truncate_all(cur: Any) -> None:
    """Empty every table of waflow's schema but alembic's, read from the database (so a table a later migration
    adds is emptied too), in one statement (so foreign keys between them do not stand in the way)."""
    cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'alembic_version'")
    tables = [name for (name,) in cur.fetchall()]
    cur.execute(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY")
