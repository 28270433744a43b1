"""Reading a stored media file back: one streaming function, for a route behind the dashboard's login.

No route serves media: the dashboard adds its own, after its login check, and calls
``media_response(conn, media_row_id)`` (or ``open_for_reading`` to build something else).

What a client sent is untrusted content, whatever it claims to be. So:

- only raster images, audio and video whose *bytes* were detected as one of ``INLINE_TYPES`` are
  served inline, with that detected type (never the type the client declared);
- everything else (PDFs, Office files, and the HTML or SVG "document" a client may send) goes as
  an attachment of type ``application/octet-stream``;
- every answer carries ``X-Content-Type-Options: nosniff`` and a ``Content-Security-Policy`` that
  sandboxes it (no script, no form, no plugin, no same origin), is private to the browser, and names
  a sanitized file name in ``Content-Disposition``.
"""
from __future__ import annotations

import re
import unicodedata
from urllib.parse import quote

import sqlalchemy as sa
from flask import Response

from waflow.mediastore import Reader, Store, default_store
from waflow.models import Media

INLINE_TYPES = frozenset({
    "image/jpeg", "image/png", "image/gif", "image/webp",
    "audio/aac", "audio/mp4", "audio/mpeg", "audio/ogg", "audio/wav", "audio/webm",
    "video/mp4", "video/3gpp", "video/webm",
})
ATTACHMENT_TYPE = "application/octet-stream"
SANDBOX = "default-src 'none'; sandbox"
# Inline media may be shown by the browser in a document of its own; that document may show the file.
INLINE_SANDBOX = "default-src 'none'; img-src 'self'; media-src 'self'; sandbox"
_EXTENSIONS = {"image/jpeg": "jpg", "image/png": "png", "image/gif": "gif", "image/webp": "webp",
               "audio/aac": "aac", "audio/mp4": "m4a", "audio/mpeg": "mp3", "audio/ogg": "ogg", "audio/wav": "wav",
               "audio/webm": "weba", "video/mp4": "mp4", "video/3gpp": "3gp", "video/webm": "webm",
               "application/pdf": "pdf"}


class MediaUnavailable(LookupError):
    """The row names no file that can be read now (unknown, not stored yet, failed, deleted)."""


def open_for_reading(conn: sa.Connection, media_row_id: int,
                     store: Store | None = None) -> tuple[Reader, dict[str, str]]:
    """The stored file of media row ``media_row_id`` as an iterable of chunks (read it once; ``close()``
    releases the file, and iterating to the end does too), and the HTTP headers to serve it with.
    Raises MediaUnavailable."""
    row = conn.execute(sa.select(Media.id, Media.status, Media.storage_key, Media.detected_mime_type,
                                 Media.filename, Media.kind).where(Media.id == media_row_id)).first()
    if row is None:
        raise MediaUnavailable(f"no media {media_row_id}")
    if row.status != "stored" or not row.storage_key:
        raise MediaUnavailable(f"media {media_row_id} is {row.status}, not stored")
    try:
        reader = (store or default_store()).open(row.storage_key)
    except FileNotFoundError:
        raise MediaUnavailable(f"media {media_row_id}: its file is not in the store") from None
    return reader, headers_for(row.id, row.detected_mime_type, row.filename, reader.size)


def headers_for(row_id: int, detected_mime_type: str | None, filename: str | None, size: int) -> dict[str, str]:
    """How to serve a file: inline only for an allowed detected type, as an attachment otherwise."""
    inline = detected_mime_type in INLINE_TYPES
    fallback = f"media-{row_id}.{_EXTENSIONS.get(detected_mime_type or '', 'bin')}"
    ascii_name, full_name = safe_filename(filename, fallback)
    return {
        "Content-Type": detected_mime_type if inline else ATTACHMENT_TYPE,  # type: ignore[dict-item]
        "Content-Length": str(size),
        "Content-Disposition": f"{'inline' if inline else 'attachment'}; filename=\"{ascii_name}\"; "
                               f"filename*=UTF-8''{quote(full_name, safe='')}",
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": INLINE_SANDBOX if inline else SANDBOX,
        "Cross-Origin-Resource-Policy": "same-origin",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "private, no-store",
    }


def safe_filename(name: str | None, fallback: str) -> tuple[str, str]:
    """A client's file name made safe for a header: (ASCII-only, full Unicode), without path parts,
    control characters, quotes or separators, at most 150 characters; ``fallback`` if nothing is left."""
    text = unicodedata.normalize("NFC", name or "")
    text = text.replace("\\", "/").rsplit("/", 1)[-1]
    text = "".join(" " if unicodedata.category(c)[0] in "CZ" else c for c in text)
    text = re.sub(r'["<>:|?*;%]', "_", text)
    text = re.sub(r"\s+", " ", text).strip(" .")[:150].strip(" .")
    if not text:
        text = fallback
    ascii_name = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    ascii_name = re.sub(r"[^\w.\- ()\[\]+,=@]", "_", ascii_name).strip(" .") or fallback
    return ascii_name, text


def media_response(conn: sa.Connection, media_row_id: int, store: Store | None = None) -> Response:
    """A streaming Flask response of the stored file (headers as ``headers_for``). Raises MediaUnavailable:
    the caller answers 404. The database is read before the response is returned, never while it streams."""
    reader, headers = open_for_reading(conn, media_row_id, store)
    # Werkzeug closes the body (the file) when the response ends, even if the client went away first.
    return Response(reader, headers=headers, direct_passthrough=True)
