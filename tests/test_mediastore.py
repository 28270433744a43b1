"""The media store: the local directory (durable commits, content addressing, the sweep) and S3-compatible
object storage against a real S3 server on loopback (moto in server mode), the download path included."""
from __future__ import annotations

import hashlib
import os
import time

import boto3
import pytest
import sqlalchemy as sa
from moto.server import ThreadedMotoServer

from media_support import MB, meta, pdf  # noqa: F401 (fixtures)
from simulator_support import make, clock  # noqa: F401 (fixtures)
from support import free_port, orm
from waflow import config
from waflow.media.serve import media_response
from waflow.media.task import process
from waflow.mediastore import LocalStore, open_store, stream_into_store
from waflow.mediastore.s3 import S3Store
from waflow.models import Media


def put(store, data: bytes) -> str:
    key, size, digest = stream_into_store(store, [data[i:i + 1000] for i in range(0, len(data), 1000)])
    assert (size, digest) == (len(data), hashlib.sha256(data).hexdigest())
    return key


# -- the local directory -------------------------------------------------------------------------------------------


def test_a_local_commit_fsyncs_the_file_renames_it_into_place_then_fsyncs_its_directory(tmp_path, monkeypatch):
    store, events = LocalStore(tmp_path / "media"), []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("rename", str(src), str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    key = put(store, b"the signed contract")
    final = store.root / key
    temp = events[0][1]
    assert temp.startswith(str(store.root / ".tmp") + "/") and temp.endswith(".part")
    assert events == [
        ("fsync", temp),  # the bytes on disk first
        ("fsync", str(store.root)), ("fsync", str(final.parent.parent)),  # each new directory made durable
        ("rename", temp, str(final)),  # then the file under its key, whole or not at all
        ("fsync", str(final.parent)),  # and the rename itself
    ]
    assert final.read_bytes() == b"the signed contract"
    assert oct(final.stat().st_mode & 0o777) == "0o600"  # client content: readable by its owner only


def test_the_same_bytes_twice_are_one_file_and_no_temporary_file_is_left(tmp_path):
    store = LocalStore(tmp_path / "media")
    assert put(store, b"a" * 5000) == put(store, b"a" * 5000)
    files = [p for p in store.root.rglob("*") if p.is_file()]
    assert len(files) == 1 and files[0].name == hashlib.sha256(b"a" * 5000).hexdigest()


def test_bytes_never_committed_leave_nothing_behind_even_on_an_error(tmp_path):
    store = LocalStore(tmp_path / "media")
    with store.receiving() as incoming:
        incoming.write(b"half a file")
    with pytest.raises(RuntimeError), store.receiving() as incoming:
        incoming.write(b"half a file")
        raise RuntimeError("the connection dropped")
    assert [p for p in store.root.rglob("*") if p.is_file()] == []


def test_the_sweep_deletes_temporary_files_a_crash_left_and_spares_recent_ones(tmp_path):
    store = LocalStore(tmp_path / "media")
    put(store, b"kept")
    (store.root / ".tmp").mkdir(exist_ok=True)
    stale, fresh = store.root / ".tmp" / "in-old.part", store.root / ".tmp" / "in-new.part"
    stale.write_bytes(b"left by a killed worker")
    fresh.write_bytes(b"a download under way")
    old = time.time() - 3 * 3600
    os.utime(stale, (old, old))
    assert store.sweep() == 1
    assert not stale.exists() and fresh.exists()
    assert len([p for p in store.root.rglob("*") if p.is_file() and ".tmp" not in p.parts]) == 1


@pytest.mark.parametrize("key", ["../../etc/passwd", "/etc/passwd", "ab/cd/../../x", "ab/cd/" + "0" * 63])
def test_a_key_that_is_not_a_content_key_is_refused(tmp_path, key):
    with pytest.raises(ValueError, match="not a media store key"):
        LocalStore(tmp_path).open(key)


def test_a_stored_file_reads_back_in_chunks_and_a_missing_one_is_not_found(tmp_path):
    store = LocalStore(tmp_path / "media")
    data = os.urandom(300_000)
    reader = store.open(put(store, data))
    assert reader.size == len(data) and b"".join(reader) == data
    store.delete(put(store, b"gone"))
    with pytest.raises(FileNotFoundError):
        store.open(f"{hashlib.sha256(b'gone').hexdigest()[:2]}/{hashlib.sha256(b'gone').hexdigest()[2:4]}/"
                   f"{hashlib.sha256(b'gone').hexdigest()}")


# -- S3-compatible object storage, on a real S3 server -------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_server():
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3(s3_server, tmp_path):
    """A fresh bucket on the local S3 server, and the store the configuration makes of it."""
    bucket = f"waflow-{os.urandom(4).hex()}"
    settings = config.load({"WAFLOW_MEDIA_URL": f"s3://{bucket}/firm/media", "AWS_ENDPOINT_URL": s3_server,
                            "AWS_ACCESS_KEY_ID": "test-key-id", "AWS_SECRET_ACCESS_KEY": "test-secret-key-123456",
                            "WAFLOW_VAR_DIR": str(tmp_path)})
    store = open_store(settings)
    assert isinstance(store, S3Store)
    store.client.create_bucket(Bucket=bucket)
    return store


def objects(store: S3Store) -> dict[str, bytes]:
    listed = store.client.list_objects_v2(Bucket=store.bucket).get("Contents", [])
    return {o["Key"]: store.client.get_object(Bucket=store.bucket, Key=o["Key"])["Body"].read() for o in listed}


def test_the_s3_path_downloads_verifies_and_uploads_the_file_and_reads_it_back(meta, s3, db_url):
    data = pdf() * 10
    job = meta.inbound("document", "application/pdf", data, filename="kontrak.pdf")
    assert process(job, client=meta.client, store=s3, database_url=db_url) == "stored"
    with orm(db_url) as session:
        media = session.execute(sa.select(Media).where(Media.media_id == job["media_id"])).scalar_one()
    assert media.status == "stored" and media.detected_mime_type == "application/pdf"
    assert objects(s3) == {f"firm/media/{media.storage_key}": data}
    assert list(s3.spool_dir.glob("*")) == []  # the spooled download is gone once uploaded
    with orm(db_url) as session:
        response = media_response(session.connection(), media.id, store=s3)
    assert b"".join(response.response) == data
    assert response.headers["Content-Disposition"].startswith('attachment; filename="kontrak.pdf"')


def test_a_file_larger_than_one_part_is_uploaded_in_parts_and_the_same_bytes_only_once(s3):
    data = os.urandom(20 * MB)  # three parts of 8 MiB
    key = put(s3, data)
    assert put(s3, data) == key
    assert objects(s3) == {f"firm/media/{key}": data}
    assert s3.exists(key) and s3.open(key).size == len(data)


def test_a_missing_object_is_not_found_and_a_deleted_one_is_gone(s3):
    key = put(s3, b"to be deleted")
    assert s3.delete(key) and not s3.exists(key)
    with pytest.raises(FileNotFoundError):
        s3.open(key)


def test_the_sweep_aborts_multipart_uploads_a_crash_left_unfinished(s3):
    s3.client.create_multipart_upload(Bucket=s3.bucket, Key="firm/media/ab/cd/unfinished")
    assert s3.sweep(older_than=-60) == 1
    assert s3.client.list_multipart_uploads(Bucket=s3.bucket).get("Uploads", []) == []


def test_boto3_is_configured_to_send_checksums_only_when_required(s3):
    # Since boto3 1.36 its default checksums break S3-compatible stores that are not AWS.
    assert s3.client.meta.config.request_checksum_calculation == "when_required"
    assert s3.client.meta.config.response_checksum_validation == "when_required"


def test_a_bucket_with_no_prefix_keeps_keys_at_its_root(s3_server, tmp_path):
    settings = config.load({"WAFLOW_MEDIA_URL": "s3://bare", "AWS_ENDPOINT_URL": s3_server,
                            "WAFLOW_VAR_DIR": str(tmp_path)})
    store = open_store(settings)
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1", aws_access_key_id="x",
                 aws_secret_access_key="y").create_bucket(Bucket="bare")
    key = put(store, b"root")
    assert objects(store) == {key: b"root"}
