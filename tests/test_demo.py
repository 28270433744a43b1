"""The README's run stack on the embedded default, with the Meta simulator standing in for Meta.

No server: SQLite, the embedded broker, the file-backed send limiter. A client's
message injected at the simulator reaches the database; a reply commanded with
``flask --app wsgi send`` reaches the simulator within the 24-hour window, and the
simulator's status webhooks move it to ``read``.
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa

from support import ROOT, Stack, free_port, migrate, wait_for
from waflow import config
from waflow.db import get_engine


@pytest.fixture(scope="module")
def demo():
    var_dir = tempfile.mkdtemp(prefix="waflow-demo-")
    database_url = f"sqlite:///{var_dir}/waflow.db"
    migrate(config.load({"DATABASE_URL": database_url}).database_url, fresh=True)
    stack = Stack(database_url=database_url, broker_url="embedded://", var_dir=var_dir, simulator=False)
    sim_port = free_port()
    stack.env.update(SIMULATOR_PORT=str(sim_port), SIMULATOR_WEBHOOK_URL=stack.url,
                     WHATSAPP_PHONE_NUMBER_ID="100000000000001")
    stack.env.pop("WHATSAPP_ACCESS_TOKEN")  # the development stand-ins, shared with the simulator
    stack.sim = f"http://127.0.0.1:{sim_port}"
    try:
        stack.start()
        bin_dir = Path(sys.executable).parent
        stack._spawn("meta", [sys.executable, "-m", "waflow.simulator", "--status-delay", "0.2"])
        stack._spawn("sender", [str(bin_dir / "celery"), "-A", "waflow", "worker", "-Q",
                                "wa.outgoing.command,wa.outgoing.broadcast", "-n", "sender@%h", "-P", "threads",
                                "-c", "4", "-l", "INFO", "--without-mingle", "--without-gossip"])
        stack.wait_ready("sender")
        wait_for(lambda: _up(f"{stack.sim}/_sim/health"), 30, what="the simulator")
        yield stack
    finally:
        stack.stop()


def _up(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).ok
    except requests.ConnectionError:
        return False


def _scalar(stack, sql: str):
    with get_engine(config.load({"DATABASE_URL": stack.database_url}).database_url).connect() as conn:
        return conn.execute(sa.text(sql)).scalar()


def test_a_client_message_and_the_lawyers_reply_go_round_the_embedded_stack(demo):
    injected = requests.post(f"{demo.sim}/_sim/inbound", json={"from": "15557654321", "name": "Ana",
                                                               "text": "Can you review my lease?"}, timeout=10)
    assert injected.json()["gateway_status"] == 200, injected.text
    wamid = injected.json()["wamid"]
    wait_for(lambda: _scalar(demo, f"SELECT count(*) FROM messages WHERE wamid = '{wamid}'") == 1, 30,
             what="the client's message stored")
    sent = subprocess.run([str(Path(sys.executable).parent / "flask"), "--app", "wsgi", "send", "15557654321",
                           "Yes: send it and we will reply by Friday.", "--reply-to", wamid, "--wait", "20"],
                          cwd=ROOT, env=demo.env, capture_output=True, text=True, timeout=60)
    assert "accepted (wamid." in sent.stdout, sent.stdout + sent.stderr + demo.logs()
    [reply] = requests.get(f"{demo.sim}/_sim/sends", params={"to": "15557654321"}, timeout=10).json()["sends"]
    assert reply["context"] == {"message_id": wamid}
    # Meta's status webhooks come back through the gateway and move the reply forward.
    wait_for(lambda: _scalar(demo, f"SELECT status FROM messages WHERE wamid = '{reply['wamid']}'") == "read", 30,
             what="the reply read")
    assert _scalar(demo, "SELECT count(*) FROM messages WHERE direction = 'outbound'") == 1


def _flask(stack, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / "flask"), "--app", "wsgi", *args], cwd=ROOT,
                          env=stack.env, capture_output=True, text=True, timeout=60)


def test_send_exits_1_when_meta_refuses_and_3_when_the_answer_is_lost_saying_why_once(demo):
    requests.post(f"{demo.sim}/_sim/faults", json={"code": 131009, "to": "15557650001"}, timeout=10).raise_for_status()
    refused = _flask(demo, "send", "15557650001", "--template", "hello_world", "--wait", "20")
    assert refused.returncode == 1, refused.stdout + refused.stderr + demo.logs()
    [status_line] = [line for line in refused.stdout.splitlines() if ": failed:" in line]
    assert status_line.count("131009") == 1, status_line
    requests.post(f"{demo.sim}/_sim/faults", json={"drop": True, "to": "15557650002"}, timeout=10).raise_for_status()
    lost = _flask(demo, "send", "15557650002", "--template", "hello_world", "--wait", "20")
    assert lost.returncode == 3, lost.stdout + lost.stderr + demo.logs()
    assert "in_doubt: connection lost before Meta answered" in lost.stdout and "#None" not in lost.stdout
    # The CLI's broker connection says nothing about a hostname (kombu's warning, once per command before).
    assert "No hostname" not in refused.stderr + lost.stderr
