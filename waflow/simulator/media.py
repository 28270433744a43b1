"""Media the simulator holds: uploads and the files of injected inbound messages (reference §5).

A media id resolves to a URL valid for 5 minutes; the URL carries its expiry and an HMAC over
the id and the expiry, keyed by a random per-process key (not the app secret), so an expired or
tampered URL answers 404 as Meta's does. URLs are built on the simulator's configured base URL,
never on a request's Host header. A media id lives as long as Meta keeps it: 7 days for a file a
user sent, 30 days for an upload; after that it is gone (``GET /{media-id}`` answers code 100).

The store keeps at most ``max_bytes`` of media (``--max-media-bytes``) and forgets the oldest first.
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
INBOUND_TTL = 7 * 24 * 3600
UPLOAD_TTL = 30 * 24 * 3600
DOWNLOAD_PATH = "whatsapp_business/attachments/"
KINDS = ("image", "video", "audio", "document", "sticker")
# Meta's upload limits per kind (§5); a bigger file is refused with 131053. Written here from the reference,
# not imported from waflow.whatsapp_media: the simulator stands for Meta, so a mistake in waflow's own table
# shows as a refusal instead of being mirrored. A sticker upload may be
# animated (500 KB) or static (100 KB): the upload does not say which, so the larger bound applies.
LIMITS = {"image": 5 * 2**20, "video": 16 * 2**20, "audio": 16 * 2**20, "sticker": 500 * 2**10,
          "document": 100 * 2**20}
# The MIME types Meta takes for each kind (§5); any other is refused with code 100.
TYPES = {
    "image": ("image/jpeg", "image/png"),
    "video": ("video/mp4", "video/3gpp"),
    "audio": ("audio/aac", "audio/amr", "audio/mpeg", "audio/mp4", "audio/ogg"),
    "sticker": ("image/webp",),
    "document": ("text/plain", "application/pdf", "application/msword",
                 "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
                 "application/vnd.ms-excel", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
                 "application/vnd.ms-powerpoint",
                 "application/vnd.openxmlformats-officedocument.presentationml.presentation"),
}
# A user may send a file of any type up to this size; a bigger one never reaches a webhook (§5).
INBOUND_MAX = 100 * 2**20


@dataclass(frozen=True)
class Media:
    id: str
    data: bytes
    mime_type: str
    sha256: str  # base64 SHA-256 of the bytes, as Meta gives it
    expires_at: float

    @property
    def size(self) -> int:
        return len(self.data)


def kind_of(mime_type: str) -> str | None:
    """The media kind Meta uploads a MIME type as, None for a type it refuses (parameters ignored)."""
    bare = mime_type.split(";", 1)[0].strip().lower()
    return next((kind for kind, types in TYPES.items() if bare in types), None)


def accepted_types() -> str:
    return ", ".join(t for types in TYPES.values() for t in types)


class MediaStore:
    def __init__(self, clock: Callable[[], float], max_bytes: int) -> None:
        self._clock = clock
        self._max_bytes = max_bytes
        self._key = secrets.token_bytes(32)
        self._lock = threading.Lock()
        self._items: OrderedDict[str, Media] = OrderedDict()
        self._bytes = 0

    def put(self, data: bytes, mime_type: str, lifetime: float) -> Media:
        sha256 = base64.b64encode(hashlib.sha256(data).digest()).decode()
        media = Media(str(10**15 + secrets.randbelow(9 * 10**15)), data, mime_type, sha256,
                      self._clock() + lifetime)
        with self._lock:
            self._items[media.id] = media
            self._bytes += media.size
            while self._bytes > self._max_bytes and len(self._items) > 1:
                self._bytes -= self._items.popitem(last=False)[1].size
        return media

    def get(self, media_id: str) -> Media | None:
        """The media of a live id; None once it expired, was deleted or was forgotten."""
        with self._lock:
            media = self._items.get(media_id)
        return media if media is not None and media.expires_at > self._clock() else None

    def expire(self, media_id: str) -> bool:
        """Make a media id past its lifetime now (as if its 7 or 30 days were over)."""
        with self._lock:
            media = self._items.get(media_id)
            if media is not None:
                self._items[media_id] = Media(media.id, media.data, media.mime_type, media.sha256, self._clock())
        return media is not None

    def delete(self, media_id: str) -> bool:
        with self._lock:
            media = self._items.pop(media_id, None)
            if media is not None:
                self._bytes -= media.size
        return media is not None

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0

    def url_for(self, media: Media, base_url: str) -> str:
        """A download URL for ``media`` under the simulator's base URL, valid 5 minutes."""
        expires = int(self._clock()) + URL_TTL
        query = urlencode({"mid": media.id, "ext": expires, "hash": self._sign(media.id, expires)})
        return f"{base_url.rstrip('/')}/{DOWNLOAD_PATH}?{query}"

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
