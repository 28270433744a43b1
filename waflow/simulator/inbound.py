"""What ``POST /_sim/inbound`` asks for: one client message, checked, and its media object.

Body: ``{"from": "<wa_id>", "text"?: "...", "name"?: "...", "phone_number_id"?: "...",
"user_id"?: "<BSUID>" | null, "type"?: "text" | "image", "media"?: {...}, "sent_ago"?: <seconds>}``.

- ``sent_ago``: the client sent it that many seconds ago (up to 7 days) and its webhook comes only now,
  as Meta delivers after an outage: the message's ``timestamp`` says so.
- ``user_id`` absent: the number's own stable BSUID (unless the runtime option ``user_ids`` is
  off); a string: that BSUID; ``null``: a phone-only contact, as webhooks before April 2026.
- ``"type": "image"`` without ``media``: a small generated PNG, ``text`` as its caption.
- ``media``: ``{"kind": "image" | "video" | "audio" | "document" | "sticker", "mime_type": "...",
  "data_base64": "..." | "size": <bytes>, "filename"? (document), "voice"? (audio),
  "animated"? (sticker)}``; ``size`` makes that many random bytes. Any MIME type is taken, as
  a user may send any file, up to Meta's inbound cap of 100 MB; ``text`` is the caption (not for
  audio or stickers). ``"id": "<media id>"`` instead of the bytes (and of ``mime_type``) sends a
  media id the simulator already holds again, as when a webhook names the same file twice.
"""
from __future__ import annotations

import base64
import binascii
import os
import re
from dataclasses import dataclass
from typing import Any

from waflow.simulator.media import INBOUND_MAX, KINDS, Media, sample_png
from waflow.simulator.shapes import BSUID

MIME = re.compile(r"[\w.+-]+/[\w.+-]+(\s*;.*)?")
CAPTIONED = ("image", "video", "document")


@dataclass(frozen=True)
class InboundMedia:
    kind: str
    mime_type: str | None  # None with reuse: the stored media's
    data: bytes | None  # None with reuse
    filename: str | None = None
    voice: bool = False
    animated: bool = False
    reuse: str | None = None  # a media id the simulator holds, sent again


@dataclass(frozen=True)
class Inbound:
    wa_id: str
    name: str
    phone_number_id: str
    kind: str  # "text" or a media kind
    text: str  # a text's body, a media message's caption ("" for none)
    user_id: str | None  # a BSUID the caller chose; None with phone_only False: the number's own
    phone_only: bool
    media: InboundMedia | None
    sent_ago: int = 0


def parse_inbound(doc: Any, default_number: str) -> Inbound:
    """The message ``/_sim/inbound``'s JSON asks for; ValueError says what is wrong."""
    if not isinstance(doc, dict):
        raise ValueError("the body must be a JSON object")
    wa_id, text = doc.get("from"), doc.get("text", "")
    if not isinstance(wa_id, str) or not re.fullmatch(r"[0-9]{5,20}", wa_id):
        raise ValueError("from must be a wa_id: 5 to 20 digits, no +")
    if not isinstance(text, str):
        raise ValueError("text must be a string")
    media = _media(doc["media"]) if "media" in doc else None
    kind = doc.get("type", media.kind if media else "text")
    if media is not None and kind != media.kind:
        raise ValueError("type, when given with media, must be the media's kind")
    if media is None and kind not in ("text", "image"):
        raise ValueError('type must be "text" or "image" (other kinds come with "media")')
    if kind == "image" and media is None:
        media = InboundMedia("image", "image/png", sample_png())
    if kind == "text" and not 1 <= len(text) <= 4096:
        raise ValueError("text must be 1 to 4096 characters for a text message")
    if kind != "text" and text and kind not in CAPTIONED:
        raise ValueError(f"a {kind} message has no caption: leave text out")
    if kind in CAPTIONED and len(text) > 1024:
        raise ValueError("a caption is at most 1024 characters")
    user_id = doc.get("user_id")
    if user_id is not None and not (isinstance(user_id, str) and BSUID.fullmatch(user_id)):
        raise ValueError("user_id must be a business-scoped user id such as US.13491208655302741918, or null")
    sent_ago = doc.get("sent_ago", 0)
    if isinstance(sent_ago, bool) or not isinstance(sent_ago, int) or not 0 <= sent_ago <= 7 * 86400:
        raise ValueError("sent_ago must be whole seconds, 0 to 7 days")
    name = doc.get("name") or f"Client {wa_id[-4:]}"
    return Inbound(wa_id, str(name), str(doc.get("phone_number_id") or default_number), kind, text, user_id,
                   "user_id" in doc and user_id is None, media, sent_ago)


