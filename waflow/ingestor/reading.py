"""Reading Meta's objects: one message, status or error object of a webhook into the parts of a
normalized event (``waflow.events``). Values are checked for their shape; a client's words are never
quoted in a reason."""
from __future__ import annotations

import json
from typing import Any

from waflow.events import MAX_DEPTH, Context, ContactInfo, MediaInfo, MetaError, nesting_exceeds

MEDIA_TYPES = ("image", "video", "audio", "document", "sticker")


class NotAWebhook(ValueError):
    """The body is not a WhatsApp Business Account webhook; the message says why."""


class BadUpdate(ValueError):
    """One update inside a good envelope cannot be read; the message says why."""


def _str(value: Any) -> str | None:
    """A scalar as text; None for nothing, an empty string, or an object or a list (no text at all, and
    one nested deep enough would be a RecursionError in ``str``, outside any one update)."""
    if value is None or value == "" or isinstance(value, (dict, list)):
        return None
    return value if isinstance(value, str) else str(value)


# Unix seconds a date can hold (up to 9999-12-31); anything else is not a real time.
MAX_TIMESTAMP = 253402300799


def shape(value: Any) -> str:
    """What a value is, without what it says: ``a string of 12 characters``, ``an object``."""
    if isinstance(value, str):
        return f"a string of {len(value)} characters"
    kinds = {dict: "an object", list: "a list", bool: "a boolean", int: "an integer", float: "a number"}
    return "absent" if value is None else kinds.get(type(value), f"a {type(value).__name__}")


def _timestamp(obj: dict[str, Any]) -> int:
    raw = obj.get("timestamp")
    try:
        if isinstance(raw, bool):
            raise TypeError
        value = int(raw) if not isinstance(raw, str) or raw.isdigit() else int(float(raw))
    except (TypeError, ValueError, OverflowError):
        raise BadUpdate(f"timestamp is not Unix seconds ({shape(raw)})") from None
    if not 0 <= value <= MAX_TIMESTAMP:
        raise BadUpdate(f"timestamp is out of range (0 to {MAX_TIMESTAMP})")
    return value


def _errors(obj: dict[str, Any]) -> list[MetaError]:
    found = obj.get("errors")
    if not isinstance(found, list):
        return []
    return [_error(e) for e in found if isinstance(e, dict)]


def _error(e: dict[str, Any]) -> MetaError:
    code = e.get("code")
    details = e.get("error_data", {}).get("details") if isinstance(e.get("error_data"), dict) else None
    return MetaError(
        code=code if isinstance(code, int) else None,
        title=_str(e.get("title")),
        message=_str(e.get("message")),
        details=_str(details),
        href=_str(e.get("href")),
    )


def _card(value: Any, wa_id: str | None, user_id: str | None) -> dict[str, Any] | None:
    """The ``contacts[]`` card that belongs to this sender, if any (absent for some updates)."""
    found = value.get("contacts") if isinstance(value, dict) else None
    cards = [c for c in found if isinstance(c, dict)] if isinstance(found, list) else []
    card = next((c for c in cards if wa_id and c.get("wa_id") == wa_id), None)
    card = card or next((c for c in cards if user_id and c.get("user_id") == user_id), None)
    messages = value.get("messages") if isinstance(value, dict) else None
    only_sender = isinstance(messages, list) and len(messages) == 1
    if card is None and len(cards) == 1 and (only_sender or not _contradicts(cards[0], wa_id, user_id)):
        # One message, one card: the card is the sender's, even when its wa_id differs from `from`
        # (Brazil's ninth digit); Meta's reference says to trust contacts[].wa_id.
        card = cards[0]
    return card


def _contact(value: dict[str, Any], wa_id: str | None, user_id: str | None) -> ContactInfo | None:
    """The sender, from the message's ids and its card."""
    card = _card(value, wa_id, user_id) or {}
    profile = card.get("profile") if isinstance(card.get("profile"), dict) else {}
    info = ContactInfo(
        wa_id=_str(card.get("wa_id")) or wa_id,
        user_id=user_id or _str(card.get("user_id")),
        parent_user_id=_str(card.get("parent_user_id")),
        name=_str(profile.get("name")),
        username=_str(profile.get("username")),
    )
    return info if (info.wa_id or info.user_id) else None


def _contradicts(card: dict[str, Any], wa_id: str | None, user_id: str | None) -> bool:
    """True if the card names another person than the message's sender."""
    return bool((wa_id and card.get("wa_id") and card.get("wa_id") != wa_id)
                or (user_id and card.get("user_id") and card.get("user_id") != user_id))


