"""Ingestor: consumes ``wa.incoming.raw``, produces ``wa.incoming.normalized`` and media jobs.

One webhook body in, one normalized event (``waflow.events``) out per update:
Meta batches up to 1000 updates per POST as ``entry[] x changes[] x
messages[]/statuses[]``, mixed. The body is stored verbatim for audit first.

- A body that is not a WhatsApp webhook at all (broken JSON, a foreign
  envelope) goes to the dead-letter queue at once with its reason; it is never
  retried and never blocks the queue.
- A single update inside a good envelope that cannot be read (a message with no
  id, an id too long, a value nested too deep), or that raises anything at all,
  is dead-lettered on its own; the rest of the batch goes on. Its record holds
  that update in a webhook of its own (its entry, change and metadata), its
  position and the key of the stored body, so a replay re-ingests that update
  alone, and a replay that fails again updates the same record.
- Reasons, logs and dead-letter messages name positions, types and sizes, never
  what the body says.
- A message type waflow does not know is kept as a message with its raw object.
- Any other webhook field (account, templates, calls, ...) becomes a ``field``
  event and is stored, not dropped.

Design: ``../shared/seed/event-bus-async-workflow.en.md`` section 3.1.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterator, NamedTuple

from pydantic import ValidationError

from waflow import limiter, queues
from waflow.db import insert, transaction
from waflow.events import (
    MAX_DEPTH,
    Context,
    ContactInfo,
    FieldUpdate,
    InboundMessage,
    MediaInfo,
    MetaError,
    NormalizedEvent,
    StatusUpdate,
    describe_validation_error,
    nesting_exceeds,
)
from waflow.models import WebhookPayload
from waflow.dlq import records
from waflow.tasks import celery_app, dispatch, stage_task

logger = logging.getLogger(__name__)

MEDIA_TYPES = ("image", "video", "audio", "document", "sticker")


class NotAWebhook(ValueError):
    """The body is not a WhatsApp Business Account webhook; the message says why."""


class BadUpdate(ValueError):
    """One update inside a good envelope cannot be read; the message says why."""


@dataclass(frozen=True)
class Position:
    """Where an update sits in its body: ``entry[0].changes[1].messages[3]``. ``key`` and ``index``
    are None for a whole change; ``index`` is None for a list that is not a list."""

    entry: int
    change: int
    key: str | None = None
    index: int | None = None

    def __str__(self) -> str:
        where = f"entry[{self.entry}].changes[{self.change}]"
        if self.key is not None:
            where += f".{self.key}" + (f"[{self.index}]" if self.index is not None else "")
        return where

    def to_json(self) -> dict[str, Any]:
        return {"entry": self.entry, "change": self.change, "key": self.key, "index": self.index}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> "Position":
        return cls(int(doc["entry"]), int(doc["change"]), doc.get("key"), doc.get("index"))


class Origin(NamedTuple):
    """Where the single update of a replayed dead letter came from: the stored body and its position."""

    payload_sha256: str
    position: Position


class Rejected(NamedTuple):
    """One update set aside: why (no client content), the update, where it was, and a webhook that
    holds it alone (its entry, change and metadata)."""

    reason: str
    update: Any
    position: Position
    envelope: dict[str, Any]


@dataclass
class Batch:
    """What one webhook body splits into."""

    sha256: str
    events: list[NormalizedEvent] = field(default_factory=list)
    # Each event in the form core receives, in the same order (dumped here, so an event that cannot
    # be dumped is set aside like any other bad update).
    wire: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)

    @property
    def media_jobs(self) -> list[dict[str, Any]]:
        return [media_job(e) for e in self.events if e.message is not None and e.message.media is not None]


# --- reading Meta's objects -------------------------------------------------------------------------------------


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


# --- splitting a webhook ---------------------------------------------------------------------------------------


def _message_event(base: dict[str, Any], value: dict[str, Any], msg: Any) -> NormalizedEvent:
    if not isinstance(msg, dict):
        raise BadUpdate(f"message is not an object ({shape(msg)})")
    wamid = _str(msg.get("id"))
    mtype = _str(msg.get("type"))
    if not wamid:
        raise BadUpdate("message has no id")
    if not mtype:
        raise BadUpdate("message has no type")
    text, media, content = _type_content(mtype, msg)
    message = InboundMessage(
        wamid=wamid,
        type=mtype,
        timestamp=_timestamp(msg),
        text=text,
        media=media,
        context=_context(msg),
        referral=msg.get("referral") if isinstance(msg.get("referral"), dict) else None,
        errors=_errors(msg),
        content=content,
        raw=msg,
    )
    contact = _contact(value, _str(msg.get("from")), _str(msg.get("from_user_id")))
    if contact is None:
        raise BadUpdate("message names no sender (no from, from_user_id or contacts[])")
    return NormalizedEvent(event_id=f"message:{wamid}", kind="message", contact=contact, message=message, **base)


def _status_event(base: dict[str, Any], value: dict[str, Any], st: Any) -> NormalizedEvent:
    if not isinstance(st, dict):
        raise BadUpdate(f"status is not an object ({shape(st)})")
    wamid, status = _str(st.get("id")), _str(st.get("status"))
    if not wamid or not status:
        raise BadUpdate("status has no id or no status")
    update = StatusUpdate(
        wamid=wamid,
        status=status.lower(),
        timestamp=_timestamp(st),
        recipient_id=_str(st.get("recipient_id")),
        recipient_user_id=_str(st.get("recipient_user_id")),
        recipient_type=_str(st.get("recipient_type")),
        biz_opaque_callback_data=_str(st.get("biz_opaque_callback_data")),
        conversation=st.get("conversation") if isinstance(st.get("conversation"), dict) else None,
        pricing=st.get("pricing") if isinstance(st.get("pricing"), dict) else None,
        errors=_errors(st),
        raw=st,
    )
    return NormalizedEvent(event_id=f"status:{wamid}:{update.status}", kind="status", status=update, **base)


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


LISTS = ("messages", "statuses", "errors")


def _updates(base: dict[str, Any], value: Any, e: int, c: int,
             entry_time: int | None) -> Iterator[tuple[Position, Any, Callable[[Position], NormalizedEvent]]]:
    """Yield (position, update, builder) for one ``changes[]`` entry; a builder takes the position the
    update is known by (its own, or on a replay the one it had in its original body)."""
    if base["field"] == "messages" and isinstance(value, dict):
        for key in LISTS:
            found = value.get(key)
            if found is None:
                continue
            if not isinstance(found, list):
                yield Position(e, c, key), found, lambda _p, k=key, f=found: _not_a_list(k, f)
                continue
            for i, item in enumerate(found):
                if key == "messages":
                    yield Position(e, c, key, i), item, lambda _p, m=item: _message_event(base, value, m)
                elif key == "statuses":
                    yield Position(e, c, key, i), item, lambda _p, st=item: _status_event(base, value, st)
                else:
                    yield Position(e, c, key, i), item, lambda p, err=item: _error_event(base, err, p)
        # A messages change that carries no update (only metadata, say) is kept as a field event; one
        # whose list is not a list has that set aside, and is nothing more.
        if not any(value.get(k) or (value.get(k) is not None and not isinstance(value[k], list)) for k in LISTS):
            yield Position(e, c), value, lambda _p: _field_event(base, value, entry_time)
        return
    yield Position(e, c), value, lambda _p: _field_event(base, value, entry_time)


def _not_a_list(key: str, found: Any) -> NormalizedEvent:
    raise BadUpdate(f"value.{key} is not a list ({shape(found)})")


def _error_event(base: dict[str, Any], err: Any, position: Position) -> NormalizedEvent:
    if not isinstance(err, dict):
        raise BadUpdate(f"errors[] entry is not an object ({shape(err)})")
    # Payload-level errors carry no id: the payload and the position name them, so a
    # redelivered body dedupes and the same error sent again later is kept again.
    event_id = f"error:{base['payload_sha256'][:32]}:{position.entry}.{position.change}.{position.index}"
    return NormalizedEvent(event_id=event_id, kind="error", error=_error(err), **base)


def _field_event(base: dict[str, Any], value: Any, entry_time: int | None) -> NormalizedEvent:
    update = FieldUpdate(field=base["field"], value=value, entry_time=entry_time)
    return NormalizedEvent(
        event_id=f"field:{base['field']}:{_digest(base['waba_id'], entry_time, value)}", kind="field",
        update=update, **base,
    )


def parse_envelope(raw: bytes) -> dict[str, Any]:
    """Decode the body and check it is a WhatsApp Business Account webhook."""
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise NotAWebhook(f"body is not JSON: {type(exc).__name__} at {getattr(exc, 'pos', '?')}") from None
    except RecursionError:
        raise NotAWebhook("body is JSON nested too deeply to read") from None
    if not isinstance(doc, dict):
        raise NotAWebhook(f"body is a JSON {type(doc).__name__}, not an object")
    if b"\\ud" in raw or b"\\uD" in raw or b"\\u0000" in raw:
        doc = _storable(doc)
    if doc.get("object") != "whatsapp_business_account":
        raise NotAWebhook(f"object is not 'whatsapp_business_account' ({shape(doc.get('object'))})")
    entries = doc.get("entry")
    if not isinstance(entries, list) or not entries:
        raise NotAWebhook("entry is missing or not a non-empty list")
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("changes"), list):
            raise NotAWebhook(f"entry[{i}] has no changes list")
    return doc


def _storable(doc: dict[str, Any]) -> dict[str, Any]:
    """Replace what no database text column takes, escaped UTF-16 halves that pair with nothing and
    NUL characters, by U+FFFD, in place. The body itself is kept byte for byte in ``webhook_payloads``.
    Iterative: a body nested as deep as the JSON decoder reads is no RecursionError here."""
    stack: list[Any] = [doc]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key in list(node):
                value = node.pop(key)
                node[_clean(key)] = _clean(value) if isinstance(value, str) else value
                if isinstance(value, (dict, list)):
                    stack.append(value)
        elif isinstance(node, list):
            for i, value in enumerate(node):
                if isinstance(value, str):
                    node[i] = _clean(value)
                elif isinstance(value, (dict, list)):
                    stack.append(value)
    return doc


def _clean(text: str) -> str:
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace").replace("\x00", "\ufffd")


def split_webhook(raw: bytes, received_at: float, origin: Origin | None = None) -> Batch:
    """Split one webhook body into normalized events; unreadable updates are set aside.

    Whatever one update raises (a missing id, a value nested too deep, an error no rule foresaw,
    a RecursionError) sets that update aside alone. ``origin``: the body is a dead letter's
    one-update webhook, replayed; its update keeps the payload and position it had at first."""
    doc = parse_envelope(raw)
    batch = Batch(sha256=origin.payload_sha256 if origin else hashlib.sha256(raw).hexdigest())
    for e, entry in enumerate(doc["entry"]):
        entry_time = entry.get("time") if isinstance(entry.get("time"), int) else None
        for c, change in enumerate(entry["changes"]):
            if not isinstance(change, dict) or not isinstance(change.get("field"), str):
                at = origin.position if origin else Position(e, c)
                alone = _envelope(entry, change, Position(e, c))
                batch.rejected.append(Rejected("change has no field", change, at, alone))
                continue
            value = change.get("value")
            metadata = value.get("metadata") if isinstance(value, dict) else None
            metadata = metadata if isinstance(metadata, dict) else {}
            base = {
                "field": change["field"],
                "waba_id": _str(entry.get("id")),
                "phone_number_id": _str(metadata.get("phone_number_id")),
                "display_phone_number": _str(metadata.get("display_phone_number")),
                "received_at": received_at,
                "payload_sha256": batch.sha256,
            }
            for position, update, build in _updates(base, value, e, c, entry_time):
                at = origin.position if origin else position
                try:
                    if nesting_exceeds(update, MAX_DEPTH):
                        raise BadUpdate(f"nested more than {MAX_DEPTH} levels deep")
                    event = build(at)
                    wire = event.model_dump(mode="json", exclude_none=True)
                except Exception as exc:  # noqa: BLE001 - whatever it is, it belongs to this update alone
                    reason = _reason(exc)
                    if not isinstance(exc, (BadUpdate, ValidationError)):
                        logger.warning("ingest_raw: payload %s: %s raised %s", batch.sha256[:12], at,
                                       type(exc).__name__)
                    batch.rejected.append(Rejected(reason, update, at, _envelope(entry, change, position, update)))
                    continue
                batch.events.append(event)
                batch.wire.append(wire)
    return batch


def _reason(exc: Exception) -> str:
    """Why an update was set aside, in words that quote nothing of it."""
    if isinstance(exc, ValidationError):
        return describe_validation_error(exc)
    if isinstance(exc, BadUpdate):
        return str(exc)
    return f"unreadable update ({type(exc).__name__})"  # a shape no rule foresaw: its text may quote it


def _envelope(entry: dict[str, Any], change: Any, position: Position, update: Any = None) -> dict[str, Any]:
    """A webhook that holds one update alone, with what reading it needs: its entry's id and time,
    its change's field and the value's metadata and, for a message, its sender's card."""
    head = {k: v for k, v in entry.items() if k != "changes"}
    if position.key is not None and isinstance(change, dict) and isinstance(change.get("value"), dict):
        value = change["value"]
        kept = {k: v for k, v in value.items() if k not in (*LISTS, "contacts")}
        if position.key == "messages" and isinstance(update, dict):
            card = _card(value, _str(update.get("from")), _str(update.get("from_user_id")))
            if card is not None:
                kept["contacts"] = [card]
        kept[position.key] = update if position.index is None else [update]
        change = {**{k: v for k, v in change.items() if k != "value"}, "value": kept}
    return {"object": "whatsapp_business_account", "entry": [{**head, "changes": [change]}]}