def _media(doc: Any) -> InboundMedia:
    if not isinstance(doc, dict):
        raise ValueError("media must be a JSON object")
    unknown = set(doc) - {"kind", "mime_type", "data_base64", "size", "id", "filename", "voice", "animated"}
    if unknown:
        raise ValueError(f"unknown media fields: {', '.join(sorted(unknown))}")
    kind, mime_type, reuse = doc.get("kind"), doc.get("mime_type"), doc.get("id")
    if kind not in KINDS:
        raise ValueError(f"media.kind must be one of {', '.join(KINDS)}")
    if reuse is not None:
        if not (isinstance(reuse, str) and reuse.isdigit()) or {"data_base64", "size", "mime_type"} & set(doc):
            raise ValueError("media.id (a media id's digits) goes without data_base64, size and mime_type")
    elif not isinstance(mime_type, str) or not MIME.fullmatch(mime_type):
        raise ValueError("media.mime_type must be a MIME type such as application/pdf")
    data = None if reuse is not None else _bytes(doc)
    filename, voice, animated = doc.get("filename"), doc.get("voice", False), doc.get("animated", False)
    if filename is not None and (kind != "document" or not isinstance(filename, str) or not 1 <= len(filename) <= 240):
        raise ValueError("media.filename (1 to 240 characters) goes with a document only")
    if not isinstance(voice, bool) or (voice and kind != "audio"):
        raise ValueError("media.voice (true or false) goes with audio only")
    if not isinstance(animated, bool) or (animated and kind != "sticker"):
        raise ValueError("media.animated (true or false) goes with a sticker only")
    return InboundMedia(kind, mime_type, data, filename, voice, animated, reuse)


def _bytes(doc: dict[str, Any]) -> bytes:
    if ("data_base64" in doc) == ("size" in doc):
        raise ValueError("media needs exactly one of data_base64 and size")
    if "size" in doc:
        size = doc["size"]
        if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= INBOUND_MAX:
            raise ValueError(f"media.size must be 1 to {INBOUND_MAX} bytes (Meta's inbound cap)")
        return os.urandom(size)
    try:
        data = base64.b64decode(doc["data_base64"], validate=True)
    except (TypeError, ValueError, binascii.Error):
        raise ValueError("media.data_base64 must be base64") from None
    if not 1 <= len(data) <= INBOUND_MAX:
        raise ValueError(f"media.data_base64 must hold 1 to {INBOUND_MAX} bytes (Meta's inbound cap)")
    return data


def media_object(media: InboundMedia, stored: Media, url: str, caption: str) -> dict[str, Any]:
    """The ``<kind>`` object of an inbound media message, as Meta's webhooks carry it (§4.1)."""
    obj: dict[str, Any] = {"mime_type": stored.mime_type, "sha256": stored.sha256, "id": stored.id, "url": url}
    if caption:
        obj["caption"] = caption
    if media.kind == "document" and media.filename is not None:
        obj["filename"] = media.filename
    if media.kind == "audio":
        obj["voice"] = media.voice
    if media.kind == "sticker":
        obj["animated"] = media.animated
    return obj
