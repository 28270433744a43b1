"""Issue 15's ingestor findings against real processes: gunicorn with gunicorn.conf.py as shipped, the
workers and the dead-letter recorder as the Procfile runs them, on RabbitMQ + PostgreSQL.

- item 3: one deep update (800 levels, an edit nested 350 times, a Flow answer of 100,000 brackets)
  leaves the rest of its batch and the body's audit row stored;
- item 4: 299 bad updates make 299 small dead letters; replaying some, twice, updates them in place,
  and a dead letter written before the change still replays;
- item 5: a 6,000-character wamid (and status) is set aside by the ingestor, never retried in core;
- item 1: no log line of any process carries the client's words.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from hostile_bodies import (MARKER, bracket_flow, deep_message, envelope, idless_batch, nested_edit, random_id,
                            text)
from support import ROOT, compact, prepared_stack, running, wait_for, wipe
from test_end_to_end import drain_dead_letters, scalar, wait_rows
from waflow.db import get_engine


@pytest.fixture(scope="module")
def stack():
    with running(prepared_stack("rabbitmq+postgresql", "waflow-ingest-stack-")) as started:
        yield started


@pytest.fixture
def live(stack):
    wipe(stack.settings.database_url)
    drain_dead_letters(stack)
    yield stack
    # Item 1: whatever the test sent, no process logged a word of it.
    for log in sorted(stack.log_dir.glob("*.log")):
        assert MARKER not in log.read_text(errors="replace"), f"client text in {log.name}"


def dead_letter_rows(stack, where: str = "1=1") -> list:
    with get_engine(stack.settings.database_url).connect() as conn:
        return conn.execute(sa.text(f"SELECT id, key, status, replay_count, task_id, error_type, error_message, "
                                    f"queue, args, kwargs FROM dead_letters WHERE {where} ORDER BY id")).all()


def replay(stack, ids: list[int]) -> None:
    """``flask --app wsgi dlq replay IDS --yes``, as an operator runs it against the stack."""
    flask = str(Path(sys.executable).parent / "flask")
    done = subprocess.run([flask, "--app", "wsgi", "dlq", "replay", *map(str, ids), "--yes", "--by", "test"],
                          cwd=ROOT, env=stack.env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_one_deep_update_leaves_its_batch_and_the_audit_row_stored(live):
    body = compact(envelope([text("wamid.DEEP-OK1"), deep_message("wamid.DEEP-800", 800),
                             nested_edit("wamid.DEEP-EDIT", 350), bracket_flow("wamid.DEEP-FLOW"),
                             text("wamid.DEEP-OK2")]))
    assert live.post(body).status_code == 200
    wait_rows(live, "messages", 3)
    wait_rows(live, "dead_letters", 2, timeout=30)
    assert scalar(live, "SELECT count(*) FROM webhook_payloads WHERE sha256 = :s",
                  s=hashlib.sha256(body).hexdigest()) == 1
    with get_engine(live.settings.database_url).connect() as conn:
        stored = conn.execute(sa.text("SELECT wamid FROM messages ORDER BY wamid")).scalars().all()
    assert stored == ["wamid.DEEP-FLOW", "wamid.DEEP-OK1", "wamid.DEEP-OK2"]
    rows = dead_letter_rows(live)
    assert sorted((r.error_type, r.error_message) for r in rows) == [
        ("BadUpdate", "entry[0].changes[0].messages[1]: nested more than 64 levels deep"),
        ("BadUpdate", "entry[0].changes[0].messages[2]: nested more than 64 levels deep")]


def test_a_6000_character_wamid_is_set_aside_by_the_ingestor_and_never_retried(live):
    long_status = {"id": random_id(), "status": "delivered", "timestamp": "1764000100", "recipient_id": "1555"}
    body = compact(envelope([text("wamid.LONG-OK"), text(random_id())],
                            statuses=[long_status, {**long_status, "id": "wamid.OUT", "status": random_id()}]))
    assert live.post(body).status_code == 200
    wait_rows(live, "messages", 1, where="wamid = 'wamid.LONG-OK'")
    wait_rows(live, "dead_letters", 3, timeout=30)
    rows = dead_letter_rows(live)
    assert {r.queue for r in rows} == {"wa.incoming.raw"} and {r.error_type for r in rows} == {"BadUpdate"}
    assert all("String should have at most 256 characters" in r.error_message for r in rows)
    assert "retry" not in (live.log_dir / "core.log").read_text()
    assert scalar(live, "SELECT count(*) FROM message_statuses") == 0


def test_bad_update_dead_letters_hold_one_update_and_replays_never_multiply(live):
    body = compact(idless_batch(299, good=["wamid.KEPT"]))
    assert live.post(body).status_code == 200
    wait_rows(live, "messages", 1, where="wamid = 'wamid.KEPT'")
    wait_rows(live, "dead_letters", 299, timeout=90)
    held = scalar(live, "SELECT sum(length(args::text)) FROM dead_letters")
    # The issue measured 19.5 MB for this body's 299 records (the body, 299 times).
    assert held < 3 * len(body), held
    rows = dead_letter_rows(live)
    sha = hashlib.sha256(body).hexdigest()
    assert all(r.key.startswith(f"update:{sha}:entry[0].changes[0].messages[") for r in rows)
    assert all(r.kwargs["payload_sha256"] == sha for r in rows)
    chosen = [r.id for r in rows[:4]]
    for n in (1, 2):
        replay(live, chosen)
        ids = ",".join(map(str, chosen))
        wait_for(lambda: len(dead_letter_rows(live, f"id IN ({ids}) AND status = 'dead' AND replay_count = {n}"))
                 == 4, 60, interval=0.3, what=f"the 4 replayed dead letters to fail again (round {n})")
        assert scalar(live, "SELECT count(*) FROM dead_letters") == 299
        again = dead_letter_rows(live, f"id IN ({ids})")
        assert {r.task_id for r in again}.isdisjoint({r.task_id for r in rows[:4]})


def test_a_dead_letter_written_before_the_change_still_replays(live):
    """The old shape: the whole body in args, keyed by task id and position, no kwargs."""
    from waflow.dlq import recorder, records

    body = compact(idless_batch(2, good=["wamid.OLD-SHAPE"])).decode()
    old = records.input_record(task="waflow.ingestor.ingest_raw", task_id="t-old", queue="wa.incoming.raw",
                               reason="message has no id", error_type="BadUpdate", args=[body, 1764000000.0],
                               received_at=1764000000.0, key="t-old:update-0", detail=json.dumps({"no": "id"}))
    with get_engine(live.settings.database_url).begin() as conn:
        recorder.store(conn, recorder.record_from_message(json.dumps(old).encode(), {}))
    [row] = dead_letter_rows(live)
    replay(live, [row.id])
    wait_rows(live, "messages", 1, where="wamid = 'wamid.OLD-SHAPE'")
    wait_rows(live, "dead_letters", 3, timeout=30)
    old_row, *new_rows = dead_letter_rows(live)
    assert (old_row.key, old_row.status) == ("t-old:update-0", "replayed")
    assert sorted(r.key.rsplit(":", 1)[1] for r in new_rows) == ["entry[0].changes[0].messages[0]",
                                                                 "entry[0].changes[0].messages[1]"]


def test_no_process_logs_the_clients_words_and_no_dead_letter_message_quotes_them(live):
    """Item 1, end to end: a body that is not a webhook and unreadable updates, each carrying the marker."""
    assert live.post(json.dumps({"object": MARKER, "entry": []}).encode()).status_code == 200
    assert live.post(('{"object":"whatsapp_business_account","entry":[{"id":"' + MARKER).encode()).status_code == 200
    body = compact(envelope([text(None), text("wamid.TS-WORDS", timestamp=MARKER), MARKER, text(MARKER * 30),
                             deep_message("wamid.M-DEEP", 300), text("wamid.M-OK")]))
    assert live.post(body).status_code == 200
    wait_rows(live, "messages", 1, where="wamid = 'wamid.M-OK'")
    wait_rows(live, "dead_letters", 7, timeout=30)
    rows = dead_letter_rows(live)
    assert all(MARKER not in r.error_message for r in rows), [r.error_message for r in rows]
    assert all(MARKER in json.dumps(r.args) for r in rows)  # kept for the operators, where it belongs
    # (the live fixture then reads every process's log for the marker)
