"""The simulator's media: URLs on the configured base URL (issue 16, finding 5), Meta's upload types
and limits per kind, media lifetimes, inbound media with given bytes, and the media faults the
media stage's tests use (issue 18).

Most tests use Flask's test client and the fake clock; a cut connection needs a real server, and
the long stream runs under gunicorn (``python -m waflow.simulator``) to measure its memory.
"""
from __future__ import annotations

import base64
import hashlib
import io
import os
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from werkzeug.datastructures import FileStorage
from werkzeug.test import encode_multipart

from simulator_support import (AUTH, NUMBER, TOKEN, assert_meta_error, clock, make, receiver, serve,  # noqa: F401
                               sim, stats)
from support import SimulatorProcess, free_port, wait_for
from waflow.ingestor import split_webhook
from waflow.simulator.media import DOWNLOAD_PATH

PDF = b"%PDF-1.4 power of attorney\n" + bytes(range(256)) * 40
MB = 2**20


def _b64sha(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def _upload(client: Any, data: bytes, mime_type: str, filename: str = "file.bin") -> Any:
    # Encoded here, in memory: the test client would spool a large body to a file it never closes.
    boundary, body = encode_multipart({"messaging_product": "whatsapp", "type": mime_type,
                                       "file": FileStorage(io.BytesIO(data), filename)})
    return client.post(f"/v25.0/{NUMBER}/media", headers=AUTH, data=body,
                       content_type=f"multipart/form-data; boundary={boundary}")


def _inject(client: Any, data: bytes = PDF, kind: str = "document", mime_type: str = "application/pdf",
            **extra: Any) -> str:
    media = {"kind": kind, "mime_type": mime_type, "data_base64": base64.b64encode(data).decode(), **extra}
    answer = client.post("/_sim/inbound", json={"from": "15551234567", "media": media})
    assert answer.status_code == 200, answer.get_data(as_text=True)
    return answer.get_json()["media_id"]


def _info(client: Any, media_id: str) -> dict[str, Any]:
    response = client.get(f"/v25.0/{media_id}", headers=AUTH)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


def _download(client: Any, media_id: str) -> Any:
    return client.get(_info(client, media_id)["url"], headers=AUTH)


def _fault(client: Any, **fault: Any) -> None:
    response = client.post("/_sim/media/faults", json=fault)
    assert response.status_code == 200, response.get_data(as_text=True)


# -- URLs on the configured base URL ------------------------------------------------------------


def test_a_media_url_is_built_on_the_configured_base_url_whatever_the_host_header(make, receiver):
    client = make(base_url="http://127.0.0.1:6123/", webhook_url=receiver.url).test_client()
    media_id = _upload(client, PDF, "application/pdf").get_json()["id"]
    for host in ("graph.facebook.com", "127.0.0.1:9999", "evil.example"):
        url = client.get(f"/v25.0/{media_id}", headers={**AUTH, "Host": host}).get_json()["url"]
        assert url.startswith(f"http://127.0.0.1:6123/{DOWNLOAD_PATH}?mid={media_id}&"), url
    _inject(client)
    ((_, body),) = receiver.posts
    (event,) = split_webhook(body, time.time()).events
    inbound_url = receiver.docs()[0]["entry"][0]["changes"][0]["value"]["messages"][0]["document"]["url"]
    assert inbound_url.startswith(f"http://127.0.0.1:6123/{DOWNLOAD_PATH}?mid={event.message.media.id}&")


# -- uploads: Meta's types and limits per kind --------------------------------------------------


@pytest.mark.parametrize("mime_type", ["image/jpeg", "image/png", "video/mp4", "video/3gpp", "audio/aac", "audio/amr",
                                       "audio/mpeg", "audio/mp4", "audio/ogg; codecs=opus", "image/webp", "text/plain",
                                       "application/pdf", "application/msword", "application/vnd.ms-excel",
                                       "application/vnd.openxmlformats-officedocument.presentationml.presentation"])
def test_it_takes_an_upload_of_every_type_meta_takes(sim, mime_type):
    response = _upload(sim, b"bytes of the file", mime_type)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert _info(sim, response.get_json()["id"])["mime_type"] == mime_type


@pytest.mark.parametrize("mime_type", ["application/zip", "image/gif", "video/quicktime", "text/html", "audio/wav"])
def test_it_refuses_an_upload_of_a_type_meta_refuses_with_code_100(sim, mime_type):
    error = assert_meta_error(_upload(sim, b"bytes", mime_type), 100, 400)
    assert mime_type in error["error_data"]["details"] and "application/pdf" in error["error_data"]["details"]


@pytest.mark.parametrize("mime_type,limit", [("image/png", 5 * MB), ("audio/mpeg", 16 * MB), ("video/mp4", 16 * MB),
                                             ("image/webp", 500 * 1024), ("application/pdf", 100 * MB)])
def test_an_upload_over_its_kinds_limit_is_refused_with_131053(sim, mime_type, limit):
    assert_meta_error(_upload(sim, b"\x00" * (limit + 1), mime_type), 131053, 400, "limited to")


@pytest.mark.parametrize("mime_type,limit", [("image/jpeg", 5 * MB), ("image/webp", 500 * 1024)])
def test_an_upload_at_its_kinds_limit_is_taken(sim, mime_type, limit):
    assert _upload(sim, b"\x00" * limit, mime_type).status_code == 200


# -- lifetimes ----------------------------------------------------------------------------------


def test_inbound_media_lives_seven_days_and_an_upload_thirty(make, receiver, clock):
    client = make(webhook_url=receiver.url).test_client()
    inbound = _inject(client)
    uploaded = _upload(client, PDF, "application/pdf").get_json()["id"]
    clock.advance(7 * 24 * 3600 - 1)
    assert _download(client, inbound).get_data() == PDF
    clock.advance(1)
    assert_meta_error(client.get(f"/v25.0/{inbound}", headers=AUTH), 100, 400, inbound)
    assert _download(client, uploaded).status_code == 200
    clock.advance(23 * 24 * 3600)
    assert_meta_error(client.get(f"/v25.0/{uploaded}", headers=AUTH), 100, 400, uploaded)


# -- inbound media with given bytes -------------------------------------------------------------


@pytest.mark.parametrize("kind,mime_type,extra,keys", [
    ("image", "image/jpeg", {}, {"caption"}),
    ("video", "video/mp4", {}, {"caption"}),
    ("document", "application/vnd.ms-excel", {"filename": "fees.xls"}, {"caption", "filename"}),
    ("document", "text/html", {"filename": "page.html"}, {"caption", "filename"}),
    ("audio", "audio/ogg; codecs=opus", {"voice": True}, {"voice"}),
    ("audio", "audio/mpeg", {}, {"voice"}),
    ("sticker", "image/webp", {"animated": True}, {"animated"}),
])
def test_an_injected_media_message_carries_a_media_id_the_simulator_serves(make, receiver, kind, mime_type, extra,
                                                                            keys):
    client = make(webhook_url=receiver.url).test_client()
    data = os.urandom(3000)
    caption = {"text": "the file I promised"} if "caption" in keys else {}
    media = {"kind": kind, "mime_type": mime_type, "data_base64": base64.b64encode(data).decode(), **extra}
    answer = client.post("/_sim/inbound", json={"from": "15551234567", "media": media, **caption}).get_json()
    (message,) = receiver.docs()[0]["entry"][0]["changes"][0]["value"]["messages"]
    assert message["type"] == kind
    obj = message[kind]
    assert set(obj) == {"mime_type", "sha256", "id", "url"} | keys
    assert obj["id"] == answer["media_id"] and obj["mime_type"] == mime_type and obj["sha256"] == _b64sha(data)
    assert obj.get("caption") == caption.get("text")
    assert obj.get("voice", False) == extra.get("voice", False) and obj.get("filename") == extra.get("filename")
    assert obj.get("animated", False) == extra.get("animated", False)
    info = _info(client, obj["id"])
    assert (info["sha256"], info["file_size"], info["mime_type"]) == (obj["sha256"], len(data), mime_type)
    downloaded = client.get(info["url"], headers=AUTH)
    assert downloaded.get_data() == data and downloaded.headers["Content-Type"] == mime_type
    ((_, body),) = receiver.posts
    (event,) = split_webhook(body, time.time()).events
    assert event.message.media.id == obj["id"] and event.message.media.kind == kind


def test_an_injected_media_message_can_ask_for_generated_bytes_of_a_size(make, receiver):
    client = make(webhook_url=receiver.url).test_client()
    answer = client.post("/_sim/inbound", json={"from": "15551234567", "media": {
        "kind": "document", "mime_type": "application/pdf", "size": 3 * MB}}).get_json()
    data = _download(client, answer["media_id"]).get_data()
    assert len(data) == 3 * MB and _b64sha(data) == _info(client, answer["media_id"])["sha256"]


def test_an_injected_media_message_can_send_a_media_id_the_simulator_holds_again(make, receiver):
    client = make(webhook_url=receiver.url).test_client()
    first = _inject(client)
    again = client.post("/_sim/inbound", json={"from": "15551234567", "text": "Did you get it?",
                                               "media": {"kind": "document", "id": first, "filename": "poa.pdf"}})
    assert again.status_code == 200 and again.get_json()["media_id"] == first
    objects = [d["entry"][0]["changes"][0]["value"]["messages"][0]["document"] for d in receiver.docs()]
    assert objects[1]["id"] == objects[0]["id"] and objects[1]["sha256"] == objects[0]["sha256"]
    assert objects[1]["mime_type"] == "application/pdf" and objects[1]["caption"] == "Did you get it?"
    gone = client.post("/_sim/inbound", json={"from": "15551234567", "media": {"kind": "document", "id": "123"}})
    assert gone.status_code == 400 and "123" in gone.get_json()["error"]


@pytest.mark.parametrize("media,extra", [
    ({"kind": "gif", "mime_type": "image/gif", "size": 10}, {}),
    ({"kind": "image", "mime_type": "jpeg", "size": 10}, {}),
    ({"kind": "image", "mime_type": "image/jpeg", "data_base64": "not base64!"}, {}),
    ({"kind": "image", "mime_type": "image/jpeg", "data_base64": "", }, {}),
    ({"kind": "image", "mime_type": "image/jpeg", "size": 10, "data_base64": "AAAA"}, {}),
    ({"kind": "image", "mime_type": "image/jpeg"}, {}),
    ({"kind": "document", "mime_type": "application/pdf", "size": 100 * MB + 1}, {}),
    ({"kind": "image", "mime_type": "image/jpeg", "size": 10, "filename": "a.jpg"}, {}),
    ({"kind": "document", "mime_type": "application/pdf", "size": 10, "voice": True}, {}),
    ({"kind": "audio", "mime_type": "audio/ogg", "size": 10}, {"text": "a caption"}),
    ({"kind": "sticker", "mime_type": "image/webp", "size": 10}, {"text": "a caption"}),
    ({"kind": "image", "mime_type": "image/jpeg", "size": 10}, {"type": "video"}),
    ({"kind": "image", "mime_type": "image/jpeg", "size": 10, "colour": "red"}, {}),
    ({"kind": "image", "id": "123", "size": 10}, {}),
    ({"kind": "image", "id": 123}, {}),
    ("a string", {}),
])
def test_it_refuses_a_malformed_media_injection(make, receiver, media, extra):
    client = make(webhook_url=receiver.url).test_client()
    response = client.post("/_sim/inbound", json={"from": "15551234567", "media": media, **extra})
    assert response.status_code == 400 and response.get_json()["error"]
    assert receiver.posts == []


# -- media faults -------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [401, 404])
def test_a_download_can_answer_as_an_expired_url_then_serve_a_fresh_one(make, receiver, status):
    client = make(webhook_url=receiver.url).test_client()
    media_id = _inject(client)
    _fault(client, media_id=media_id, download_status=status)
    expired = _download(client, media_id)
    assert expired.status_code == status
    if status == 401:
        assert_meta_error(expired, 190, 401)
    assert _download(client, media_id).get_data() == PDF


def test_a_download_can_fail_with_5xx_a_number_of_times_then_succeed(make, receiver):
    client = make(webhook_url=receiver.url).test_client()
    media_id = _inject(client)
    _fault(client, media_id=media_id, download_status=503, count=2)
    for _ in range(2):
        failed = _download(client, media_id)
        assert failed.status_code == 503 and failed.get_data() == b""
    assert _download(client, media_id).get_data() == PDF
    assert stats(client)["media_faults"] == {"pending": 0, "used": 2}


def test_a_media_id_can_expire_at_once(make, receiver):
    client = make(webhook_url=receiver.url).test_client()
    media_id = _inject(client)
    url = _info(client, media_id)["url"]
    _fault(client, media_id=media_id, expired=True)
    error = assert_meta_error(client.get(f"/v25.0/{media_id}", headers=AUTH), 100, 400, media_id)
    assert error["message"].startswith("(#100) ")
    assert client.get(url, headers=AUTH).status_code == 404
    assert client.get("/_sim/media/faults").get_json() == {"faults": []}  # nothing queued
    assert client.post("/_sim/media/faults", json={"media_id": "12345", "expired": True}).status_code == 400


def test_a_download_can_fail_its_sha256_once_then_serve_the_file(make, receiver):
    client = make(webhook_url=receiver.url).test_client()
    media_id = _inject(client)
    announced = _info(client, media_id)["sha256"]
    _fault(client, media_id=media_id, sha256_mismatch=True)
    bad = _download(client, media_id).get_data()
    assert len(bad) == len(PDF) and _b64sha(bad) != announced
    assert _b64sha(_download(client, media_id).get_data()) == announced


def test_a_download_can_fail_its_sha256_every_time_until_cleared(make, receiver):
    client = make(webhook_url=receiver.url).test_client()
    media_id, other = _inject(client), _inject(client, PDF + b"other")
    _fault(client, media_id=media_id, sha256_mismatch=True, every=True)
    for _ in range(3):
        assert _b64sha(_download(client, media_id).get_data()) != _info(client, media_id)["sha256"]
    assert _download(client, other).get_data() == PDF + b"other"  # another media id is untouched
    assert client.get("/_sim/media/faults").get_json()["faults"] == [
        {"media_id": media_id, "sha256_mismatch": True, "count": 1, "every": True}]
    client.delete("/_sim/media/faults")
    assert _download(client, media_id).get_data() == PDF


def test_a_lookup_can_announce_a_file_over_100_mb(make, receiver):
    client = make(webhook_url=receiver.url).test_client()
    media_id = _inject(client)
    _fault(client, media_id=media_id, announce_size=100 * MB + 1)
    assert _info(client, media_id)["file_size"] == 100 * MB + 1
    assert _info(client, media_id)["file_size"] == len(PDF)


def test_a_fault_without_a_media_id_applies_to_the_next_download_of_any(make, receiver):
    client = make(webhook_url=receiver.url).test_client()
    _fault(client, download_status=502)
    assert _download(client, _inject(client)).status_code == 502
    assert _download(client, _inject(client)).status_code == 200


@pytest.mark.parametrize("fault", [{}, {"download_status": 404, "sha256_mismatch": True}, {"download_status": 302},
                                   {"download_status": 404, "media_id": 12}, {"cut_after": -1},
                                   {"stream_bytes": 0}, {"announce_size": "big"}, {"expired": True},
                                   {"sha256_mismatch": "yes"}, {"download_status": 404, "count": 0},
                                   {"download_status": 404, "colour": "red"}])
def test_it_refuses_a_malformed_media_fault(sim, fault):
    response = sim.post("/_sim/media/faults", json=fault)
    assert response.status_code == 400 and response.get_json()["error"]
    assert sim.get("/_sim/media/faults").get_json() == {"faults": []}


def test_reset_forgets_media_faults(sim):
    _fault(sim, download_status=404)
    sim.post("/_sim/reset")
    assert sim.get("/_sim/media/faults").get_json() == {"faults": []}


def test_a_download_can_be_cut_mid_stream(make, serve, receiver):
    port = free_port()
    base = serve(make(clock=time.time, webhook_url=receiver.url, base_url=f"http://127.0.0.1:{port}/"), port)
    data = os.urandom(MB)
    media = {"kind": "video", "mime_type": "video/mp4", "data_base64": base64.b64encode(data).decode()}
    media_id = requests.post(f"{base}/_sim/inbound", json={"from": "15551234567", "media": media},
                             timeout=10).json()["media_id"]
    requests.post(f"{base}/_sim/media/faults", json={"media_id": media_id, "cut_after": 300_000}, timeout=5)
    url = requests.get(f"{base}/v25.0/{media_id}", headers=AUTH, timeout=5).json()["url"]
    received = bytearray()
    with requests.get(url, headers=AUTH, stream=True, timeout=10) as response:
        assert response.headers["Content-Length"] == str(MB)
        with pytest.raises(requests.exceptions.ChunkedEncodingError, match="300000 bytes read"):
            for chunk in response.iter_content(1000):  # a divisor of 300000: each chunk read whole
                received += chunk
    assert bytes(received) == data[:300_000]
    assert requests.get(url, headers=AUTH, timeout=10).content == data  # the next download is whole


def test_under_gunicorn_a_download_can_stream_over_100_mb_in_constant_memory_or_be_cut(tmp_path):
    sim = SimulatorProcess("--no-status-webhooks", "--max-media-bytes", str(64 * MB),
                           env={**os.environ, "WHATSAPP_ACCESS_TOKEN": TOKEN, "WAFLOW_LOG_LEVEL": "WARNING"},
                           log_dir=str(tmp_path)).start()
    try:
        media_id = requests.post(f"{sim.base}/_sim/inbound", json={"from": "15551234567", "media": {
            "kind": "document", "mime_type": "application/pdf", "size": 4096}}, timeout=10).json()["media_id"]
        info = requests.get(f"{sim.api_url}/{media_id}", headers=AUTH, timeout=5).json()
        assert info["file_size"] == 4096
        worker = _gunicorn_worker(sim.proc.pid)
        before = _peak_rss(worker)
        total = 100 * MB + MB
        sim.control("POST", "media/faults", {"media_id": media_id, "stream_bytes": total})
        counted = 0
        with requests.get(info["url"], headers=AUTH, stream=True, timeout=30) as response:
            assert response.status_code == 200 and "Content-Length" not in response.headers
            for chunk in response.iter_content(MB):
                counted += len(chunk)
        assert counted == total
        assert _peak_rss(worker) - before < 30 * MB  # the 101 MiB never sat in the simulator's memory
        sim.control("POST", "media/faults", {"media_id": media_id, "cut_after": 1000})
        with requests.get(info["url"], headers=AUTH, stream=True, timeout=10) as response:
            assert response.headers["Content-Length"] == "4096"
            with pytest.raises(requests.exceptions.ChunkedEncodingError, match="1000 bytes read"):
                response.content
    finally:
        sim.stop()
    assert TOKEN not in sim.log.read_text()


def _gunicorn_worker(master: int) -> int:
    children = Path(f"/proc/{master}/task/{master}/children")
    return int(wait_for(lambda: children.read_text().split(), 10, what="the gunicorn worker")[0])


def _peak_rss(pid: int) -> int:
    """The process's peak resident memory (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for process {pid}")
