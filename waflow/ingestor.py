"""Ingestor: consumes ``wa.incoming.raw``, produces ``wa.incoming.normalized`` and media jobs.

One webhook body in, one normalized event (``waflow.events``) out per update:
Meta batches up to 1000 updates per POST as ``entry[] x changes[] x
messages[]/statuses[]``, mixed. The body is stored verbatim for audit first.

- A body that is not a WhatsApp webhook at all (broken JSON, a foreign
  envelope) goes to the dead-letter queue at once with its reason; it is never
  retried and never blocks the queue.
- A single update inside a good envelope that cannot be read (a message with no
  id) is dead-lettered on its own; the rest of the batch goes on.
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
from typing import Any, Iterator

from pydantic import ValidationError

from waflow import limiter, queues
from waflow.db import insert, transaction
from waflow.events import (
    Context,
    ContactInfo,
    FieldUpdate,
    InboundMessage,
    MediaInfo,
    MetaError,
    NormalizedEvent,
    StatusUpdate,
    describe_validation_error,
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


@dataclass
class Batch:
    """What one webhook body splits into."""

    sha256: str
    events: list[NormalizedEvent] = field(default_factory=list)
    rejected: list[tuple[str, Any]] = field(default_factory=list)  # (reason, update)

    @property
    def media_jobs(self) -> list[dict[str, Any]]:
        return [media_job(e) for e in self.events if e.message is not None and e.message.media is not None]


# --- reading Meta's objects -------------------------------------------------------------------------------------


def _str(value: Any) -> str | None:
    if value is None or value == "":
        return None
    return value if isinstance(value, str) else str(value)


# Unix seconds a date can hold (up to 9999-12-31); anything else is not a real time.
MAX_TIMESTAMP = 253402300799


def _timestamp(obj: dict[str, Any]) -> int:
    raw = obj.get("timestamp")
    try:
        if isinstance(raw, bool):
            raise TypeError
        value = int(raw) if not isinstance(raw, str) or raw.isdigit() else int(float(raw))
    except (TypeError, ValueError, OverflowError):
        raise BadUpdate(f"timestamp {str(raw)[:32]!r} is not Unix seconds") from None
    if not 0 <= value <= MAX_TIMESTAMP:
        raise BadUpdate(f"timestamp {value} is out of range")
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


def _contact(value: dict[str, Any], wa_id: str | None, user_id: str | None) -> ContactInfo | None:
    """The contact entry that belongs to this sender (``contacts[]`` is absent for some updates)."""
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
    card = card or {}
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
        try:
            content["response"] = json.loads(reply["response_json"])
        except ValueError:
            content["response"] = None
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
        raise BadUpdate("message is not an object")
    wamid = _str(msg.get("id"))
    mtype = _str(msg.get("type"))
    if not wamid:
        raise BadUpdate("message has no id")
    if not mtype:
        raise BadUpdate(f"message {wamid} has no type")
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
        raise BadUpdate(f"message {wamid} names no sender (no from, from_user_id or contacts[])")
    return NormalizedEvent(event_id=f"message:{wamid}", kind="message", contact=contact, message=message, **base)


def _status_event(base: dict[str, Any], value: dict[str, Any], st: Any) -> NormalizedEvent:
    if not isinstance(st, dict):
        raise BadUpdate("status is not an object")
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


def _updates(base: dict[str, Any], value: Any, position: str, entry_time: int | None) -> Iterator[tuple[Any, Any]]:
    """Yield (update, builder) pairs for one ``changes[]`` entry; a builder raises BadUpdate."""
    if base["field"] == "messages" and isinstance(value, dict):
        lists = [(k, value.get(k)) for k in ("messages", "statuses", "errors") if value.get(k) is not None]
        for key, found in lists:
            if not isinstance(found, list):
                yield {key: found}, lambda k=key: _not_a_list(k)
                continue
            for i, item in enumerate(found):
                if key == "messages":
                    yield item, lambda m=item: _message_event(base, value, m)
                elif key == "statuses":
                    yield item, lambda st=item: _status_event(base, value, st)
                else:
                    yield item, lambda e=item, n=i: _error_event(base, e, f"{position}.{n}")
        if not any(value.get(k) for k in ("messages", "statuses", "errors")):
            yield value, lambda: _field_event(base, value, entry_time)
        return
    yield value, lambda: _field_event(base, value, entry_time)


def _not_a_list(key: str) -> NormalizedEvent:
    raise BadUpdate(f"value.{key} is not a list")


def _error_event(base: dict[str, Any], err: Any, position: str) -> NormalizedEvent:
    if not isinstance(err, dict):
        raise BadUpdate("errors[] entry is not an object")
    # Payload-level errors carry no id: the payload and the position name them, so a
    # redelivered body dedupes and the same error sent again later is kept again.
    event_id = f"error:{base['payload_sha256'][:32]}:{position}"
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
    if not isinstance(doc, dict):
        raise NotAWebhook(f"body is a JSON {type(doc).__name__}, not an object")
    if b"\\ud" in raw or b"\\uD" in raw or b"\\u0000" in raw:
        doc = _storable(doc)
    if doc.get("object") != "whatsapp_business_account":
        raise NotAWebhook(f"object is {str(doc.get('object'))[:64]!r}, not 'whatsapp_business_account'")
    entries = doc.get("entry")
    if not isinstance(entries, list) or not entries:
        raise NotAWebhook("entry is missing or not a non-empty list")
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("changes"), list):
            raise NotAWebhook(f"entry[{i}] has no changes list")
    return doc


def _storable(node: Any) -> Any:
    """Replace what no database text column takes, escaped UTF-16 halves that pair with nothing and
    NUL characters, by U+FFFD. The body itself is kept byte for byte in ``webhook_payloads``."""
    if isinstance(node, str):
        return node.encode("utf-16", "surrogatepass").decode("utf-16", "replace").replace("\x00", "\ufffd")
    if isinstance(node, list):
        return [_storable(v) for v in node]
    if isinstance(node, dict):
        return {_storable(k): _storable(v) for k, v in node.items()}
    return node


def split_webhook(raw: bytes, received_at: float) -> Batch:
    """Split one webhook body into normalized events; unreadable updates are set aside."""
    doc = parse_envelope(raw)
    batch = Batch(sha256=hashlib.sha256(raw).hexdigest())
    for e, entry in enumerate(doc["entry"]):
        entry_time = entry.get("time") if isinstance(entry.get("time"), int) else None
        for c, change in enumerate(entry["changes"]):
            if not isinstance(change, dict) or not isinstance(change.get("field"), str):
                batch.rejected.append((f"entry[{e}].changes[{c}] has no field", change))
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
            for update, build in _updates(base, value, f"{e}.{c}", entry_time):
                try:
                    batch.events.append(build())
                except (BadUpdate, ValidationError) as exc:
                    batch.rejected.append((_reason(exc), update))
                except (TypeError, ValueError, AttributeError, KeyError) as exc:
                    # A shape no rule above foresaw: set this update aside with a reason, keep the rest.
                    logger.exception("ingest_raw: unforeseen update shape in payload %s", batch.sha256[:12])
                    batch.rejected.append((f"unreadable update: {type(exc).__name__}: {exc}", update))
    return batch


def _reason(exc: Exception) -> str:
    return describe_validation_error(exc) if isinstance(exc, ValidationError) else str(exc)


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
def ingest_raw(body: str, received_at: float) -> int:
    """Split one raw webhook into normalized events and media jobs; return how many events."""
    # The gateway sent the bytes as text with undecodable bytes escaped; this restores them exactly.
    raw = body.encode("utf-8", "surrogateescape")
    try:
        batch = split_webhook(raw, received_at)
    except NotAWebhook as exc:
        logger.warning("ingest_raw: not a WhatsApp webhook (%s), dead-lettered", exc)
        records.publish(celery_app, records.input_record(
            task=ingest_raw.name, task_id=ingest_raw.request.id, queue=queues.INCOMING_RAW, reason=str(exc),
            error_type="NotAWebhook", args=[body, received_at], received_at=received_at))
        return 0
    with transaction() as conn:
        store_payload(conn, raw, batch.sha256, received_at)
    for event in batch.events:
        dispatch(NORMALIZED_TASK, (event.model_dump(mode="json", exclude_none=True),))
    for job in batch.media_jobs:
        dispatch(MEDIA_TASK, (job,))
    _debit_inbound(batch)
    for n, (reason, update) in enumerate(batch.rejected):
        # Replaying the record re-ingests the whole body: what was stored stays stored once.
        logger.warning("ingest_raw: payload %s: unreadable update (%s), dead-lettered", batch.sha256[:12], reason)
        records.publish(celery_app, records.input_record(
            task=ingest_raw.name, task_id=ingest_raw.request.id, queue=queues.INCOMING_RAW, reason=reason,
            error_type="BadUpdate", args=[body, received_at], received_at=received_at, position=f"update-{n}",
            detail=json.dumps(update, ensure_ascii=False, default=str)))
    return len(batch.events)
