"""What a send command may ask for, checked against Meta's limits, and the request body it becomes.

A command is validated when it is given (a lawyer's reply, a broadcast row), so a
message Meta would refuse for its shape is refused at once with a clear reason,
before anything is queued. Kinds: text, template (with body parameters), media
by id, link or a stored file of ours (image, video, audio, document, sticker), interactive reply
buttons and lists, and read receipts; any message but a read receipt can quote
an earlier one (``reply_to``).

Limits: ``../shared/reference/whatsapp-cloud-api.md`` section 6.
"""
from __future__ import annotations

import hashlib
import json
import re
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator

# A business-scoped user id (e.g. US.13491208655302741918, US.ENT.…) goes to Meta as
# `recipient`; anything else (a phone number) as `to`, exactly as given.
USER_ID = re.compile(r"^[A-Z]{2}\.(?:ENT\.)?[0-9A-Za-z]+$")


def is_user_id(recipient: str) -> bool:
    return bool(USER_ID.match(recipient))


# What people put between a number's digits; dropped.
_SEPARATORS = re.compile(r"[ \-.()/\u00a0]")
# E.164: a country code and a number, 15 digits at most. Fewer than 7 is no one's number.
PHONE_DIGITS = (7, 15)


def normalize_recipient(recipient: str, country_code: int) -> str:
    """``recipient`` as waflow sends it, or ``InvalidCommand`` saying why it is refused (never quoting it:
    a name typed in the wrong column is client content).

    A business-scoped user id goes as it is. A phone number may be written with spaces, dashes, dots or
    parentheses, which are dropped; in international form (``+62 812…`` or ``62812…``) it is kept as
    written; with a leading 0 (``0812…``, how Indonesian clients write their numbers) it is a national
    number, and becomes ``+<country_code>812…``: with the plus, so Meta cannot read it any other way."""
    value = recipient.strip()
    if is_user_id(value):
        return value
    digits = _SEPARATORS.sub("", value)
    plus = digits.startswith("+")
    digits = digits.removeprefix("+")
    if not digits.isascii() or not digits.isdigit():
        raise InvalidCommand("the recipient is not a phone number or a business-scoped user id "
                             "(digits, optionally after a +, or an id such as US.13491208655302741918)")
    if plus and digits.startswith("0"):
        raise InvalidCommand("the recipient has a 0 after its +: a country code never begins with 0")
    if not plus and digits.startswith("00"):
        raise InvalidCommand("the recipient starts with 00: write the number as + and its country code")
    if not plus and digits.startswith("0"):
        digits, plus = f"{country_code}{digits[1:]}", True
    low, high = PHONE_DIGITS
    if not low <= len(digits) <= high:
        raise InvalidCommand(f"the recipient has {len(digits)} digits; a number with its country code has "
                             f"{low} to {high}")
    return f"+{digits}" if plus else digits


