"""The media stage as deployed: a client's file goes from the Meta simulator through gunicorn, the ingestor
and core to the media worker (Celery), which stores it; the retry policy, dead letters and a replay.

Runs on RabbitMQ and PostgreSQL when their URLs are set, else on the embedded default.
"""
from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa

from media_support import pdf
from support import ROOT, prepared_stack, running, wait_for, wipe
from waflow.db import get_engine


@pytest.fixture(scope="module")
def stack():
    with running(prepared_stack("best", "waflow-media-")) as started:
        yield started


@pytest.fixture
def live(stack):
    wipe(stack.settings.database_url)
    requests.delete(f"{stack.simulator_url}/_sim/media/faults", timeout=5)
    return stack


def row(stack, media_id: str):
    with get_engine(stack.settings.database_url).connect() as conn:
        return conn.execute(sa.text("SELECT status, error, storage_key, size, sha256 FROM media WHERE media_id = :m"),
                            {"m": media_id}).first()


def scalar(stack, sql: str, **params):
    with get_engine(stack.settings.database_url).connect() as conn:
        return conn.execute(sa.text(sql), params).scalar()


def inbound(stack, data: bytes, **media) -> str:
    doc = {"from": "15551234567", "media": {"kind": "document", "mime_type": "application/pdf",
                                            "data_base64": base64.b64encode(data).decode(), **media}}
    answer = requests.post(f"{stack.simulator_url}/_sim/inbound", json=doc, timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()["media_id"]


def fault(stack, **spec) -> None:
    requests.post(f"{stack.simulator_url}/_sim/media/faults", json=spec, timeout=5).raise_for_status()


def wait_status(stack, media_id: str, status: str, timeout: float):
    try:
        return wait_for(lambda: (r := row(stack, media_id)) is not None and r.status == status and r, timeout,
                        interval=0.2, what=f"media {media_id} {status}")
    except AssertionError:
        print(stack.logs())
        raise


def test_a_clients_file_is_stored_by_the_media_worker_after_5xx_answers_through_the_retry_policy(live):
    data = pdf()
    fault(live, download_status=503, count=2)  # the next two downloads, whichever media
    media_id = inbound(live, data, filename="Akta Jual Beli.pdf")
    stored = wait_status(live, media_id, "stored", 60)
    assert (stored.size, stored.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert (Path(live.settings.media_dir) / stored.storage_key).read_bytes() == data
    log = (live.log_dir / "media.log").read_text()
    assert "retry 1 of 3 after TransientError" in log and "retry 2 of 3 after TransientError" in log
    assert "Akta" not in log


def test_when_retries_are_spent_the_row_fails_the_job_is_dead_lettered_and_a_replay_stores_it(live):
    data = pdf()
    media_id = inbound(live, data)
    fault(live, media_id=media_id, download_status=503, every=True)
    failed = wait_status(live, media_id, "failed", 90)
    assert failed.error.startswith("retries exhausted (last: media download: HTTP 503")
    # The message itself is stored whatever happened to its file.
    assert scalar(live, "SELECT count(*) FROM messages m JOIN media f ON f.wamid = m.wamid WHERE f.media_id = :m",
                  m=media_id) == 1
    wait_for(lambda: scalar(live, "SELECT count(*) FROM dead_letters WHERE task = 'waflow.media.record_media'") == 1,
             30, interval=0.2, what="the dead letter")
    requests.delete(f"{live.simulator_url}/_sim/media/faults", timeout=5)
    dead_letter = scalar(live, "SELECT id FROM dead_letters WHERE task = 'waflow.media.record_media'")
    replay = subprocess.run([str(Path(sys.executable).parent / "flask"), "--app", "wsgi", "dlq", "replay",
                             str(dead_letter), "--yes", "--by", "test"], cwd=ROOT, env=live.env,
                            capture_output=True, text=True, timeout=60)
    assert replay.returncode == 0, replay.stdout + replay.stderr
    stored = wait_status(live, media_id, "stored", 60)
    assert (stored.size, stored.error) == (len(data), None)


def test_a_media_id_that_expires_before_a_retry_fails_at_once_without_a_dead_letter(live):
    fault(live, download_status=503)  # the first attempt fails: its retry comes 3 s later
    media_id = inbound(live, pdf())
    fault(live, media_id=media_id, expired=True)
    failed = wait_status(live, media_id, "failed", 30)
    assert failed.error.startswith("media id expired")
    assert scalar(live, "SELECT count(*) FROM dead_letters") == 0
