"""Reading stored media back: inline only for allowed detected types, everything else as a sandboxed
attachment, names sanitized; nothing in waflow serves media without the dashboard's login."""
from __future__ import annotations

import os
from pathlib import Path
from datetime import datetime, timezone

import pytest
import sqlalchemy as sa
from flask import Flask

from media_support import jpeg, meta, pdf, store  # noqa: F401 (fixtures)
from simulator_support import make, clock  # noqa: F401 (fixtures)
from support import orm
from waflow.db import get_engine, insert
from waflow.media.serve import MediaUnavailable, media_response, open_for_reading
from waflow.media.task import process
from waflow.mediastore import stream_into_store
from waflow.models import Media

HTML = b"<!DOCTYPE html><html><body><script>fetch('/api/messages')</script></body></html>"
SVG = b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(document.cookie)"></svg>'


def stored_row(db_url, store, data: bytes, *, detected: str | None, filename: str | None = None,
               status: str = "stored") -> int:
    key, size, sha = stream_into_store(store, [data])
    now = datetime.now(timezone.utc)
    with get_engine(db_url).begin() as conn:
        return conn.execute(insert(conn.dialect.name, Media).values(
            media_id=os.urandom(6).hex(), wamid="wamid.x", kind="document", mime_type="image/png",
            detected_mime_type=detected, sha256=sha, size=size, filename=filename, status=status,
            storage_key=key, created_at=now, updated_at=now).returning(Media.id)).scalar_one()


_opened: list = []


@pytest.fixture(autouse=True)
def _close_responses():
    """Close every response a test made (as a WSGI server does when the answer ends): the file too."""
    yield
    while _opened:
        _opened.pop().close()


def serve(db_url, store, row_id: int):
    with get_engine(db_url).connect() as conn:
        response = media_response(conn, row_id, store=store)
    _opened.append(response)
    return response


def test_an_html_document_a_client_sent_is_served_as_a_sandboxed_attachment(meta, store, db_url):
    job = meta.inbound("document", "application/pdf", HTML, filename="invoice.pdf")
    assert process(job, client=meta.client, store=store, database_url=db_url) == "stored"
    with orm(db_url) as session:
        row_id = session.execute(sa.select(Media.id).where(Media.media_id == job["media_id"])).scalar_one()
    response = serve(db_url, store, row_id)
    assert response.headers["Content-Type"] == "application/octet-stream"
    assert response.headers["Content-Disposition"] == (
        "attachment; filename=\"invoice.pdf\"; filename*=UTF-8''invoice.pdf")
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Content-Security-Policy"] == "default-src 'none'; sandbox"
    assert response.headers["Cache-Control"] == "private, no-store"
    assert response.is_streamed and b"".join(response.response) == HTML


def test_an_svg_claiming_to_be_an_image_is_an_attachment_too(store, db_url):
    response = serve(db_url, store, stored_row(db_url, store, SVG, detected="image/svg+xml"))
    assert response.headers["Content-Type"] == "application/octet-stream"
    assert response.headers["Content-Disposition"].startswith("attachment; ")
    assert "sandbox" in response.headers["Content-Security-Policy"]


@pytest.mark.parametrize("detected", ["image/jpeg", "image/png", "image/webp", "audio/ogg", "audio/mpeg", "video/mp4"])
def test_a_raster_image_audio_or_video_is_served_inline_as_its_detected_type(store, db_url, detected):
    data = jpeg()
    response = serve(db_url, store, stored_row(db_url, store, data, detected=detected))
    assert response.headers["Content-Type"] == detected
    assert response.headers["Content-Disposition"].startswith("inline; ")
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "sandbox" in response.headers["Content-Security-Policy"]
    assert response.headers["Content-Length"] == str(len(data)) and b"".join(response.response) == data


@pytest.mark.parametrize("detected", [None, "application/pdf", "text/html", "application/zip", "image/svg+xml",
                                      "image/bmp", "text/plain"])
def test_every_other_type_or_none_is_an_attachment(store, db_url, detected):
    response = serve(db_url, store, stored_row(db_url, store, pdf(), detected=detected))
    assert (response.headers["Content-Type"], response.headers["Content-Disposition"][:11]) == (
        "application/octet-stream", "attachment;")


@pytest.mark.parametrize("name, ascii_name, encoded", [
    ('../../etc/Surat "kuasa"\r\nSet-Cookie: x=1.pdf', "Surat _kuasa_ Set-Cookie_ x=1.pdf",
     "Surat%20_kuasa_%20Set-Cookie_%20x%3D1.pdf"),
    ("C:\\Users\\budi\\Kontrak Ünïcødé 合同.docx", "Kontrak Unicde .docx",
     "Kontrak%20%C3%9Cn%C3%AFc%C3%B8d%C3%A9%20%E5%90%88%E5%90%8C.docx"),
    ("...", None, None),
    (None, None, None),
])
def test_a_clients_file_name_is_sanitized_in_content_disposition(store, db_url, name, ascii_name, encoded):
    row_id = stored_row(db_url, store, pdf(), detected="application/pdf", filename=name)
    header = serve(db_url, store, row_id).headers["Content-Disposition"]
    if ascii_name is None:
        ascii_name = encoded = f"media-{row_id}.pdf"
    assert header == f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{encoded}"
    assert "\r" not in header and "\n" not in header and "/" not in header and "\\" not in header


@pytest.mark.parametrize("status", ["pending", "failed", "deleted"])
def test_a_row_without_a_stored_file_is_unavailable(store, db_url, status):
    row_id = stored_row(db_url, store, pdf(), detected="application/pdf", status=status)
    with pytest.raises(MediaUnavailable, match=f"is {status}, not stored"):
        serve(db_url, store, row_id)


def test_an_unknown_row_or_a_file_gone_from_the_store_is_unavailable(store, db_url):
    with pytest.raises(MediaUnavailable, match="no media 999999"):
        serve(db_url, store, 999999)
    row_id = stored_row(db_url, store, b"soon gone", detected=None)
    with get_engine(db_url).connect() as conn:
        key = conn.execute(sa.select(Media.storage_key).where(Media.id == row_id)).scalar_one()
    store.delete(key)
    with pytest.raises(MediaUnavailable, match="not in the store"):
        serve(db_url, store, row_id)


def test_the_response_streams_the_file_and_closes_it_when_the_response_ends(store, db_url):
    data = os.urandom(1_000_000)
    row_id = stored_row(db_url, store, data, detected="video/mp4")
    with get_engine(db_url).connect() as conn:
        reader, headers = open_for_reading(conn, row_id, store=store)
    app = Flask("dashboard-stand-in")  # what the dashboard will do behind its login

    @app.get("/media/<int:row_id>")
    def show(row_id: int):
        with get_engine(db_url).connect() as conn:
            return media_response(conn, row_id, store=store)

    answer = app.test_client().get(f"/media/{row_id}")
    assert answer.status_code == 200 and answer.data == data and answer.headers["Content-Type"] == "video/mp4"
    file = reader._close.__self__  # the open file behind the reader
    reader.close()
    assert file.closed and headers["Content-Length"] == str(len(data))


def test_no_route_of_waflow_serves_media(app, settings):
    rules = [rule.rule for rule in app.url_map.iter_rules()]
    assert not any("media" in rule for rule in rules), rules
    # Flask's default static route serves waflow/static, which holds no media and never the media store.
    static = Path(app.static_folder).resolve() if app.static_folder else None
    media = settings.media_dir.resolve()
    assert static is None or not (static == media or media.is_relative_to(static) or static.is_relative_to(media))
