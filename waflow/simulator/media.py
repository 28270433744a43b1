"""Media the simulator holds: uploads and the images of injected inbound messages (§5).

A media id resolves to a URL valid for 5 minutes; the URL carries its expiry and an HMAC over
the id and the expiry, keyed by a random per-process key (not the app secret), so an expired or
tampered URL answers 404 as Meta's does. The store keeps at most ``max_bytes`` of media and
forgets the oldest first.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import random
import secrets
import struct
import threading
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable
from urllib.parse import urlencode

URL_TTL = 300
DOWNLOAD_PATH = "whatsapp_business/attachments/"
# Meta's upload limits per kind (§5); a bigger file is refused with 131053.
LIMITS = {"image": 5 * 2**20, "video": 16 * 2**20, "audio": 16 * 2**20, "sticker": 500 * 2**10,
          "document": 100 * 2**20}


@dataclass(frozen=True)
class Media:
    id: str
    data: bytes
    mime_type: str

    @property
    def sha256(self) -> str:
        """Base64 SHA-256 of the bytes, as Meta gives it."""
        return base64.b64encode(hashlib.sha256(self.data).digest()).decode()


def kind_of(mime_type: str) -> str:
    """The WhatsApp media kind a MIME type uploads as."""
    if mime_type == "image/webp":
        return "sticker"
    main = mime_type.split("/", 1)[0]
    return main if main in ("image", "video", "audio") else "document"


class MediaStore:
    def __init__(self, clock: Callable[[], float], max_bytes: int) -> None:
        self._clock = clock
        self._max_bytes = max_bytes
        self._key = secrets.token_bytes(32)
        self._lock = threading.Lock()
        self._items: OrderedDict[str, Media] = OrderedDict()
        self._bytes = 0

    def put(self, data: bytes, mime_type: str) -> Media:
        media = Media(str(10**15 + secrets.randbelow(9 * 10**15)), data, mime_type)
        with self._lock:
            self._items[media.id] = media
            self._bytes += len(data)
            while self._bytes > self._max_bytes and len(self._items) > 1:
                self._bytes -= len(self._items.popitem(last=False)[1].data)
        return media

    def get(self, media_id: str) -> Media | None:
        with self._lock:
            return self._items.get(media_id)

    def delete(self, media_id: str) -> bool:
        with self._lock:
            media = self._items.pop(media_id, None)
            if media is not None:
                self._bytes -= len(media.data)
        return media is not None

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0

    def url_for(self, media: Media, root: str) -> str:
        """A download URL for ``media`` under ``root`` (the simulator's base URL), valid 5 minutes."""
        expires = int(self._clock()) + URL_TTL
        query = urlencode({"mid": media.id, "ext": expires, "hash": self._sign(media.id, expires)})
        return f"{root.rstrip('/')}/{DOWNLOAD_PATH}?{query}"

    def open(self, media_id: str, expires: str, signature: str) -> Media | None:
        """The media a download URL names, or None if it is expired, tampered with or gone."""
        if not expires.isdigit() or int(expires) < self._clock():
            return None
        if not hmac.compare_digest(self._sign(media_id, int(expires)).encode(), signature.encode("utf-8", "replace")):
            return None
        return self.get(media_id)

    def _sign(self, media_id: str, expires: int) -> str:
        return hmac.new(self._key, f"{media_id}:{expires}".encode(), hashlib.sha256).hexdigest()


def sample_png(size: int = 16) -> bytes:
    """A small valid PNG of one random colour: the "photo" an injected inbound image carries."""
    pixel = bytes(random.randrange(256) for _ in range(3))
    rows = b"".join(b"\x00" + pixel * size for _ in range(size))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
