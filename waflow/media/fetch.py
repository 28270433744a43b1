"""One attempt at one inbound media file: a fresh URL, a streamed download, Meta's SHA-256 checked,
the real type found, the bytes durably in the store. No database here: the task records the outcome.

Within one attempt, and bounded (nothing loops):

- a 401 or 404 on the download asks Meta for a new URL and tries again, ``MAX_URL_REFRESHES`` times;
- a SHA-256 that does not match asks for a new URL and downloads again; a second mismatch in a row
  is permanent (``Refused``);
- a ``file_size`` or a ``Content-Length`` over 100 MB, or more than 100 MB streamed, is permanent;
- Meta no longer having the id (code 100, past its 7 days) is permanent;
- timeouts, 5xx, a connection cut mid-stream, a download slower than ``MAX_DOWNLOAD_SECONDS``
  raise ``TransientError``: the retry policy tries again later.

The bytes go to a temporary file as they arrive (64 KiB at a time: memory does not grow with the
file), which is deleted unless the store commits it: no partial file is ever visible.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import mimetypes
import time
from pathlib import Path

import puremagic
import requests
import urllib3

from waflow.media.rows import Fetched
from waflow.mediastore import CHUNK, Incoming, Store
from waflow.tasks import TransientError
from waflow.whatsapp_media import INBOUND_MAX, MediaClient, MediaGone, MediaRefused, UrlRefused

logger = logging.getLogger(__name__)

MAX_URL_REFRESHES = 2
# Well inside RabbitMQ's consumer timeout (30 min) for the unacknowledged task: 100 MB in 15 minutes
# needs under 1 Mbit/s.
MAX_DOWNLOAD_SECONDS = 900.0
MB_100 = "over 100 MB"


class Refused(Exception):
    """The media cannot be had; ``reason`` goes on its row. ``replayable``: a person may fix the cause
    (an expired token, a refusal Meta may lift) and replay the dead letter; otherwise nothing would
    change the outcome, and nothing is dead-lettered."""

    def __init__(self, reason: str, replayable: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.replayable = replayable


def fetch(client: MediaClient, store: Store, media_id: str, *, declared_sha256: str | None = None,
          limit: int = INBOUND_MAX, time_limit: float = MAX_DOWNLOAD_SECONDS, rate: float = 0) -> Fetched:
    """Download ``media_id`` into ``store``, verified, at most ``rate`` bytes a second (0: no limit);
    raise ``Refused`` or ``TransientError`` otherwise."""
    mismatches = refreshes = 0
    while True:
        try:
            info = client.look_up(media_id)
        except MediaGone:
            raise Refused("media id expired: Meta no longer has it (code 100; a client's media lives 7 days)") from None
        except MediaRefused as exc:
            raise Refused(str(exc), replayable=True) from None
        if info.file_size is not None and info.file_size > limit:
            raise Refused(f"{MB_100}: Meta announced {info.file_size} bytes")
        expected = info.sha256 or declared_sha256
        try:
            with store.receiving() as incoming:
                digest = _download(client, info.url, incoming, limit, time_limit, rate)
                if expected is not None and not sha256_matches(expected, digest):
                    mismatches += 1
                    if mismatches >= 2:
                        raise Refused("sha256 mismatch on two fresh downloads in a row")
                    logger.warning("media %s: sha256 mismatch (%d bytes): downloading again from a fresh URL",
                                   media_id, incoming.size)
                    continue
                incoming.file.flush()
                detected = detect(incoming.path)
                key = store.commit(incoming, digest.hex())
                return Fetched(key, incoming.size, digest.hex(), detected)
        except UrlRefused as exc:
            refreshes += 1
            if refreshes > MAX_URL_REFRESHES:
                raise TransientError(f"media {media_id}: the download answered HTTP {exc.status} "
                                     f"to {refreshes} fresh URLs") from None
            logger.info("media %s: download URL answered %d: asking for a fresh one", media_id, exc.status)
        except MediaRefused as exc:
            raise Refused(str(exc), replayable=True) from None


def _download(client: MediaClient, url: str, incoming: Incoming, limit: int, time_limit: float,
              rate: float) -> bytes:
    """Stream ``url`` into ``incoming``, counting and hashing, paced to ``rate``; return the SHA-256 digest."""
    digest = hashlib.sha256()
    started = time.monotonic()
    with client.download(url) as response:
        announced = response.headers.get("Content-Length", "")
        if announced.isdigit() and int(announced) > limit:
            raise Refused(f"{MB_100}: the download announced {announced} bytes")
        try:
            for chunk in response.iter_content(CHUNK):
                if incoming.size + len(chunk) > limit:
                    raise Refused(f"{MB_100}: more than {limit} bytes streamed")
                digest.update(chunk)
                incoming.write(chunk)
                elapsed = time.monotonic() - started
                if elapsed > time_limit:
                    raise TransientError(f"media download slower than {time_limit:.0f}s "
                                         f"({incoming.size} bytes so far)")
                if rate and incoming.size / rate > elapsed:
                    time.sleep(incoming.size / rate - elapsed)
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise TransientError(f"media download cut after {incoming.size} bytes ({type(exc).__name__})") from None
    return digest.digest()


def sha256_matches(expected: str, digest: bytes) -> bool:
    """Whether Meta's ``sha256`` names ``digest``: hex or base64 (standard or URL-safe, padded or not),
    as Meta's documentation leaves the encoding unclear. A value that is neither never matches."""
    value = expected.strip()
    if len(value) == 64:
        try:
            return bytes.fromhex(value) == digest
        except ValueError:
            pass
    try:
        decoded = base64.b64decode(value.replace("-", "+").replace("_", "/") + "=" * (-len(value) % 4),
                                   validate=True)
    except (binascii.Error, ValueError):
        return False
    return decoded == digest


# What puremagic names by a generic or container type, said as the type the file is sent as.
_DETECTED = {"application/ogg": "audio/ogg"}
_BY_EXTENSION = {".amr": "audio/amr", ".oga": "audio/ogg", ".opus": "audio/ogg", ".m4a": "audio/mp4",
                 ".aac": "audio/aac"}


def detect(path: Path) -> str | None:
    """The MIME type of the file's bytes (puremagic), None if it has no signature puremagic knows."""
    try:
        matches = puremagic.magic_file(str(path))
    except (puremagic.PureError, ValueError, OSError):
        return None
    for match in matches:
        mime = (match.mime_type or "").lower()
        if "/" in mime and mime != "application/octet-stream":
            return _DETECTED.get(mime, mime)
        if match.extension in _BY_EXTENSION:
            return _BY_EXTENSION[match.extension]
    return None


def guess_by_name(filename: str) -> str | None:
    """The MIME type a file's extension suggests (for files without a signature, such as plain text)."""
    return mimetypes.guess_type(filename, strict=False)[0]
