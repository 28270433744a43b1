"""The media stage against the Meta simulator: every path of a download, one attempt at a time.

Each test makes the client's message with the simulator (``POST /_sim/inbound``), turns its webhook
into the media job exactly as the ingestor does, and runs the stage's attempt (``task.process``)
on SQLite and, when set, PostgreSQL, into a local media store in a temporary folder. The retry
policy itself (Celery, the broker, dead letters) is exercised in ``test_media_stack.py``.
"""
from __future__ import annotations

import hashlib
import logging
import time

import pytest
import sqlalchemy as sa

from media_support import MB, SAMPLES, b64sha, meta, pdf, store, stored_files  # noqa: F401 (fixtures)
from simulator_support import make, clock  # noqa: F401 (fixtures)
from support import orm
from waflow.dlq.tooling import NotReplayable
from waflow.media import rows
from waflow.media.fetch import Refused, sha256_matches
from waflow.media.task import process
from waflow.models import Media
from waflow.tasks import TransientError
from waflow.whatsapp_media import INBOUND_MAX, MediaClient


def row(db_url: str, media_id: str) -> Media:
    with orm(db_url) as session:
        return session.execute(sa.select(Media).where(Media.media_id == media_id)).scalar_one()


def assert_no_file_visible(store) -> None:
    assert stored_files(store) == [], "a partial or temporary file was left in the store"


# -- a good file of each type ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind, declared, make_bytes, extra, detected", SAMPLES,
                         ids=[f"{s[0]}-{s[1].split(';')[0]}" for s in SAMPLES])
def test_a_good_file_of_each_type_is_stored_verified_with_its_detected_type(meta, store, db_url, kind, declared,
                                                                            make_bytes, extra, detected):
    data = make_bytes()
    job = meta.inbound(kind, declared, data, **extra)
    assert process(job, client=meta.client, store=store, database_url=db_url) == "stored"
    media = row(db_url, job["media_id"])
    assert (media.status, media.size, media.error) == ("stored", len(data), None)
    assert media.sha256 == hashlib.sha256(data).hexdigest()
    assert media.declared_sha256 == b64sha(data)  # Meta's, as the webhook gave it (base64)
    assert (media.mime_type, media.detected_mime_type) == (declared, detected)
    assert media.storage_key == f"{media.sha256[:2]}/{media.sha256[2:4]}/{media.sha256}"
    assert (store.root / media.storage_key).read_bytes() == data  # the key is the path under WAFLOW_MEDIA_DIR
    assert media.stored_at is not None and media.wamid == job["wamid"] and media.kind == kind
    assert [p.relative_to(store.root).as_posix() for p in stored_files(store)] == [media.storage_key]


def test_the_type_detected_from_the_bytes_is_kept_beside_the_one_the_client_declared(meta, store, db_url):
    job = meta.inbound("document", "application/pdf", b"<!DOCTYPE html><html><body>not a pdf</body></html>",
                       filename="invoice.pdf")
    process(job, client=meta.client, store=store, database_url=db_url)
    media = row(db_url, job["media_id"])
    assert (media.status, media.mime_type, media.detected_mime_type) == ("stored", "application/pdf", "text/html")


def test_a_file_with_no_known_signature_is_stored_with_no_detected_type(meta, store, db_url):
    job = meta.inbound("document", "text/plain", b"just some words\n" * 50, filename="notes.txt")
    process(job, client=meta.client, store=store, database_url=db_url)
    media = row(db_url, job["media_id"])
    assert (media.status, media.detected_mime_type) == ("stored", None)


# -- expired URLs and ids ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [401, 404])
def test_an_expired_url_is_asked_for_again_and_the_file_stored(meta, store, db_url, status):
    data = pdf()
    job = meta.inbound("document", "application/pdf", data)
    meta.fault(media_id=job["media_id"], download_status=status, count=2)
    assert process(job, client=meta.client, store=store, database_url=db_url) == "stored"
    assert row(db_url, job["media_id"]).size == len(data)


def test_an_url_refused_past_the_fresh_urls_allowed_is_left_to_the_retry_policy(meta, store, db_url):
    job = meta.inbound()
    meta.fault(media_id=job["media_id"], download_status=404, count=3)
    with pytest.raises(TransientError, match="answered HTTP 404 to 3 fresh URLs"):
        process(job, client=meta.client, store=store, database_url=db_url)
    assert row(db_url, job["media_id"]).status == "pending"
    assert process(job, client=meta.client, store=store, database_url=db_url) == "stored"  # the next attempt


