"""Meta's media endpoints (reference §5), and Meta's limits on media, for the media stage and the sender.

- ``look_up``: ``GET /{media-id}`` with the Bearer token: a download URL that lives about 5 minutes,
  the declared MIME type, ``sha256`` and ``file_size``. Asked again on every attempt, never reused.
- ``download``: ``GET <url>`` with the Bearer token and a User-Agent, streamed (the caller reads it in
  chunks and counts the bytes).
- ``upload``: ``POST /{phone_number_id}/media``, multipart, streamed from the file (never read whole
  into memory); returns Meta's media id.

What goes wrong is sorted by what the caller does next:

- ``MediaGone``: Meta no longer has the id (code 100: past its 7 days inbound or 30 days uploaded,
  deleted, or unknown); nothing will bring it back.
- ``UrlRefused``: the download URL answered 401 or 404 (expired, or refused): look the id up again
  for a fresh URL.
- ``MediaRefused``: Meta refused for good with a code (an expired token, a type or size it does not
  take): its code and text are kept.
- ``TransientError`` (``waflow.tasks``): a 5xx, 429, timeout, refused or dropped connection, or one
  of Meta's passing codes: the retry policy's business.

Exception messages carry ids, statuses, sizes and Meta's codes only: never a URL (signed), a token,
or a file's name.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterable, Iterator

import requests

from waflow import whatsapp
from waflow.config import settings
from waflow.tasks import TransientError

logger = logging.getLogger(__name__)

# Some clients report Meta's media host refusing requests without a User-Agent (reference, "Media").
USER_AGENT = "waflow/1 (WhatsApp Cloud API media)"
# A download may stall between chunks this long before it is a timeout (then retried); the whole
# download is bounded by the media stage.
DOWNLOAD_READ_TIMEOUT = 30.0
# Uploads of up to 100 MB: the read timeout waits for Meta's answer once the body is sent.
UPLOAD_READ_TIMEOUT = 120.0

# The largest file a client can send (§5); Meta sends no webhook for a bigger one (131052).
INBOUND_MAX = 100 * 2**20
# Meta's limits for what we send, per kind (§5); a sticker upload does not say whether it is animated,
# so the larger bound (500 KB) applies before the upload.
UPLOAD_LIMITS = {"image": 5 * 2**20, "video": 16 * 2**20, "audio": 16 * 2**20, "document": 100 * 2**20,
                 "sticker": 500 * 2**10}
UPLOAD_TYPES = {
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


def upload_kind(mime_type: str) -> str | None:
    """The kind Meta takes a file of this MIME type as (parameters ignored), None if it takes none."""
    bare = mime_type.split(";", 1)[0].strip().lower()
    return next((kind for kind, types in UPLOAD_TYPES.items() if bare in types), None)


@dataclass(frozen=True)
class MediaInfo:
    """Meta's answer to ``GET /{media-id}``."""

    media_id: str
    url: str
    mime_type: str | None
    sha256: str | None
    file_size: int | None


class MediaGone(LookupError):
    """Meta no longer has this media id (code 100): expired (7 days inbound), deleted, or unknown."""


class UrlRefused(Exception):
    """The download URL answered 401 or 404: a fresh URL may work."""

    def __init__(self, status: int) -> None:
        super().__init__(f"the media URL answered HTTP {status}")
        self.status = status


class MediaRefused(Exception):
    """Meta refused for good; ``answer`` keeps its code and text."""

    def __init__(self, what: str, answer: whatsapp.Answer) -> None:
        super().__init__(f"{what}: {answer.reason}")
        self.answer = answer


def _graph_error(what: str, status: int, body: bytes) -> Exception:
    """The exception for an error answer of the Graph API, by Meta's code (``whatsapp.classify``)."""
    answer = whatsapp.read_answer(status, body)
    if answer.outcome in (whatsapp.Outcome.TRANSIENT, whatsapp.Outcome.THROUGHPUT, whatsapp.Outcome.MAINTENANCE,
                          whatsapp.Outcome.PAIR):
        return TransientError(f"{what}: {answer.reason}")
    return MediaRefused(what, answer)


