"""Splitting a webhook: one body into one normalized event per update, and the updates set aside.

Meta batches up to 1000 updates per POST as ``entry[] x changes[] x messages[]/statuses[]``, mixed.
Whatever one update raises belongs to that update alone: it is set aside (``Rejected``) with a
webhook of its own, and the rest of the batch goes on.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, NamedTuple

from pydantic import ValidationError

from waflow.events import (
    MAX_DEPTH,
    FieldUpdate,
    InboundMessage,
    NormalizedEvent,
    StatusUpdate,
    describe_validation_error,
    nesting_exceeds,
)
from waflow.ingestor.reading import (BadUpdate, NotAWebhook, _card, _contact, _context, _error, _errors, _str,  # noqa: F401
                                     _timestamp, _type_content, shape)

logger = logging.getLogger(__name__)


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

