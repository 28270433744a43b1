"""What the media tests share: the Meta simulator on a real loopback port, inbound media jobs made
from its webhooks exactly as the ingestor makes them, sample files with real signatures, and a
local media store in a temporary folder.
"""
from __future__ import annotations

import base64
import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests

from simulator_support import TOKEN, Receiver, make, clock  # noqa: F401 (fixtures)
from support import free_port
from waflow.ingestor import media_job, split_webhook
from waflow.mediastore import LocalStore
from waflow.simulator.media import sample_png
from waflow.whatsapp_media import MediaClient

MB = 2**20


def jpeg() -> bytes:
    return b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00" + os.urandom(3000) + b"\xff\xd9"


def mp4() -> bytes:
    return b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + os.urandom(4000)


def ogg() -> bytes:
    return (b"OggS\x00\x02\x00\x00\x00\x00\x00\x00\x00\x00" + os.urandom(4) + b"\x00" * 8 + b"\x01\x13OpusHead"
            + os.urandom(2000))


def mp3() -> bytes:
    return b"ID3\x03\x00\x00\x00\x00\x00\x0f" + os.urandom(3000)


def pdf() -> bytes:
    return b"%PDF-1.4\n% power of attorney\n" + os.urandom(3000) + b"\n%%EOF\n"


def webp() -> bytes:
    body = b"WEBPVP8 " + os.urandom(1000)
    return b"RIFF" + len(body).to_bytes(4, "little") + body


# One of each kind a client can send: (kind, declared MIME type, bytes, extra webhook fields, detected type).
SAMPLES = [
    ("image", "image/jpeg", jpeg, {}, "image/jpeg"),
    ("image", "image/png", lambda: sample_png(64), {}, "image/png"),
    ("video", "video/mp4", mp4, {}, "video/mp4"),
    ("audio", "audio/mpeg", mp3, {}, "audio/mpeg"),
    ("audio", "audio/ogg; codecs=opus", ogg, {"voice": True}, "audio/ogg"),
    ("document", "application/pdf", pdf, {"filename": "Surat Kuasa Budi Santoso.pdf"}, "application/pdf"),
    ("sticker", "image/webp", webp, {}, "image/webp"),
]


def b64sha(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


@dataclass
class Meta:
    """The Meta simulator served on loopback, and the jobs its inbound webhooks make."""

    base: str
    receiver: Receiver
    client: MediaClient
    jobs: list[dict[str, Any]] = field(default_factory=list)

    def inbound(self, kind: str = "image", mime_type: str = "image/png", data: bytes | None = None,
                size: int | None = None, caption: str | None = None, **extra: Any) -> dict[str, Any]:
        """A client sends a file: its webhook goes through the ingestor's splitter; returns its media job."""
        media: dict[str, Any] = {"kind": kind, **({"mime_type": mime_type} if mime_type else {}), **extra}
        if data is None and size is None and "id" not in extra:
            data = sample_png(32)
        if data is not None:
            media["data_base64"] = base64.b64encode(data).decode()
        elif size is not None:
            media["size"] = size
        seen = len(self.receiver.posts)
        doc = {"from": "15551234567", "media": media, **({"text": caption} if caption else {})}
        answer = requests.post(f"{self.base}/_sim/inbound", json=doc, timeout=30)
        assert answer.status_code == 200, answer.text
        _, body = self.receiver.posts[seen]
        (event,) = split_webhook(body, time.time()).events
        job = media_job(event)
        self.jobs.append(job)
        return job

    def again(self, media_id: str, kind: str = "image") -> dict[str, Any]:
        """The same media id in a second message (a client forwarding what they sent)."""
        return self.inbound(kind, None, id=media_id)

    def fault(self, **fault: Any) -> None:
        response = requests.post(f"{self.base}/_sim/media/faults", json=fault, timeout=5)
        assert response.status_code == 200, response.text

    def download_bytes(self, media_id: str) -> bytes:
        return self.client.session.get(self.client.look_up(media_id).url,
                                       headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10).content


@pytest.fixture
def meta(make) -> Iterator[Meta]:  # noqa: F811
    from werkzeug.serving import make_server
    import threading

    receiver = Receiver()
    port = free_port()
    app = make(clock=time.time, webhook_url=receiver.url, base_url=f"http://127.0.0.1:{port}/")
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    yield Meta(base, receiver, MediaClient(f"{base}/v25.0", TOKEN))
    server.shutdown()
    server.server_close()
    receiver.close()


@pytest.fixture
def store(tmp_path) -> LocalStore:
    return LocalStore(tmp_path / "media")


def stored_files(store: LocalStore) -> list[Path]:
    """Every file in the store, temporary ones included."""
    return sorted(p for p in store.root.rglob("*") if p.is_file()) if store.root.exists() else []