class MediaClient:
    """Meta's media endpoints on the Graph API at ``api_url``, with the access token."""

    def __init__(self, api_url: str, access_token: str, session: requests.Session | None = None) -> None:
        self.api_url = api_url.rstrip("/")
        self._auth = {"Authorization": f"Bearer {access_token}", "User-Agent": USER_AGENT}
        self.session = session or requests.Session()

    def __repr__(self) -> str:  # never the token
        return f"MediaClient({self.api_url!r})"

    def look_up(self, media_id: str) -> MediaInfo:
        """A fresh download URL and Meta's facts about the file."""
        what = f"media {media_id} look-up"
        try:
            response = self.session.get(f"{self.api_url}/{media_id}", headers=self._auth,
                                        timeout=(whatsapp.CONNECT_TIMEOUT, whatsapp.READ_TIMEOUT))
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise TransientError(f"{what}: {type(exc).__name__}") from None
        if response.status_code != 200:
            error = _graph_error(what, response.status_code, response.content)
            answer = getattr(error, "answer", None)
            if answer is not None and (answer.code == 100 or (answer.code is None and response.status_code == 404)):
                raise MediaGone(f"{what}: Meta no longer has it ({answer.reason})")
            raise error
        try:
            doc = response.json()
            url = doc["url"]
            size = doc.get("file_size")
            return MediaInfo(media_id, str(url), _text(doc.get("mime_type")), _text(doc.get("sha256")),
                             int(size) if size is not None and str(size).isdigit() else None)
        except (ValueError, KeyError, TypeError):
            raise TransientError(f"{what}: unreadable answer") from None

    @contextmanager
    def download(self, url: str) -> Iterator[requests.Response]:
        """The download, streamed: read it with ``iter_content``; the connection is released on exit."""
        try:
            response = self.session.get(url, headers=self._auth, stream=True,
                                        timeout=(whatsapp.CONNECT_TIMEOUT, DOWNLOAD_READ_TIMEOUT))
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise TransientError(f"media download: {type(exc).__name__}") from None
        with response:
            status = response.status_code
            if status in (401, 404):
                raise UrlRefused(status)
            if status >= 500 or status in (408, 429):
                raise TransientError(f"media download: HTTP {status}")
            if status != 200:
                raise MediaRefused("media download", whatsapp.Answer(whatsapp.Outcome.PERMANENT, http_status=status))
            yield response

    def upload(self, phone_number_id: str, chunks: Iterable[bytes], size: int, *, mime_type: str,
               filename: str) -> str:
        """Upload the ``size`` bytes of ``chunks`` as ``mime_type``; return Meta's media id."""
        what = f"media upload ({mime_type}, {size} bytes)"
        body = _Multipart(chunks, size, mime_type, filename, {"messaging_product": "whatsapp", "type": mime_type})
        headers = {**self._auth, "Content-Type": body.content_type}
        try:
            response = self.session.post(f"{self.api_url}/{phone_number_id}/media", data=body, headers=headers,
                                         timeout=(whatsapp.CONNECT_TIMEOUT, UPLOAD_READ_TIMEOUT))
        except (requests.ConnectionError, requests.Timeout) as exc:
            # An upload has no side effect worth fearing twice: an unused upload expires after 30 days.
            raise TransientError(f"{what}: {type(exc).__name__}") from None
        if response.status_code == 200:
            try:
                media_id = response.json()["id"]
            except (ValueError, KeyError, TypeError):
                raise TransientError(f"{what}: answer without a media id") from None
            return str(media_id)
        raise _graph_error(what, response.status_code, response.content)


_lock = threading.Lock()
_clients: dict[int, MediaClient] = {}


def default_client() -> MediaClient:
    """This process's media client, on the configured Graph API (made again in a forked child)."""
    pid = os.getpid()
    client = _clients.get(pid)
    if client is None:
        with _lock:
            client = _clients.get(pid)
            if client is None:
                _clients.clear()
                client = _clients[pid] = MediaClient(settings.whatsapp_api_url, settings.access_token)
    return client


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


class _Multipart:
    """A ``multipart/form-data`` body of a few fields and one file, sent in chunks as it is read.

    requests would build the whole body in memory; this gives it a length (so no chunked encoding,
    which some servers refuse for uploads) and an iterator over the parts."""

    def __init__(self, chunks: Iterable[bytes], size: int, mime_type: str, filename: str,
                 fields: dict[str, str]) -> None:
        boundary = uuid.uuid4().hex
        self.content_type = f"multipart/form-data; boundary={boundary}"
        head = b"".join(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
            for name, value in fields.items())
        # The file name goes to Meta (it names an uploaded document); quoted as a JSON string, which
        # escapes the quotes and control characters that would break the header.
        quoted = json.dumps(filename, ensure_ascii=False)
        self._head = head + (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename={quoted}\r\n'
                             f"Content-Type: {mime_type}\r\n\r\n").encode()
        self._tail = f"\r\n--{boundary}--\r\n".encode()
        self._chunks, self._size = chunks, size

    def __len__(self) -> int:
        return len(self._head) + self._size + len(self._tail)

    def __iter__(self) -> Iterator[bytes]:
        yield self._head
        sent = 0
        for chunk in self._chunks:
            sent += len(chunk)
            if sent > self._size:
                break
            yield chunk
        if sent != self._size:
            # The stored file is not the size recorded for it: sending it would break the body's length.
            raise TransientError(f"media upload: the file gave {sent} bytes, not {self._size}")
        yield self._tail
