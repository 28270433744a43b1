"""The normalized event: what ``wa.incoming.normalized`` carries, one per update.

The ingestor builds these from Meta's webhook and the core stage validates them
on arrival, so both ends hold to one schema (pydantic). ``docs/events.md``
describes it field by field; ``python -m waflow.events`` prints its JSON Schema.

Every event has a deterministic ``event_id`` (``message:<wamid>``,
``status:<wamid>:<status>``, ...), so redelivered webhooks produce the same ids.
Nothing Meta sent is dropped: each message and status keeps its ``raw`` object,
and a type waflow does not know yet is still a message.

Two bounds keep a hostile update out of the database's way: every id (wamids, media
ids, user ids, the business number...) is at most ``MAX_ID_LENGTH`` characters, so no
key outgrows PostgreSQL's index rows (2,704 bytes), and every JSON value inside an event
nests at most ``MAX_DEPTH`` levels, well within what pydantic and the JSON encoders
serialize. An update past either is set aside by the ingestor, on its own.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import PydanticCustomError

SCHEMA_VERSION = 1

# The longest id an event may carry (Meta's wamids are about 60 characters, user ids about 25). Two ids
# in one unique index (a status's wamid and status) take at most 2 x 256 x 4 bytes, under PostgreSQL's
# 2,704-byte index row.
MAX_ID_LENGTH = 256
# An event id joins up to two ids ("status:<wamid>:<status>").
MAX_EVENT_ID_LENGTH = 600
# How deep a JSON value inside an event may nest (Meta's objects nest under 10 levels). pydantic
# refuses to serialize past about 250 levels, Python's JSON encoders past about 1,000.
MAX_DEPTH = 64


def nesting_exceeds(value: Any, limit: int) -> bool:
    """True if ``value`` (JSON: dicts, lists, scalars) nests more than ``limit`` levels. Iterative, so a
    value nested thousands of levels deep is measured, not a RecursionError."""
    stack = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth >= limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def _shallow(value: Any) -> Any:
    if nesting_exceeds(value, MAX_DEPTH):
        raise PydanticCustomError("too_deep", "nested more than {limit} levels", {"limit": MAX_DEPTH})
    return value


Id = Annotated[str, Field(max_length=MAX_ID_LENGTH)]
Json = Annotated[Any, AfterValidator(_shallow)]
JsonObject = Annotated[dict[str, Any], AfterValidator(_shallow)]


class _Model(BaseModel):
    # Unknown fields are ignored, not refused: during a rolling deploy an older core worker
    # must still read events from a newer ingestor.
    model_config = ConfigDict(extra="ignore", frozen=True)


class InvalidEvent(ValueError):
    """An event that does not fit the schema; the message names the fields, never their values."""

    @classmethod
    def from_validation(cls, exc: ValidationError) -> "InvalidEvent":
        return cls(describe_validation_error(exc))


# pydantic errors whose message is built from the schema alone ("String should have at most 256
# characters"); any other kind (a custom validator's text, a union tag) may quote the input, so only its
# kind is given.
_SCHEMA_ONLY_MESSAGES = frozenset({
    "missing", "string_type", "string_too_long", "string_too_short", "int_type", "int_parsing", "int_from_float",
    "int_parsing_size", "float_type", "float_parsing", "finite_number", "bool_type", "bool_parsing", "dict_type",
    "list_type", "model_type", "model_attributes_type", "literal_error", "none_required", "too_deep",
    "string_unicode", "recursion_loop", "greater_than", "greater_than_equal", "less_than", "less_than_equal",
})


def describe_validation_error(exc: ValidationError) -> str:
    """Where and why validation failed, without the input values (they may be a client's text): the
    path names schema fields and list positions only, and a message that could quote the input is
    replaced by its kind."""
    problems = [f"{_path(e['loc'])}: {e['msg'] if e['type'] in _SCHEMA_ONLY_MESSAGES else e['type']}"
                for e in exc.errors(include_url=False, include_input=False)[:5]]
    more = f" (and {exc.error_count() - 5} more)" if exc.error_count() > 5 else ""
    return "invalid " + "; ".join(problems) + more


def _path(loc: tuple[int | str, ...]) -> str:
    """A location as ``message.errors.0.code``; a part that is not a field of the schema (a key of a
    free-form object, which the client chose) shows as ``?``."""
    parts = [str(p) if isinstance(p, int) or p in _FIELD_NAMES else "?" for p in loc]
    return ".".join(parts) or "(event)"


class MetaError(_Model):
    """One entry of an ``errors`` array (message, status or payload level)."""

    code: int | None = None
    title: str | None = None
    message: str | None = None
    details: str | None = None
    href: str | None = None


class ContactInfo(_Model):
    """The user behind a message: phone-based ``wa_id``, business-scoped ``user_id``, or both."""

    wa_id: Id | None = None
    user_id: Id | None = None
    parent_user_id: Id | None = None
    name: str | None = None
    username: str | None = None


class MediaInfo(_Model):
    """An attachment to download later (the media stage)."""

    id: Id
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

    quoted_wamid: Id | None = None
    quoted_from: Id | None = None
    forwarded: bool = False
    frequently_forwarded: bool = False
    referred_product: JsonObject | None = None


class InboundMessage(_Model):
    wamid: Id
    type: Id
    timestamp: int
    # Plain text a person would read: the text, caption, chosen button title, emoji...
    text: str | None = None
    media: MediaInfo | None = None
    context: Context | None = None
    referral: JsonObject | None = None
    errors: list[MetaError] = Field(default_factory=list)
    # Type-specific fields, normalized (see docs/events.md).
    content: JsonObject = Field(default_factory=dict)
    # The message object exactly as Meta sent it.
    raw: JsonObject


class StatusUpdate(_Model):
    wamid: Id
    status: Id
    timestamp: int
    recipient_id: Id | None = None
    recipient_user_id: Id | None = None
    recipient_type: str | None = None
    biz_opaque_callback_data: str | None = None
    conversation: JsonObject | None = None
    pricing: JsonObject | None = None
    errors: list[MetaError] = Field(default_factory=list)
    raw: JsonObject


class FieldUpdate(_Model):
    """Any change waflow does not split further: account, template, calls, echoes..."""

    field: Id
    value: Json = None  # absent in some changes; a dump without None values must round-trip
    # entry[].time: when Meta raised the change (absent on message webhooks).
    entry_time: int | None = None


class NormalizedEvent(_Model):
    schema_version: Literal[1] = SCHEMA_VERSION
    event_id: Annotated[str, Field(max_length=MAX_EVENT_ID_LENGTH)]
    kind: Literal["message", "status", "error", "field"]
    field: Id
    waba_id: Id | None = None
    phone_number_id: Id | None = None
    display_phone_number: Id | None = None
    received_at: float
    payload_sha256: Id
    contact: ContactInfo | None = None
    message: InboundMessage | None = None
    status: StatusUpdate | None = None
    error: MetaError | None = None
    update: FieldUpdate | None = None


_FIELD_NAMES = frozenset(name for model in (NormalizedEvent, ContactInfo, InboundMessage, MediaInfo, Context,
                                            MetaError, StatusUpdate, FieldUpdate) for name in model.model_fields)


if __name__ == "__main__":  # pragma: no cover
    import json

    print(json.dumps(NormalizedEvent.model_json_schema(), indent=2))
