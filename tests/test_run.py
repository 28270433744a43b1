"""``bin/run`` stopped with Ctrl-C as a terminal stops it, then started again, on the embedded default.

A terminal's Ctrl-C sends SIGINT to its foreground process group: bin/run's, which is honcho's (bin/run
execs it). honcho then sends SIGTERM to each Procfile line's own process group (each runs in a session of
its own) and, 5 seconds after the first line has stopped (``honcho.manager.KILL_WAIT``), SIGKILL to
whatever is left. A SIGKILLed worker on the embedded broker loses the messages it held, so every process
must be gone by then, and every webhook answered 200 must reach the database once the stack is back.

While the second run is up, the README's second-terminal commands run as a new user types them: in a
fresh environment, after ``PORT=… SIMULATOR_PORT=… bin/run``.

One module fixture does it all once (two starts, two Ctrl-Cs, about 30 s) and the tests read its record.
"""
from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from support import ROOT, compact, free_port, sign, text_webhook, wait_for
from test_readme import shell_blocks
from waflow.config import SECRET
from waflow.dashboard.screenshots import free_base_port

# Every line of Procfile.dev, and those that run a Celery worker.
_LINES = [line.partition(":") for line in (ROOT / "Procfile.dev").read_text().splitlines() if ":" in line]
PROCESSES = tuple(name for name, _, _ in _LINES)
WORKERS = tuple(name for name, _, command in _LINES if "celery -A waflow worker" in command)
SECRET_FOR_DEV = SECRET["WHATSAPP_APP_SECRET"].stand_in
# What the environment of a fresh terminal does not have: everything waflow reads is left at its default.
NOT_INHERITED = ("WAFLOW_", "WHATSAPP_", "DATABASE_URL", "CELERY_", "REDIS_URL", "SIMULATOR_", "FLOWER_", "DRAFT",
                 "PORT")