def media_job(event: NormalizedEvent) -> dict[str, Any]:
    """The job the media stage receives for one media message."""
    assert event.message is not None and event.message.media is not None
    media = event.message.media
    return {
        "event_id": f"media:{media.id}",
        "media_id": media.id,
        "wamid": event.message.wamid,
        "phone_number_id": event.phone_number_id,
        "kind": media.kind,
        "mime_type": media.mime_type,
        "sha256": media.sha256,
        "filename": media.filename,
        "url": media.url,
    }


def store_payload(conn: Any, raw: bytes, sha256: str, received_at: float) -> None:
    """Keep the body verbatim for audit; a redelivered body is stored once."""
    stmt = insert(conn.dialect.name, WebhookPayload).values(
        sha256=sha256,
        body=raw,
        size=len(raw),
        received_at=datetime.fromtimestamp(received_at, timezone.utc),
    )
    conn.execute(stmt.on_conflict_do_nothing(index_elements=["sha256"]))


def _debit_inbound(batch: Batch) -> None:
    """Meta counts inbound messages against the number's throughput too: take them out of the
    send limiter's budget. Best effort: inbound work never waits on, or fails for, the limiter."""
    per_number: dict[str, int] = {}
    for event in batch.events:
        if event.kind == "message" and event.phone_number_id:
            per_number[event.phone_number_id] = per_number.get(event.phone_number_id, 0) + 1
    for number, n in per_number.items():
        try:
            limiter.default_store().debit(number, n)
        except Exception as exc:  # noqa: BLE001 - the limiter is advisory here
            logger.warning("ingest_raw: inbound not debited from the send budget (%s)", type(exc).__name__)


