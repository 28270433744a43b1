"""The normalized event: what ``wa.incoming.normalized`` carries, one per update.

The ingestor builds these from Meta's webhook and the core stage validates them
on arrival, so both ends hold to one schema (pydantic). ``docs/events.md``
describes it field by field; ``python -m waflow.events`` prints its JSON Schema.

Every event has a deterministic ``event_id`` (``message:<wamid>``,
``status:<wamid>:<status>``, ...), so redelivered webhooks produce the same ids.
Nothing Meta sent is dropped: each message and status keeps its ``raw`` object,
and a type waflow does not know yet is still a message.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

SCHEMA_VERSION = 1


class _Model(BaseModel):
    # Unknown fields are ignored, not refused: during a rolling deploy an older core worker
    # must still read events from a newer ingestor.
    model_config = ConfigDict(extra="ignore", frozen=True)


class InvalidEvent(ValueError):
    """An event that does not fit the schema; the message names the fields, never their values."""

    @classmethod
    def from_validation(cls, exc: ValidationError) -> "InvalidEvent":
        return cls(describe_validation_error(exc))


def describe_validation_error(exc: ValidationError) -> str:
    """Where and why validation failed, without the input values (they may be a client's text)."""
    problems = [f"{'.'.join(str(p) for p in e['loc']) or '(event)'}: {e['msg']}" for e in exc.errors()[:5]]
    more = f" (and {exc.error_count() - 5} more)" if exc.error_count() > 5 else ""
    return "invalid " + "; ".join(problems) + more


class MetaError(_Model):
    """One entry of an ``errors`` array (message, status or payload level)."""

    code: int | None = None
    title: str | None = None
    message: str | None = None
    details: str | None = None
    href: str | None = None


class ContactInfo(_Model):
    """The user behind a message: phone-based ``wa_id``, business-scoped ``user_id``, or both."""

    wa_id: str | None = None
    user_id: str | None = None
    parent_user_id: str | None = None
    name: str | None = None
    username: str | None = None


class MediaInfo(_Model):
    """An attachment to download later (the media stage)."""

    id: str
    kind: str  # image | video | audio | document | sticker
    mime_type: str | None = None
    sha256: str | None = None
    url: str | None = None
    filename: str | None = None
    caption: str | None = None
    voice: bool | None = None
    animated: bool | None = None


class Context(_Model):
    """Reply-to, forwarding and product-inquiry context of a message."""

    quoted_wamid: str | None = None
    quoted_from: str | None = None
    forwarded: bool = False
    frequently_forwarded: bool = False
    referred_product: dict[str, Any] | None = None


class InboundMessage(_Model):
    wamid: str
    type: str
    timestamp: int
    # Plain text a person would read: the text, caption, chosen button title, emoji...
    text: str | None = None
    media: MediaInfo | None = None
    context: Context | None = None
    referral: dict[str, Any] | None = None
    errors: list[MetaError] = Field(default_factory=list)
    # Type-specific fields, normalized (see docs/events.md).
    content: dict[str, Any] = Field(default_factory=dict)
    # The message object exactly as Meta sent it.
    raw: dict[str, Any]


class StatusUpdate(_Model):
    wamid: str
    status: str
    timestamp: int
    recipient_id: str | None = None
    recipient_user_id: str | None = None
    recipient_type: str | None = None
    biz_opaque_callback_data: str | None = None
    conversation: dict[str, Any] | None = None
    pricing: dict[str, Any] | None = None
    errors: list[MetaError] = Field(default_factory=list)
    raw: dict[str, Any]


class FieldUpdate(_Model):
    """Any change waflow does not split further: account, template, calls, echoes..."""

    field: str
    value: Any = None  # absent in some changes; a dump without None values must round-trip
    # entry[].time: when Meta raised the change (absent on message webhooks).
    entry_time: int | None = None


class NormalizedEvent(_Model):
    schema_version: Literal[1] = SCHEMA_VERSION
    event_id: str
    kind: Literal["message", "status", "error", "field"]
    field: str
    waba_id: str | None = None
    phone_number_id: str | None = None
    display_phone_number: str | None = None
    received_at: float
    payload_sha256: str
    contact: ContactInfo | None = None
    message: InboundMessage | None = None
    status: StatusUpdate | None = None
    error: MetaError | None = None
    update: FieldUpdate | None = None


if __name__ == "__main__":  # pragma: no cover
    import json

    print(json.dumps(NormalizedEvent.model_json_schema(), indent=2))