class _Kind(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    reply_to: str | None = Field(default=None, min_length=1, description="wamid of the message to quote")

    def content(self) -> dict[str, Any]:  # the type's part of Meta's body
        raise NotImplementedError

    @property
    def text(self) -> str | None:
        """The words a person would read, for the conversation view."""
        return None


class Text(_Kind):
    kind: Literal["text"] = "text"
    body: str = Field(min_length=1, max_length=4096)
    preview_url: bool = False

    def content(self) -> dict[str, Any]:
        return {"type": "text", "text": {"body": self.body, "preview_url": self.preview_url}}

    @property
    def text(self) -> str:
        return self.body


class Template(_Kind):
    kind: Literal["template"] = "template"
    name: str = Field(min_length=1, max_length=512)
    language: str = Field(default="en_US", min_length=2, max_length=15)
    parameters: list[str] = Field(default_factory=list, description="the body's {{1}}, {{2}}, ... in order")

    @field_validator("parameters")
    @classmethod
    def _no_empty_parameter(cls, value: list[str]) -> list[str]:
        if any(not p.strip() for p in value):
            raise ValueError("template parameters cannot be empty")
        return value

    def content(self) -> dict[str, Any]:
        template: dict[str, Any] = {"name": self.name, "language": {"code": self.language}}
        if self.parameters:
            template["components"] = [{"type": "body", "parameters": [{"type": "text", "text": p}
                                                                    for p in self.parameters]}]
        return {"type": "template", "template": template}

    @property
    def text(self) -> str:
        return f"[template {self.name}] " + " | ".join(self.parameters) if self.parameters else f"[template {self.name}]"


class Media(_Kind):
    kind: Literal["image", "video", "audio", "document", "sticker"]
    id: str | None = Field(default=None, min_length=1)
    link: str | None = Field(default=None, pattern=r"^https://")
    # A file in waflow's media store (its media row id, from ``waflow.media.outgoing``): the sender
    # uploads it to Meta first and sends it by the id Meta gives it.
    file: int | None = Field(default=None, ge=1)
    caption: str | None = Field(default=None, max_length=1024)
    filename: str | None = Field(default=None, max_length=240)

    @model_validator(mode="after")
    def _one_source(self) -> "Media":
        if sum(source is not None for source in (self.id, self.link, self.file)) != 1:
            raise ValueError("media needs exactly one of id (uploaded), link (https) or file (stored)")
        if self.caption and self.kind in ("audio", "sticker"):
            raise ValueError(f"{self.kind} messages take no caption")
        if self.filename and self.kind != "document":
            raise ValueError("only documents take a filename")
        return self

    def content(self) -> dict[str, Any]:
        media = {k: v for k, v in (("id", self.id), ("link", self.link), ("caption", self.caption),
                                   ("filename", self.filename)) if v is not None}
        return {"type": self.kind, self.kind: media}

    @property
    def text(self) -> str | None:
        return self.caption


class Button(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str = Field(min_length=1, max_length=256)
    title: str = Field(min_length=1, max_length=20)


class Buttons(_Kind):
    kind: Literal["buttons"] = "buttons"
    body: str = Field(min_length=1, max_length=1024)
    buttons: list[Button] = Field(min_length=1, max_length=3)
    header: str | None = Field(default=None, max_length=60)
    footer: str | None = Field(default=None, max_length=60)

    @field_validator("buttons")
    @classmethod
    def _unique_titles(cls, value: list[Button]) -> list[Button]:
        if len({b.title for b in value}) != len(value):
            raise ValueError("button titles must be unique")
        return value

    def content(self) -> dict[str, Any]:
        interactive: dict[str, Any] = {"type": "button", "body": {"text": self.body}, "action": {
            "buttons": [{"type": "reply", "reply": {"id": b.id, "title": b.title}} for b in self.buttons]}}
        _header_footer(interactive, self.header, self.footer)
        return {"type": "interactive", "interactive": interactive}

    @property
    def text(self) -> str:
        return self.body


class Row(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str = Field(min_length=1, max_length=200)
    title: str = Field(min_length=1, max_length=24)
    description: str | None = Field(default=None, max_length=72)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    title: str | None = Field(default=None, max_length=24)
    rows: list[Row] = Field(min_length=1)


class List(_Kind):
    kind: Literal["list"] = "list"
    body: str = Field(min_length=1, max_length=1024)
    button: str = Field(min_length=1, max_length=20)
    sections: list[Section] = Field(min_length=1, max_length=10)
    header: str | None = Field(default=None, max_length=60)
    footer: str | None = Field(default=None, max_length=60)

    @field_validator("sections")
    @classmethod
    def _ten_rows_in_all(cls, value: list[Section]) -> list[Section]:
        if sum(len(s.rows) for s in value) > 10:
            raise ValueError("a list holds at most 10 rows in all")
        if len(value) > 1 and any(not s.title for s in value):
            raise ValueError("with several sections, each needs a title")
        return value

    def content(self) -> dict[str, Any]:
        sections = [{**({"title": s.title} if s.title else {}),
                     "rows": [r.model_dump(exclude_none=True) for r in s.rows]} for s in self.sections]
        interactive: dict[str, Any] = {"type": "list", "body": {"text": self.body},
                                       "action": {"button": self.button, "sections": sections}}
        _header_footer(interactive, self.header, self.footer)
        return {"type": "interactive", "interactive": interactive}

    @property
    def text(self) -> str:
        return self.body


class Read(_Kind):
    """Mark a received message (and the ones before it) as read, optionally with a typing indicator."""

    kind: Literal["read"] = "read"
    message_id: str = Field(min_length=1)
    typing: bool = False

    @model_validator(mode="after")
    def _no_quote(self) -> "Read":
        if self.reply_to:
            raise ValueError("a read receipt cannot quote a message")
        return self


def _header_footer(interactive: dict[str, Any], header: str | None, footer: str | None) -> None:
    if header:
        interactive["header"] = {"type": "text", "text": header}
    if footer:
        interactive["footer"] = {"text": footer}


Message = Annotated[Union[Text, Template, Media, Buttons, List, Read], Field(discriminator="kind")]
_ADAPTER: TypeAdapter[Any] = TypeAdapter(Message)


class InvalidCommand(ValueError):
    """A command Meta would refuse for its shape; the message names the fields."""


def parse(doc: dict[str, Any]) -> Text | Template | Media | Buttons | List | Read:
    """Validate a command's message part (``{"kind": ..., ...}``)."""
    try:
        return _ADAPTER.validate_python(doc)
    except ValidationError as exc:
        reasons = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or 'message'}: {e['msg']}"
                            for e in exc.errors(include_input=False))
        raise InvalidCommand(reasons) from None


def request_body(message: Any, recipient: str) -> dict[str, Any]:
    """Meta's request body for ``message`` to ``recipient`` (without waflow's callback data)."""
    if isinstance(message, Read):
        body: dict[str, Any] = {"messaging_product": "whatsapp", "status": "read", "message_id": message.message_id}
        if message.typing:
            body["typing_indicator"] = {"type": "text"}
        return body
    body = {"messaging_product": "whatsapp", "recipient_type": "individual",
            ("recipient" if is_user_id(recipient) else "to"): recipient, **message.content()}
    if message.reply_to:
        body["context"] = {"message_id": message.reply_to}
    return body


# --- what a person approves (waflow/drafts/) --------------------------------------------------------------------


def canonical_template(name: str, language: str, parameters: list[str] | tuple[str, ...]) -> str:
    """A template send as one string (name, language and parameters in JSON): what an approval of a
    template approves, and hashes."""
    return json.dumps({"language": language, "parameters": list(parameters), "template": name},
                      ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def approved_text(body: dict[str, Any]) -> str | None:
    """The words a request body to Meta carries, as an approval records them: a text's body, or a
    template's canonical form; None for any other kind (or a body that is not Meta's shape)."""
    try:
        if body.get("type") == "text":
            return body["text"]["body"]
        if body.get("type") == "template":
            template = body["template"]
            parameters = [p["text"] for c in template.get("components", []) if c.get("type") == "body"
                          for p in c.get("parameters", [])]
            return canonical_template(template["name"], template["language"]["code"], parameters)
    except (KeyError, TypeError, AttributeError):
        return None
    return None


def digest(text: str) -> str:
    """sha256 of the words, hex: what an approval records and the sender checks."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