def test_an_expired_media_id_fails_for_good_without_a_dead_letter(meta, store, db_url):
    job = meta.inbound()
    meta.fault(media_id=job["media_id"], expired=True)
    assert process(job, client=meta.client, store=store, database_url=db_url) == "failed"
    media = row(db_url, job["media_id"])
    assert media.status == "failed" and "media id expired" in media.error and "code 100" in media.error
    assert media.storage_key is None
    assert_no_file_visible(store)


# -- Meta's sha256 -----------------------------------------------------------------------------------------------


def test_a_sha256_mismatch_once_is_downloaded_again_and_stored(meta, store, db_url):
    data = pdf()
    job = meta.inbound("document", "application/pdf", data)
    meta.fault(media_id=job["media_id"], sha256_mismatch=True)
    assert process(job, client=meta.client, store=store, database_url=db_url) == "stored"
    media = row(db_url, job["media_id"])
    assert media.sha256 == hashlib.sha256(data).hexdigest()
    assert (store.root / media.storage_key).read_bytes() == data


def test_a_sha256_mismatch_on_two_fresh_downloads_in_a_row_fails_for_good(meta, store, db_url):
    job = meta.inbound("document", "application/pdf", pdf())
    meta.fault(media_id=job["media_id"], sha256_mismatch=True, every=True)
    assert process(job, client=meta.client, store=store, database_url=db_url) == "failed"
    media = row(db_url, job["media_id"])
    assert (media.status, media.error) == ("failed", "sha256 mismatch on two fresh downloads in a row")
    assert_no_file_visible(store)
    # Redelivered, the task does not try again: the row is settled.
    assert process(job, client=meta.client, store=store, database_url=db_url) == "failed"


@pytest.mark.parametrize("encode", [
    lambda d: d.hex(), lambda d: d.hex().upper(), lambda d: __import__("base64").b64encode(d).decode(),
    lambda d: __import__("base64").urlsafe_b64encode(d).decode().rstrip("="),
], ids=["hex", "HEX", "base64", "base64url-unpadded"])
def test_meta_s_sha256_is_read_as_hex_or_base64(encode):
    digest = hashlib.sha256(b"file").digest()
    assert sha256_matches(encode(digest), digest)
    assert not sha256_matches(encode(hashlib.sha256(b"other").digest()), digest)


@pytest.mark.parametrize("value", ["", "not a hash", "zz" * 32, "c2hhMjU2"])
def test_a_sha256_that_is_neither_hex_nor_base64_of_a_digest_never_matches(value):
    assert not sha256_matches(value, hashlib.sha256(b"file").digest())


# -- transient failures: no partial file, the retry policy's business ---------------------------------------------


def test_a_5xx_is_transient_and_leaves_the_row_pending_then_the_next_attempt_stores_it(meta, store, db_url):
    job = meta.inbound("document", "application/pdf", pdf())
    meta.fault(media_id=job["media_id"], download_status=503, count=2)
    for _ in range(2):
        with pytest.raises(TransientError, match="HTTP 503"):
            process(job, client=meta.client, store=store, database_url=db_url)
        assert row(db_url, job["media_id"]).status == "pending"
        assert_no_file_visible(store)
    assert process(job, client=meta.client, store=store, database_url=db_url) == "stored"


def test_a_connection_cut_mid_download_leaves_no_partial_file_and_the_next_attempt_stores_it(meta, store, db_url):
    data = pdf() * 200  # about 600 KB
    job = meta.inbound("document", "application/pdf", data)
    meta.fault(media_id=job["media_id"], cut_after=200_000)
    with pytest.raises(TransientError, match=r"media download cut after \d+ bytes"):
        process(job, client=meta.client, store=store, database_url=db_url)
    assert row(db_url, job["media_id"]).status == "pending"
    assert_no_file_visible(store)
    assert process(job, client=meta.client, store=store, database_url=db_url) == "stored"
    assert (store.root / row(db_url, job["media_id"]).storage_key).read_bytes() == data


def test_on_the_last_attempt_a_transient_failure_marks_the_row_failed_and_a_replay_reopens_it(meta, store, db_url):
    job = meta.inbound()
    meta.fault(media_id=job["media_id"], download_status=502)
    with pytest.raises(TransientError):
        process(job, last_attempt=True, client=meta.client, store=store, database_url=db_url)
    media = row(db_url, job["media_id"])
    assert media.status == "failed" and media.error.startswith("retries exhausted (last: media download: HTTP 502")
    with orm(db_url) as session:
        rows.reopen(session.connection(), [job], {})
    assert row(db_url, job["media_id"]).status == "pending"
    assert process(job, client=meta.client, store=store, database_url=db_url) == "stored"
    with orm(db_url) as session, pytest.raises(NotReplayable, match="stored already"):
        rows.reopen(session.connection(), [job], {})