@dataclass
class Run:
    """One ``bin/run``, its output, and how it ended."""

    log: Path
    proc: subprocess.Popen
    output: str = ""
    stop_seconds: float | None = None

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def ctrl_c(self, timeout: float = 40) -> None:
        """SIGINT to bin/run's process group, as a terminal's Ctrl-C; wait for honcho to exit."""
        started = time.monotonic()
        os.killpg(self.proc.pid, signal.SIGINT)
        try:
            self.proc.wait(timeout)
        finally:
            self.stop_seconds = time.monotonic() - started
            self.output = self.text()

    def kill_leftovers(self, var_dir: Path) -> None:
        """After a failure: leave no process behind (honcho, and everything that inherited the run's folder)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for pid in _processes_with(f"WAFLOW_VAR_DIR={var_dir}"):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


class Stack:
    def __init__(self, var_dir: Path) -> None:
        self.var_dir = var_dir
        self.port = free_base_port()
        self.sim_port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/webhooks/whatsapp"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(NOT_INHERITED)}
        self.env.update(WAFLOW_VAR_DIR=str(var_dir), PORT=str(self.port), SIMULATOR_PORT=str(self.sim_port))
        self.runs: list[Run] = []

    def start(self) -> Run:
        log = self.var_dir / f"run-{len(self.runs) + 1}.log"
        with open(log, "w") as out:
            proc = subprocess.Popen([str(ROOT / "bin" / "run")], cwd=ROOT, env=self.env, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        run = Run(log, proc)
        self.runs.append(run)
        wait_for(lambda: self._ready(run), 90, interval=0.3, what="bin/run's processes ready")
        return run

    def _ready(self, run: Run) -> bool:
        if run.proc.poll() is not None:
            raise AssertionError(f"bin/run exited early:\n{run.text()[-5000:]}")
        text = run.text()
        if not all(f"{name}@" in text and re.search(rf"{name}\.1 +\|.*{name}@\S+ ready\.", text)
                   for name in WORKERS):
            return False
        if "dlq recorder: consuming" not in text or "Visit me at" not in text:
            return False
        try:
            return (requests.get(self.url, timeout=1).status_code == 403
                    and requests.get(f"http://127.0.0.1:{self.sim_port}/_sim/health", timeout=1).ok
                    and requests.get(f"http://127.0.0.1:{self.port + 100}/healthz", timeout=1).ok)
        except requests.RequestException:
            return False

    def stored(self, wamids: list[str]) -> int:
        with sqlite3.connect(self.var_dir / "waflow.db") as db:
            found = 0
            for i in range(0, len(wamids), 500):
                chunk = wamids[i:i + 500]
                found += db.execute(f"SELECT count(*) FROM messages WHERE wamid IN ({','.join('?' * len(chunk))})",
                                    chunk).fetchone()[0]
            return found

    def event_queues(self) -> list[str]:
        table = self.var_dir / "broker" / "control" / "celeryev.exchange"
        return [q for _, _, q in json.loads(table.read_text())] if table.exists() else []

    def queue_files(self, queue: str) -> list[str]:
        return [n for n in os.listdir(self.var_dir / "broker" / "queue") if n.endswith(f".{queue}.msg")]


README_RUN_IT = re.compile(r"^## Run it$.*?(?=^## )", flags=re.M | re.S)


def readme_second_terminal(stack: Stack) -> dict[str, subprocess.CompletedProcess]:
    """Run the README's "Run it" blocks that follow bin/run, each as written, in a fresh terminal's environment
    (no PORT, no SIMULATOR_PORT: only WAFLOW_VAR_DIR, which the README says to set when bin/run had it). The
    blocks after the README's line that exports the stack's ports (before the curl block) run after it too,
    as in the terminal where it was typed."""
    run_it = README_RUN_IT.search((ROOT / "README.md").read_text()).group(0)
    blocks = {key: next(b for b in shell_blocks(run_it) if marker in b) for key, marker in (
        ("sample-webhook", "bin/flask sample-webhook"), ("curl", "curl -i"), ("send", "bin/flask send 1555"))}
    export = re.search(r"`(set -a; [^`]+; set \+a)`", run_it).group(1)
    env = {k: v for k, v in os.environ.items() if not k.startswith(NOT_INHERITED)}
    env["WAFLOW_VAR_DIR"] = str(stack.var_dir)
    results = {}
    for key, block in blocks.items():
        script = f"{export}\n{block}" if key != "sample-webhook" else block
        results[key] = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], cwd=ROOT, env=env,
                                      capture_output=True, text=True, timeout=90)
    return results


class Poster(threading.Thread):
    """Posts signed one-message webhooks back to back; remembers the wamids answered 200."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.acknowledged: list[str] = []
        self.refused = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        with requests.Session() as session:
            while not self.stopping.is_set():
                wamid = f"wamid.ctrl-c-{uuid.uuid4().hex}"
                body = compact(text_webhook([wamid], phone_number_id="100000000000001"))
                try:
                    answer = session.post(self.url, data=body, timeout=5, headers={
                        "Content-Type": "application/json", "X-Hub-Signature-256": sign(body, SECRET_FOR_DEV)})
                except requests.RequestException:
                    self.refused += 1
                    time.sleep(0.05)
                    continue
                if answer.status_code == 200:
                    self.acknowledged.append(wamid)
                else:
                    self.refused += 1