# --- the task --------------------------------------------------------------------------------------------------

# The next stages, by wire name (waflow/stages.py routes them): core persists, media downloads.
NORMALIZED_TASK = "waflow.core.handle_normalized"
MEDIA_TASK = "waflow.media.record_media"


@stage_task(name="waflow.ingestor.ingest_raw", queue=queues.INCOMING_RAW)
def ingest_raw(body: str, received_at: float, payload_sha256: str | None = None,
               position: dict[str, Any] | None = None) -> int:
    """Split one raw webhook into normalized events and media jobs; return how many events.

    ``payload_sha256`` and ``position``: ``body`` is the one-update webhook of a dead letter being
    replayed, cut from the body stored under that key (which is not stored again)."""
    # The gateway sent the bytes as text with undecodable bytes escaped; this restores them exactly.
    raw = body.encode("utf-8", "surrogateescape")
    origin = Origin(payload_sha256, Position.from_json(position)) if payload_sha256 and position else None
    try:
        batch = split_webhook(raw, received_at, origin)
    except NotAWebhook as exc:
        logger.warning("ingest_raw: not a WhatsApp webhook (%s), dead-lettered", exc)
        records.publish(celery_app, records.input_record(
            task=ingest_raw.name, task_id=ingest_raw.request.id, queue=queues.INCOMING_RAW, reason=str(exc),
            error_type="NotAWebhook", args=[body, received_at], received_at=received_at,
            key=f"body:{hashlib.sha256(raw).hexdigest()}"))
        return 0
    if origin is None:
        with transaction() as conn:
            store_payload(conn, raw, batch.sha256, received_at)
    for wire in batch.wire:
        dispatch(NORMALIZED_TASK, (wire,))
    for job in batch.media_jobs:
        dispatch(MEDIA_TASK, (job,))
    _debit_inbound(batch)
    for rejected in batch.rejected:
        logger.warning("ingest_raw: payload %s: %s set aside (%s), dead-lettered", batch.sha256[:12],
                       rejected.position, rejected.reason)
        records.publish(celery_app, rejected_record(rejected, batch.sha256, received_at, ingest_raw.request.id))
    return len(batch.events)


def rejected_record(rejected: Rejected, payload_sha256: str, received_at: float,
                    task_id: str | None) -> dict[str, Any]:
    """The dead-letter record of one update set aside: the update in a webhook of its own, replayed
    with its origin (the stored body's key and its position there), keyed by that origin so that
    setting it aside again updates this record."""
    where = f"{rejected.position} of the body stored in webhook_payloads as {payload_sha256}"
    try:
        args: list[Any] | None = [json.dumps(rejected.envelope, ensure_ascii=False, separators=(",", ":")),
                                  received_at]
        kwargs = {"payload_sha256": payload_sha256, "position": rejected.position.to_json()}
    except (TypeError, ValueError, RecursionError):
        # Nested past what the JSON encoder writes: not replayable; the stored body still has it.
        args, kwargs, where = None, {}, where + " (too deeply nested to copy here)"
    return records.input_record(
        task=ingest_raw.name, task_id=task_id, queue=queues.INCOMING_RAW, error_type="BadUpdate",
        reason=f"{rejected.position}: {rejected.reason}", args=args, kwargs=kwargs, received_at=received_at,
        key=f"update:{payload_sha256}:{rejected.position}", detail=where)
