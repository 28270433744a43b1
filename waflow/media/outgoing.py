"""A file a person sends: checked against Meta's types and limits, put in the media store, recorded.

``prepare(path)`` finds the file's type from its bytes (its name's extension only when the bytes
say nothing, as for plain text), the kind Meta sends it as, and refuses what Meta would refuse
(type, size per kind) before anything is stored or queued. ``record(conn, prepared)`` gives it its
media row (``outbound``, ``stored``) and returns the message to command through the sender's API
(``waflow.outbound.commands``): ``{"kind": ..., "file": <media row id>, ...}``. The sender
uploads it to Meta once and sends it by Meta's id (``waflow.outbound.attach``). The CLI's
``send --file`` uses it; drafts and the dashboard can attach files the same way.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from waflow.config import settings
from waflow.db import insert
from waflow.media import rows
from waflow.media.fetch import detect, guess_by_name
from waflow.mediastore import Store, default_store, stream_into_store
from waflow.mediastore.base import file_chunks
from waflow.models import Media
from waflow.whatsapp_media import UPLOAD_LIMITS, UPLOAD_TYPES, upload_kind

# Types that say only "a container" or "some text": the file's extension then says which document it is.
_GENERIC = {None, "application/zip", "application/x-ole-storage", "application/octet-stream", "text/plain"}


class Unsendable(ValueError):
    """Meta would refuse this file; the message says why (types and sizes, never the file's name)."""


@dataclass(frozen=True)
class Prepared:
    """A file in the media store, ready to be recorded and sent."""

    key: str
    size: int
    sha256: str
    mime_type: str
    kind: str
    filename: str


def sendable_type(path: Path) -> str:
    """The MIME type ``path`` is sent as; Unsendable if Meta takes no such file."""
    detected = detect(path)
    guessed = guess_by_name(path.name)
    for candidate in (detected, guessed if detected in _GENERIC else None):
        if candidate and upload_kind(candidate):
            return candidate.split(";", 1)[0].strip().lower()
    accepted = ", ".join(t for types in UPLOAD_TYPES.values() for t in types)
    raise Unsendable(f"Meta does not take files of type {detected or guessed or 'unknown'} (it takes {accepted})")


def prepare(path: Path, store: Store | None = None) -> Prepared:
    """Check ``path`` against Meta's rules and copy it into the media store."""
    mime_type = sendable_type(path)
    kind = upload_kind(mime_type)
    assert kind is not None
    size = path.stat().st_size
    if size == 0:
        raise Unsendable("the file is empty")
    if size > UPLOAD_LIMITS[kind]:
        raise Unsendable(f"Meta takes {kind} files of up to {UPLOAD_LIMITS[kind]} bytes; this one has {size}")
    with open(path, "rb") as file:
        key, stored_size, sha256 = stream_into_store(store or default_store(), file_chunks(file))
    return Prepared(key, stored_size, sha256, mime_type, kind, path.name)


def record(conn: sa.Connection, prepared: Prepared, *, caption: str | None = None,
           phone_number_id: str | None = None, store: Store | None = None) -> dict[str, Any]:
    """Give the prepared file its media row; return the message to command for it."""
    at = rows.now()
    rows.hold(conn, prepared.key)  # retention must not delete the file between its copy and this row
    row_id = conn.execute(insert(conn.dialect.name, Media).values(
        direction="outbound", phone_number_id=phone_number_id or settings.phone_number_id, kind=prepared.kind,
        mime_type=prepared.mime_type, detected_mime_type=prepared.mime_type, sha256=prepared.sha256,
        size=prepared.size, filename=prepared.filename, status="stored", storage_key=prepared.key,
        created_at=at, updated_at=at, stored_at=at).returning(Media.id)).scalar_one()
    if not (store or default_store()).exists(prepared.key):
        raise Unsendable("the file left the media store (retention) before it was recorded: send it again")
    message: dict[str, Any] = {"kind": prepared.kind, "file": row_id}
    if caption:
        message["caption"] = caption
    if prepared.kind == "document":
        message["filename"] = prepared.filename
    return message
