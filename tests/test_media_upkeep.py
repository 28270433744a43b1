"""Media upkeep commands: rows left pending queued again (or failed as expired), and retention."""
from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from support import wipe
from waflow.cli import media as media_cli
from waflow.db import get_engine, insert, transaction
from waflow.media import rows
from waflow.media.upkeep import purge_expired, requeue_pending
from waflow.mediastore import default_store, stream_into_store
from waflow.models import Media, Message
from waflow.tasks import TransientError

NOW = datetime.now(timezone.utc)


@pytest.fixture(autouse=True)
def _now():
    """Ages count from the test's start: the commands compare them with the clock, and a long suite reaches
    this module many minutes after importing it (a row made "1 minute ago" then looked 15 minutes idle)."""
    global NOW
    NOW = datetime.now(timezone.utc)


@pytest.fixture
def db(default_db):
    wipe(default_db)
    return default_db


def add(db: str, *, media_id: str | None = None, status: str = "pending", age: timedelta = timedelta(0),
        idle: timedelta | None = None, key: str | None = None, direction: str = "inbound",
        wamid: str = "wamid.m") -> int:
    created = NOW - age
    with get_engine(db).begin() as conn:
        return conn.execute(insert(conn.dialect.name, Media).values(
            media_id=media_id, wamid=wamid, direction=direction, kind="image", mime_type="image/jpeg",
            declared_sha256="c2hh", filename="secret-name.jpg", status=status, storage_key=key,
            created_at=created, updated_at=NOW - (idle if idle is not None else age)).returning(Media.id)).scalar_one()


def media(db: str, row_id: int) -> Media:
    with get_engine(db).connect() as conn:
        return conn.execute(sa.select(Media.__table__).where(Media.id == row_id)).one()


def stored(data: bytes) -> str:
    return stream_into_store(default_store(), [data])[0]


# -- rows left pending -----------------------------------------------------------------------------------------


def test_rows_left_pending_are_queued_again_and_those_past_metas_seven_days_fail_as_expired(db, app, monkeypatch):
    recent = add(db, media_id="1001", age=timedelta(days=2))
    old = add(db, media_id="1002", age=timedelta(days=8))
    busy = add(db, media_id="1003", idle=timedelta(minutes=1))  # a worker may have it right now
    done = add(db, media_id="1004", status="stored", age=timedelta(days=2))
    outbound = add(db, status="pending", age=timedelta(days=2), direction="outbound")
    queued = []
    monkeypatch.setattr(media_cli, "dispatch", lambda name, args: queued.append((name, args)))
    result = app.test_cli_runner().invoke(args=["media", "requeue-pending"])
    assert result.exit_code == 0, result.output
    assert "queued 1 pending media download(s); 1 older than 7 days failed as expired" in result.output
    assert queued == [("waflow.media.record_media", ({
        "event_id": "media:1001", "media_id": "1001", "wamid": "wamid.m", "phone_number_id": None, "kind": "image",
        "mime_type": "image/jpeg", "sha256": "c2hh", "filename": "secret-name.jpg", "url": None},))]
    assert media(db, old).status == "failed" and "expired" in media(db, old).error
    assert [media(db, r).status for r in (recent, busy, done, outbound)] == ["pending", "pending", "stored", "pending"]
    # Run again at once: what was just queued is not queued twice.
    queued.clear()
    app.test_cli_runner().invoke(args=["media", "requeue-pending"])
    assert queued == []
    assert "secret-name" not in result.output


def test_meta_s_seven_days_count_from_the_message_s_time_when_it_is_known(db_url):
    db = db_url
    row_id = add(db, media_id="2001", age=timedelta(hours=1), wamid="wamid.late")
    with get_engine(db).begin() as conn:
        contact = conn.execute(sa.text("INSERT INTO contacts (wa_id, created_at, updated_at) VALUES ('1', :t, :t) "
                                       "RETURNING id"), {"t": NOW}).scalar()
        conversation = conn.execute(sa.text("INSERT INTO conversations (contact_id, phone_number_id, created_at) "
                                            "VALUES (:c, 'n', :t) RETURNING id"), {"c": contact, "t": NOW}).scalar()
        conn.execute(insert(conn.dialect.name, Message).values(
            wamid="wamid.late", conversation_id=conversation, contact_id=contact, phone_number_id="n",
            direction="inbound",
            type="image", sent_at=NOW - timedelta(days=7, minutes=1), content={}, created_at=NOW))
    with transaction(db) as conn:
        jobs, expired = requeue_pending(conn, NOW, timedelta(minutes=15))
    assert (jobs, expired, media(db, row_id).status) == ([], 1, "failed")


# -- retention -------------------------------------------------------------------------------------------------


def test_retention_deletes_expired_files_but_keeps_one_a_newer_row_still_points_at(db, app):
    only, shared = stored(b"old scan"), stored(b"the same photo, sent twice")
    expired_only = add(db, media_id="3001", status="stored", age=timedelta(days=40), key=only)
    expired_shared = add(db, media_id="3002", status="stored", age=timedelta(days=40), key=shared)
    fresh_shared = add(db, media_id="3003", status="stored", age=timedelta(days=1), key=shared)
    failed = add(db, media_id="3004", status="failed", age=timedelta(days=40))
    result = app.test_cli_runner().invoke(args=["media", "purge-expired", "--days", "30"])
    assert result.exit_code == 0, result.output
    assert "2 row(s) marked deleted, 1 file(s) deleted, 1 kept for newer rows" in result.output
    store = default_store()
    assert not store.exists(only) and store.exists(shared)
    assert [media(db, r).status for r in (expired_only, expired_shared, fresh_shared, failed)] == [
        "deleted", "deleted", "stored", "failed"]
    assert media(db, expired_only).deleted_at is not None
    # Once the newer row expires too, the shared file goes.
    result = app.test_cli_runner().invoke(args=["media", "purge-expired", "--days", "1"])
    assert "1 row(s) marked deleted, 1 file(s) deleted, 0 kept" in result.output
    assert not store.exists(shared)


def test_a_purge_cut_short_after_marking_rows_is_finished_by_the_next_run(db_url):
    db = db_url
    key = stored(b"interrupted")
    row_id = add(db, media_id="4001", status="deleted", age=timedelta(days=40), key=key)  # marked, file not yet deleted
    purged = purge_expired(lambda: transaction(db), default_store(), 30, NOW)
    assert (purged.rows, purged.files) == (0, 1)
    assert not default_store().exists(key) and media(db, row_id).storage_key is None


def test_without_a_retention_media_is_kept(db, app):
    key = stored(b"kept for good")
    add(db, media_id="5001", status="stored", age=timedelta(days=4000), key=key)
    result = app.test_cli_runner().invoke(args=["media", "purge-expired"])
    assert "WAFLOW_MEDIA_RETENTION_DAYS is not set: media is kept" in result.output
    assert default_store().exists(key)


def test_a_download_that_finds_its_file_deleted_by_retention_before_its_row_is_stored_tries_again(db_url):
    db = db_url
    data = b"a file retention is deleting"
    key = stored(data)
    add(db, media_id="6001", status="stored", age=timedelta(days=40), key=key)
    pending = add(db, media_id="6002")  # being downloaded: its file is the same bytes, found in the store
    purge_expired(lambda: transaction(db), default_store(), 30, NOW)
    fetched = rows.Fetched(key, len(data), hashlib.sha256(data).hexdigest(), None)
    with pytest.raises(TransientError, match="left the store"), transaction(db) as conn:
        rows.mark_stored(conn, "6002", fetched, default_store())
    assert media(db, pending).status == "pending"  # rolled back: the retry downloads it again