def _media(kind: str, obj: Any) -> MediaInfo | None:
    if not isinstance(obj, dict) or not obj.get("id"):
        return None
    return MediaInfo(
        id=str(obj["id"]),
        kind=kind,
        mime_type=_str(obj.get("mime_type")),
        sha256=_str(obj.get("sha256")),
        url=_str(obj.get("url") or obj.get("link")),
        filename=_str(obj.get("filename")),
        caption=_str(obj.get("caption")),
        voice=obj.get("voice") if isinstance(obj.get("voice"), bool) else None,
        animated=obj.get("animated") if isinstance(obj.get("animated"), bool) else None,
    )


def _context(msg: dict[str, Any]) -> Context | None:
    ctx = msg.get("context")
    if not isinstance(ctx, dict):
        return None
    product = ctx.get("referred_product")
    return Context(
        quoted_wamid=_str(ctx.get("id")),
        quoted_from=_str(ctx.get("from")),
        forwarded=bool(ctx.get("forwarded")),
        frequently_forwarded=bool(ctx.get("frequently_forwarded")),
        referred_product=product if isinstance(product, dict) else None,
    )


def _interactive(obj: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    kind = _str(obj.get("type"))
    reply = obj.get(kind) if kind and isinstance(obj.get(kind), dict) else {}
    content: dict[str, Any] = {"type": kind, **reply}
    if kind == "nfm_reply" and isinstance(reply.get("response_json"), str):
        # A Flow's answer, parsed when it is JSON of a sane depth; raw keeps the string either way.
        try:
            response = json.loads(reply["response_json"])
        except (ValueError, RecursionError):
            response = None
        content["response"] = None if nesting_exceeds(response, MAX_DEPTH - 2) else response
        return _str(reply.get("body")), content
    return _str(reply.get("title")) or _str(reply.get("body")), content


def _location_text(loc: dict[str, Any]) -> str | None:
    parts = [p for p in (_str(loc.get("name")), _str(loc.get("address"))) if p]
    return ", ".join(parts) or None


def _type_content(mtype: str, msg: dict[str, Any]) -> tuple[str | None, MediaInfo | None, dict[str, Any]]:
    """Return (plain text, media, normalized content) for one message type."""
    obj = msg.get(mtype)
    if mtype == "text" and isinstance(obj, dict):
        return _str(obj.get("body")), None, {"body": obj.get("body")}
    if mtype in MEDIA_TYPES:
        media = _media(mtype, obj)
        return (media.caption if media else None), media, dict(obj) if isinstance(obj, dict) else {}
    if mtype == "reaction" and isinstance(obj, dict):
        emoji = _str(obj.get("emoji"))
        return emoji, None, {"message_id": _str(obj.get("message_id")), "emoji": emoji, "removed": emoji is None}
    if mtype == "location" and isinstance(obj, dict):
        return _location_text(obj), None, dict(obj)
    if mtype == "contacts" and isinstance(obj, list):
        names = [c["name"].get("formatted_name") for c in obj if isinstance(c, dict) and isinstance(c.get("name"), dict)]
        return ", ".join(n for n in names if isinstance(n, str) and n) or None, None, {"contacts": obj}
    if mtype == "interactive" and isinstance(obj, dict):
        text, content = _interactive(obj)
        return text, None, content
    if mtype == "button" and isinstance(obj, dict):
        return _str(obj.get("text")), None, dict(obj)
    if mtype == "order" and isinstance(obj, dict):
        return _str(obj.get("text")), None, dict(obj)
    if mtype == "system" and isinstance(obj, dict):
        return _str(obj.get("body")), None, dict(obj)
    if mtype in ("unsupported", "unknown"):
        inner = obj.get("type") if isinstance(obj, dict) else None
        return None, None, {"unsupported_type": _str(inner)}
    if mtype == "revoke" and isinstance(obj, dict):
        return None, None, {"original_message_id": _str(obj.get("original_message_id"))}
    if mtype == "edit" and isinstance(obj, dict):
        inner = obj.get("message") if isinstance(obj.get("message"), dict) else {}
        inner_type = _str(inner.get("type")) or ""
        text, media, content = _type_content(inner_type, inner) if inner_type else (None, None, {})
        return text, media, {"original_message_id": _str(obj.get("original_message_id")), "type": inner_type,
                             "content": content}
    # A type waflow does not know yet: keep its object as it came (raw has it too).
    return None, None, {mtype: obj} if obj is not None else {}


