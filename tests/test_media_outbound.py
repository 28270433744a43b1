"""Sending a file: ``send TO --file PATH [--caption TEXT]`` stores it, the sender uploads it to the Meta
simulator once (``POST /{phone_number_id}/media``) and sends it by Meta's id, retrying like any send."""
from __future__ import annotations

import base64
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest
import requests
import sqlalchemy as sa

from media_support import jpeg, mp4, ogg, pdf
from support import SimulatorProcess, orm, wipe
from waflow import limiter, whatsapp
from waflow.config import settings
from waflow.contacts import upsert_contact, upsert_conversation
from waflow.db import transaction
from waflow.events import ContactInfo
from waflow.media import outgoing
from waflow.mediastore import default_store
from waflow.models import Media, OutboundMessage
from waflow.outbound import attach, commands, operator, task
from waflow.tasks import TransientError
from waflow.whatsapp_media import MediaClient

NUMBER = settings.phone_number_id
CLIENT = "15550007001"


@pytest.fixture(scope="module")
def meta():
    sim = SimulatorProcess("--no-status-webhooks", "--open-windows").start()
    yield sim
    sim.stop()


class CountingMedia(MediaClient):
    """The real media client, counting its uploads."""

    uploads = 0

    def upload(self, *args, **kwargs):
        self.uploads += 1
        return super().upload(*args, **kwargs)


@pytest.fixture
def stage(meta, default_db, tmp_path, app):
    """The sender wired to the default database (where the CLI commands), the simulator, a fresh limiter."""
    meta.control("POST", "reset")
    wipe(default_db)
    with transaction() as conn:
        contact = upsert_contact(conn, ContactInfo(wa_id=CLIENT))
        upsert_conversation(conn, contact, NUMBER, None, datetime.now(timezone.utc) - timedelta(hours=1))
    media = CountingMedia(meta.api_url, settings.access_token)
    wiring = task.Wiring(database_url=default_db, store=limiter.FileStore(tmp_path / "limiter", settings.send_rate),
                         client=whatsapp.Client(meta.api_url, settings.access_token), dispatch=lambda *a, **k: None,
                         media=media)

    def send(outbound_id: int, retries: int = 0) -> str:
        return task.deliver(outbound_id, None, retries, 3, wiring)

    def cli(*args: str):
        return app.test_cli_runner().invoke(args=["send", CLIENT, *args, "--wait", "0"])

    return SimpleNamespace(db=default_db, meta=meta, media=media, send=send, cli=cli)


def outbound(oid: int) -> OutboundMessage:
    with orm(settings.database_url) as session:
        return session.get(OutboundMessage, oid)


def sent_id(result) -> int:
    assert result.exit_code == 0, result.output
    return int(result.output.split()[1])


def meta_has(meta, media_id: str) -> bytes:
    headers = {"Authorization": f"Bearer {settings.access_token}"}
    url = requests.get(f"{meta.api_url}/{media_id}", headers=headers, timeout=5).json()["url"]
    return requests.get(url, headers=headers, timeout=10).content


def test_a_file_is_stored_uploaded_once_and_sent_by_metas_id_with_its_caption(stage, tmp_path):
    photo = tmp_path / "ktp.jpg"
    photo.write_bytes(jpeg())
    oid = sent_id(stage.cli("--file", str(photo), "--caption", "Your signed copy"))
    row = outbound(oid)
    assert (row.kind, row.status, row.media_id) == ("image", "queued", None)
    with orm(stage.db) as session:
        file = session.get(Media, row.media_file_id)
    assert (file.direction, file.status, file.mime_type, file.size) == ("outbound", "stored", "image/jpeg",
                                                                        photo.stat().st_size)
    assert default_store().exists(file.storage_key)
    assert stage.send(oid) == "accepted"
    [sent] = stage.meta.sends(to=CLIENT)
    media_id = outbound(oid).media_id
    assert sent["body"]["type"] == "image"
    assert sent["body"]["image"] == {"id": media_id, "caption": "Your signed copy"}
    assert meta_has(stage.meta, media_id) == photo.read_bytes()
    assert stage.media.uploads == 1 and outbound(oid).payload["image"]["id"] == media_id


def test_a_retry_after_a_successful_upload_sends_by_the_recorded_id_without_uploading_again(stage, tmp_path):
    document = tmp_path / "Putusan Pengadilan.pdf"
    document.write_bytes(pdf())
    oid = sent_id(stage.cli("--file", str(document)))
    stage.meta.control("POST", "faults", {"status": 502})
    with pytest.raises(TransientError):
        stage.send(oid)
    uploaded = outbound(oid).media_id
    assert uploaded and outbound(oid).status == "queued"
    assert stage.send(oid, retries=1) == "accepted"
    assert stage.media.uploads == 1
    [sent] = stage.meta.sends(to=CLIENT)
    assert sent["body"]["document"] == {"id": uploaded, "filename": "Putusan Pengadilan.pdf"}


@pytest.mark.parametrize("name, data, kind", [("clip.mp4", mp4(), "video"), ("voice.ogg", ogg(), "audio"),
                                              ("notes.txt", b"Meeting at 10, bring the deed.\n", "document")])
def test_each_kind_is_sent_as_meta_takes_it(stage, tmp_path, name, data, kind):
    path = tmp_path / name
    path.write_bytes(data)
    oid = sent_id(stage.cli("--file", str(path)))
    assert stage.send(oid) == "accepted"
    [sent] = stage.meta.sends(to=CLIENT)
    assert sent["body"]["type"] == kind and meta_has(stage.meta, sent["body"][kind]["id"]) == data