def test_a_refusal_a_person_can_fix_fails_the_row_and_is_dead_lettered(meta, store, db_url):
    job = meta.inbound()
    wrong_token = MediaClient(meta.client.api_url, "an-expired-access-token")
    with pytest.raises(Refused, match="#190") as refused:
        process(job, client=wrong_token, store=store, database_url=db_url)
    assert refused.value.replayable
    media = row(db_url, job["media_id"])
    assert media.status == "failed" and "#190" in media.error


# -- over 100 MB ---------------------------------------------------------------------------------------------------


def test_a_file_meta_announces_over_100_mb_fails_before_any_download(meta, store, db_url):
    job = meta.inbound("document", "application/pdf", pdf())
    meta.fault(media_id=job["media_id"], announce_size=INBOUND_MAX + 1)
    meta.fault(media_id=job["media_id"], download_status=500, every=True)  # a download would raise
    assert process(job, client=meta.client, store=store, database_url=db_url) == "failed"
    media = row(db_url, job["media_id"])
    assert (media.status, media.error) == ("failed", f"over 100 MB: Meta announced {INBOUND_MAX + 1} bytes")
    assert_no_file_visible(store)


def test_a_download_streaming_past_100_mb_is_stopped_and_fails_for_good(meta, store, db_url):
    job = meta.inbound("document", "application/pdf", pdf())
    meta.fault(media_id=job["media_id"], stream_bytes=INBOUND_MAX + 5 * MB)
    assert process(job, client=meta.client, store=store, database_url=db_url, rate=0) == "failed"
    media = row(db_url, job["media_id"])
    assert (media.status, media.error) == ("failed", f"over 100 MB: more than {INBOUND_MAX} bytes streamed")
    assert_no_file_visible(store)


# -- the same media twice ------------------------------------------------------------------------------------------


def test_the_same_media_id_twice_is_one_row_and_one_download(meta, store, db_url):
    first = meta.inbound("image", "image/jpeg", b"\xff\xd8\xff\xe0" + b"\x01" * 2000)
    second = meta.again(first["media_id"])
    assert (second["media_id"], second["wamid"] != first["wamid"]) == (first["media_id"], True)
    assert process(first, client=meta.client, store=store, database_url=db_url) == "stored"
    meta.fault(media_id=first["media_id"], expired=True)  # any further look-up would fail
    assert process(second, client=meta.client, store=store, database_url=db_url) == "stored"
    with orm(db_url) as session:
        assert session.execute(sa.select(sa.func.count()).select_from(Media)).scalar() == 1
    assert len(stored_files(store)) == 1


def test_the_same_bytes_under_two_media_ids_are_two_rows_sharing_one_file(meta, store, db_url):
    data = pdf()
    jobs = [meta.inbound("document", "application/pdf", data) for _ in range(2)]
    for job in jobs:
        assert process(job, client=meta.client, store=store, database_url=db_url) == "stored"
    keys = {row(db_url, job["media_id"]).storage_key for job in jobs}
    assert len(keys) == 1 and len(stored_files(store)) == 1


# -- nothing of the client's in a log line -------------------------------------------------------------------------


def test_no_file_name_or_caption_reaches_a_log_line_whatever_happens(meta, store, db_url, caplog):
    caplog.set_level(logging.DEBUG)
    name, caption = "Perceraian-Siti-Rahma.pdf", "bukti transfer rahasia"
    jobs = [meta.inbound("document", "application/pdf", pdf(), filename=name, caption=caption) for _ in range(3)]
    meta.fault(media_id=jobs[0]["media_id"], sha256_mismatch=True, every=True)
    meta.fault(media_id=jobs[1]["media_id"], download_status=404)
    for job in jobs:
        process(job, client=meta.client, store=store, database_url=db_url)
    assert row(db_url, jobs[2]["media_id"]).filename == name  # kept on the row, for the dashboard
    assert caplog.records and name not in caplog.text and "Siti" not in caplog.text and caption not in caplog.text


def test_a_download_is_paced_to_the_configured_rate(meta, store, db_url):
    data = pdf() * 700  # about 2 MB
    job = meta.inbound("document", "application/pdf", data)
    started = time.monotonic()
    assert process(job, client=meta.client, store=store, database_url=db_url, rate=4 * MB) == "stored"
    assert time.monotonic() - started >= len(data) / (4 * MB) - 0.1