def _processes_with(variable: str) -> list[int]:
    """The processes whose environment holds ``variable`` (NAME=value): what bin/run started inherits it."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if variable.encode() in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:  # gone, or not ours to read
                continue
    return found


@pytest.fixture(scope="module")
def stopped_and_restarted(tmp_path_factory):
    stack = Stack(tmp_path_factory.mktemp("bin-run"))
    try:
        first = stack.start()
        stack.first_flower_queues = wait_for(stack.event_queues, 30, what="Flower's event queue")
        poster = Poster(stack.url)
        poster.start()
        wait_for(lambda: len(poster.acknowledged) >= 50, 30, what="50 webhooks acknowledged")
        # Ctrl-C while webhooks keep arriving: some are in the web process, the queues and the workers.
        first.ctrl_c()
        poster.stopping.set()
        poster.join(10)
        stack.acknowledged = list(poster.acknowledged)
        stack.stored_before_restart = stack.stored(stack.acknowledged)

        second = stack.start()
        stack.second_flower_queues = wait_for(
            lambda: [q for q in stack.event_queues() if q not in stack.first_flower_queues], 30,
            what="the second Flower's event queue")
        stack.left_after_restart = stack.event_queues()
        stack.readme = readme_second_terminal(stack)
        # An operator's `celery inspect` declares a reply queue (auto-delete) like any process starting: a sweep.
        stack.ping = subprocess.run([str(ROOT / ".venv" / "bin" / "celery"), "-A", "waflow", "inspect", "ping",
                                     "--timeout", "2"], cwd=ROOT, env=stack.env, capture_output=True, text=True,
                                    timeout=60)
        stack.first_queue_files = stack.queue_files(stack.first_flower_queues[0])
        try:
            wait_for(lambda: stack.stored(stack.acknowledged) == len(stack.acknowledged), 60, interval=0.5,
                     what="every acknowledged webhook stored")
        except AssertionError:
            pass  # the test below says how many are missing
        stack.stored_after_restart = stack.stored(stack.acknowledged)
        second.ctrl_c()
        yield stack
    finally:
        for run in stack.runs:
            if run.proc.poll() is None:
                try:
                    run.ctrl_c()
                except subprocess.TimeoutExpired:
                    pass
            run.kill_leftovers(stack.var_dir)


@pytest.mark.parametrize("which", [0, 1], ids=["first run", "second run"])
def test_ctrl_c_stops_every_process_cleanly_within_honchos_grace(stopped_and_restarted, which):
    run = stopped_and_restarted.runs[which]
    out = run.output
    assert "SIGINT received" in out
    assert "sending SIGKILL" not in out, out[-6000:]
    # Each line exits on its own, with status 0 (its program's own: Procfile.dev execs it).
    stopped = dict(re.findall(r"(\w+)\.1 stopped \(rc=(-?\d+)\)", out))
    assert stopped == {name: "0" for name in PROCESSES}, out[-6000:]
    assert "exited with 'signal" not in out, out[-6000:]
    assert "No hostname was supplied" not in out  # kombu's warning, once for every broker connection
    assert run.proc.returncode == 130  # honcho's exit status after SIGINT
    assert run.stop_seconds < 10
    # Nothing of the stack outlives honcho: not a Procfile line, not a prefork child (each in a group of its own).
    assert _processes_with(f"WAFLOW_VAR_DIR={stopped_and_restarted.var_dir}") == []


def test_every_webhook_answered_200_before_ctrl_c_is_stored_after_the_next_start(stopped_and_restarted):
    stack = stopped_and_restarted
    assert len(stack.acknowledged) >= 50
    assert stack.stored_after_restart == len(stack.acknowledged), (
        f"{len(stack.acknowledged) - stack.stored_after_restart} acknowledged webhooks lost "
        f"({stack.stored_before_restart} were stored before the restart)")


def test_the_first_flowers_event_queue_is_gone_once_the_stack_starts_again(stopped_and_restarted):
    stack = stopped_and_restarted
    [first] = stack.first_flower_queues
    assert first not in stack.left_after_restart
    assert len(stack.left_after_restart) == 1
    assert stack.first_queue_files == []
    # The sweeps left the live workers' control queues alone: each answers.
    assert all(f"{name}@" in stack.ping.stdout for name in WORKERS), stack.ping.stdout + stack.ping.stderr


def test_the_readmes_second_terminal_commands_find_a_stack_started_on_other_ports(stopped_and_restarted):
    done = stopped_and_restarted.readme
    report = {k: (r.returncode, r.stdout[-1500:], r.stderr[-1500:]) for k, r in done.items()}
    assert all(r.returncode == 0 for r in done.values()), report
    assert f":{stopped_and_restarted.port}/webhooks/whatsapp -> 200 OK" in done["sample-webhook"].stdout
    assert "stored: messages.id=" in done["sample-webhook"].stdout
    assert "HTTP/1.1 200" in done["curl"].stdout
    assert "accepted (wamid." in done["send"].stdout and '"to": "15551234567"' in done["send"].stdout
    assert not any("No hostname" in r.stderr for r in done.values())


def test_bin_run_makes_the_demo_users_once_and_prints_them_with_the_dashboards_address(stopped_and_restarted):
    stack = stopped_and_restarted
    kept = (stack.var_dir / "demo-users.txt").read_text()
    assert oct((stack.var_dir / "demo-users.txt").stat().st_mode & 0o777) == "0o600"
    passwords = re.findall(r"^(lawyer|admin) (\S+@demo\.invalid) (\S+)$", kept, flags=re.M)
    assert [role for role, _, _ in passwords] == ["lawyer", "admin"]
    for run in stack.runs:  # the second start printed the same passwords: nothing was made again
        assert f"the lawyers' dashboard at http://127.0.0.1:{stack.port + 100}/login" in run.output
        for _, email, password in passwords:
            assert email in run.output and password in run.output