@pytest.mark.parametrize("name, data, error", [
    ("big.png", b"\x89PNG\r\n\x1a\n" + b"\0" * (5 * 2**20), "Meta takes image files of up to 5242880 bytes"),
    ("page.html", b"<!DOCTYPE html><html></html>", "Meta does not take files of type text/html"),
    ("archive.zip", b"PK\x03\x04" + b"\0" * 100, "Meta does not take files of type application/zip"),
    ("empty.pdf", b"", "the file is empty"),
])
def test_a_file_meta_would_refuse_is_refused_before_anything_is_stored_or_queued(stage, tmp_path, name, data, error):
    path = tmp_path / name
    path.write_bytes(data)
    result = stage.cli("--file", str(path))
    assert result.exit_code != 0 and error in result.output
    assert name not in result.output
    with orm(stage.db) as session:
        assert session.execute(sa.select(sa.func.count()).select_from(OutboundMessage)).scalar() == 0
        assert session.execute(sa.select(sa.func.count()).select_from(Media)).scalar() == 0


@pytest.mark.parametrize("args, error", [
    (["--caption", "hi"], "--caption goes with --file"),
    (["some text", "--file", "FILE"], "give TEXT, or --template NAME"),
])
def test_the_file_options_are_checked(stage, tmp_path, args, error):
    path = tmp_path / "a.pdf"
    path.write_bytes(pdf())
    result = stage.cli(*[str(path) if a == "FILE" else a for a in args])
    assert result.exit_code == 2 and error in result.output


def test_a_caption_on_audio_is_refused_as_meta_would(stage, tmp_path):
    path = tmp_path / "note.ogg"
    path.write_bytes(ogg())
    result = stage.cli("--file", str(path), "--caption", "listen")
    assert result.exit_code == 1 and "audio messages take no caption" in result.output


def test_an_upload_meta_refuses_fails_the_message_with_metas_code(stage, tmp_path, monkeypatch):
    path = tmp_path / "scan.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * (6 * 2**20))
    monkeypatch.setitem(outgoing.UPLOAD_LIMITS, "image", 10 * 2**20)  # our own check let through...
    oid = sent_id(stage.cli("--file", str(path)))
    monkeypatch.setitem(attach.UPLOAD_LIMITS, "image", 10 * 2**20)
    assert stage.send(oid) == "failed"  # ...Meta's is not
    row = outbound(oid)
    assert (row.status, row.error_code, row.media_id) == ("failed", 131053, None)
    assert stage.meta.sends(to=CLIENT) == []


def test_a_file_over_its_kinds_limit_fails_before_the_upload(stage, tmp_path):
    path = tmp_path / "small.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
    oid = sent_id(stage.cli("--file", str(path)))
    with transaction() as conn:  # the file changed meanwhile (a dashboard attaching a bigger one)
        conn.execute(sa.update(Media).values(size=6 * 2**20))
    assert stage.send(oid) == "failed"
    assert "up to 5242880 bytes" in outbound(oid).error_title and stage.media.uploads == 0


def test_an_upload_failing_on_the_last_attempt_fails_the_message_and_a_replay_uploads_again(stage, tmp_path,
                                                                                          monkeypatch):
    path = tmp_path / "bukti.jpg"
    path.write_bytes(jpeg())
    oid = sent_id(stage.cli("--file", str(path)))
    real = stage.media.upload
    monkeypatch.setattr(stage.media, "upload", lambda *a, **k: (_ for _ in ()).throw(TransientError("HTTP 503")))
    with pytest.raises(TransientError, match="HTTP 503"):
        stage.send(oid, retries=3)
    assert outbound(oid).status == "failed" and "retries exhausted" in outbound(oid).error_title
    monkeypatch.setattr(stage.media, "upload", real)
    with transaction() as conn:
        operator.reopen(conn, [oid], {})
    assert stage.send(oid) == "accepted" and stage.media.uploads == 1
    assert base64.b64encode(meta_has(stage.meta, outbound(oid).media_id)) == base64.b64encode(path.read_bytes())


def test_the_upload_and_the_send_by_id_on_each_database(meta, db_url, tmp_path):
    meta.control("POST", "reset")
    with transaction(db_url) as conn:
        contact = upsert_contact(conn, ContactInfo(wa_id=CLIENT))
        upsert_conversation(conn, contact, NUMBER, None, datetime.now(timezone.utc) - timedelta(hours=1))
    path = tmp_path / "surat.pdf"
    path.write_bytes(pdf())
    prepared = outgoing.prepare(path)
    with transaction(db_url) as conn:
        message = outgoing.record(conn, prepared, caption="Surat kuasa")
        queued, _ = commands.command(conn, key="dashboard:attach:1", recipient=CLIENT, message=message)
    media = CountingMedia(meta.api_url, settings.access_token)
    wiring = task.Wiring(database_url=db_url, store=limiter.FileStore(tmp_path / "limiter", settings.send_rate),
                         client=whatsapp.Client(meta.api_url, settings.access_token), dispatch=lambda *a, **k: None,
                         media=media)
    meta.control("POST", "faults", {"status": 503})
    with pytest.raises(TransientError):
        task.deliver(queued.id, None, 0, 3, wiring)
    assert task.deliver(queued.id, None, 1, 3, wiring) == "accepted"
    [sent] = meta.sends(to=CLIENT)
    assert sent["body"]["document"]["caption"] == "Surat kuasa" and media.uploads == 1
    assert meta_has(meta, sent["body"]["document"]["id"]) == path.read_bytes()
