"""Shape checks of a send to ``/<phone_number_id>/messages``, with Meta's limits (§6).

Codes: a required field that is absent → 131008; a field present with a wrong type, length or
value → 131009; a request that is not a message at all (not an object, ``messaging_product``
other than ``whatsapp``, both ``to`` and ``recipient``, an unknown ``type``) → 100. Every
``details`` text names the field, e.g. ``interactive.action.buttons[1].reply.title``.
"""
from __future__ import annotations

import re
from typing import Any, Callable

from waflow.simulator.errors import MetaError, invalid, missing

PHONE = re.compile(r"\+?[0-9]{5,20}")
# Business-scoped user ids (2026): a country prefix and digits, e.g. US.13491208655302741918.
BSUID = re.compile(r"[A-Z]{2}\.[A-Z0-9.]{5,64}")
MEDIA_TYPES = ("image", "video", "audio", "document", "sticker")
OTHER_INTERACTIVE = ("cta_url", "flow", "product", "product_list", "location_request_message", "address_message")


def recipient_key(doc: Any) -> str | None:
    """Whom a send or fault is for: the digits of ``to``, or the BSUID in ``recipient``."""
    if not isinstance(doc, dict):
        return None
    if isinstance(doc.get("to"), str):
        return re.sub(r"[^0-9]", "", doc["to"])
    return doc.get("recipient") if isinstance(doc.get("recipient"), str) else None


def is_read_receipt(doc: Any) -> bool:
    return isinstance(doc, dict) and "status" in doc and "to" not in doc and "recipient" not in doc


def check_read_receipt(doc: dict[str, Any]) -> None:
    """Mark-as-read (optionally with a typing indicator)."""
    _product(doc)
    if doc["status"] != "read":
        raise invalid("status", 'must be "read"')
    _text(doc.get("message_id"), "message_id", 1, 512)
    typing = doc.get("typing_indicator")
    if typing is not None and (not isinstance(typing, dict) or typing.get("type") != "text"):
        raise invalid("typing_indicator", 'must be {"type": "text"}')


def check_send(doc: Any) -> str:
    """Check a message send and return its type; raise MetaError naming the first bad field."""
    if not isinstance(doc, dict):
        raise MetaError(100, "the request body must be a JSON object")
    _product(doc)
    _addressee(doc)
    kind = doc.get("type", "text")
    if kind not in CHECKS:
        raise MetaError(100, f"type must be one of {', '.join(CHECKS)}")
    if doc.get(kind) is None:
        raise missing(kind)
    CHECKS[kind](doc[kind] if kind == "contacts" else _obj(doc[kind], kind))
    if "context" in doc:
        _text(_obj(doc["context"], "context").get("message_id"), "context.message_id", 1, 512)
    if "biz_opaque_callback_data" in doc:
        _text(doc["biz_opaque_callback_data"], "biz_opaque_callback_data", 0, 512)
    return kind


def _product(doc: dict[str, Any]) -> None:
    if "messaging_product" not in doc:
        raise missing("messaging_product")
    if doc["messaging_product"] != "whatsapp":
        raise MetaError(100, 'messaging_product must be "whatsapp"')


def _addressee(doc: dict[str, Any]) -> None:
    to, recipient = doc.get("to"), doc.get("recipient")
    if to is None and recipient is None:
        raise missing("to (or recipient)")
    if to is not None and recipient is not None:
        raise MetaError(100, "to and recipient: give one of them, not both")
    if to is not None and not (isinstance(to, str) and PHONE.fullmatch(re.sub(r"[ ()\-]", "", to))):
        raise invalid("to", "must be a phone number with its country code")
    if recipient is not None and not (isinstance(recipient, str) and BSUID.fullmatch(recipient)):
        raise invalid("recipient", "must be a business-scoped user id such as US.13491208655302741918")
    if doc.get("recipient_type", "individual") != "individual":
        raise invalid("recipient_type", 'must be "individual"')


def _obj(value: Any, field: str) -> dict[str, Any]:
    if value is None:
        raise missing(field)
    if not isinstance(value, dict):
        raise invalid(field, "must be an object")
    return value


def _text(value: Any, field: str, low: int, high: int, required: bool = True) -> None:
    if value is None:
        if required:
            raise missing(field)
        return
    if not isinstance(value, str):
        raise invalid(field, "must be a string")
    if not low <= len(value) <= high:
        raise invalid(field, f"must be {low} to {high} characters long, got {len(value)}")


def _list(value: Any, field: str, low: int, high: int) -> list[Any]:
    if value is None:
        raise missing(field)
    if not isinstance(value, list) or not low <= len(value) <= high:
        raise invalid(field, f"must be a list of {low} to {high} items")
    return value


def _check_text(obj: dict[str, Any]) -> None:
    _text(obj.get("body"), "text.body", 1, 4096)


def _media_check(kind: str) -> Callable[[dict[str, Any]], None]:
    def check(obj: dict[str, Any]) -> None:
        if "id" not in obj and "link" not in obj:
            raise missing(f"{kind}.id (or {kind}.link)")
        if "id" in obj and "link" in obj:
            raise invalid(kind, "must have exactly one of id and link")
        if "id" in obj:
            _text(obj["id"], f"{kind}.id", 1, 256)
        elif not (isinstance(obj["link"], str) and obj["link"].startswith(("http://", "https://"))):
            raise invalid(f"{kind}.link", "must be an http(s) URL")
        if "caption" in obj and kind in ("audio", "sticker"):
            raise invalid(f"{kind}.caption", f"is not supported for {kind}")
        _text(obj.get("caption"), f"{kind}.caption", 0, 1024, required=False)
    return check


def _header_footer(obj: dict[str, Any], text_only: bool) -> None:
    if "footer" in obj:
        _text(_obj(obj["footer"], "interactive.footer").get("text"), "interactive.footer.text", 1, 60)
    if "header" in obj:
        header = _obj(obj["header"], "interactive.header")
        if header.get("type") == "text":
            _text(header.get("text"), "interactive.header.text", 1, 60)
        elif text_only or header.get("type") not in ("image", "video", "document"):
            raise invalid("interactive.header.type", "is not supported here")


def _check_interactive(obj: dict[str, Any]) -> None:
    itype = obj.get("type")
    if itype is None:
        raise missing("interactive.type")
    if itype not in ("button", "list", *OTHER_INTERACTIVE):
        raise invalid("interactive.type", f"{itype!r} is not an interactive type")
    if itype in OTHER_INTERACTIVE:
        return  # accepted as sent; the simulator checks reply buttons and lists only
    body = _obj(obj.get("body"), "interactive.body")
    _text(body.get("text"), "interactive.body.text", 1, 1024 if itype == "button" else 4096)
    _header_footer(obj, text_only=itype == "list")
    (_buttons if itype == "button" else _sections)(_obj(obj.get("action"), "interactive.action"))


def _buttons(action: dict[str, Any]) -> None:
    titles: set[str] = set()
    ids: set[str] = set()
    for i, button in enumerate(_list(action.get("buttons"), "interactive.action.buttons", 1, 3)):
        field = f"interactive.action.buttons[{i}]"
        if _obj(button, field).get("type") != "reply":
            raise invalid(f"{field}.type", 'must be "reply"')
        reply = _obj(button.get("reply"), f"{field}.reply")
        _text(reply.get("id"), f"{field}.reply.id", 1, 256)
        _text(reply.get("title"), f"{field}.reply.title", 1, 20)
        if reply["title"] in titles:
            raise invalid(f"{field}.reply.title", "must be unique among the buttons")
        if reply["id"] in ids:
            raise invalid(f"{field}.reply.id", "must be unique among the buttons")
        titles.add(reply["title"])
        ids.add(reply["id"])


def _sections(action: dict[str, Any]) -> None:
    _text(action.get("button"), "interactive.action.button", 1, 20)
    sections = _list(action.get("sections"), "interactive.action.sections", 1, 10)
    row_ids: set[str] = set()
    for s, section in enumerate(sections):
        field = f"interactive.action.sections[{s}]"
        _text(_obj(section, field).get("title"), f"{field}.title", 1, 24, required=len(sections) > 1)
        for r, row in enumerate(_list(section.get("rows"), f"{field}.rows", 1, 10)):
            where = f"{field}.rows[{r}]"
            _text(_obj(row, where).get("id"), f"{where}.id", 1, 200)
            _text(row.get("title"), f"{where}.title", 1, 24)
            _text(row.get("description"), f"{where}.description", 0, 72, required=False)
            if row["id"] in row_ids:
                raise invalid(f"{where}.id", "must be unique in the list")
            row_ids.add(row["id"])
    if len(row_ids) > 10:
        raise invalid("interactive.action.sections", f"must hold at most 10 rows in total, got {len(row_ids)}")


def _check_template(obj: dict[str, Any]) -> None:
    _text(obj.get("name"), "template.name", 1, 512)
    _text(_obj(obj.get("language"), "template.language").get("code"), "template.language.code", 1, 15)
    components = obj.get("components", [])
    if not isinstance(components, list):
        raise invalid("template.components", "must be a list")
    for i, component in enumerate(components):
        if not isinstance(_obj(component, f"template.components[{i}]").get("parameters", []), list):
            raise invalid(f"template.components[{i}].parameters", "must be a list")


def _check_reaction(obj: dict[str, Any]) -> None:
    _text(obj.get("message_id"), "reaction.message_id", 1, 512)
    _text(obj.get("emoji"), "reaction.emoji", 0, 16, required=False)  # empty removes a reaction


def _check_location(obj: dict[str, Any]) -> None:
    for name, bound in (("latitude", 90), ("longitude", 180)):
        value = obj.get(name)
        if value is None:
            raise missing(f"location.{name}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise invalid(f"location.{name}", "must be a number") from None
        if not -bound <= number <= bound:
            raise invalid(f"location.{name}", f"must be between -{bound} and {bound}")


def _check_contacts(value: Any) -> None:
    for i, card in enumerate(_list(value, "contacts", 1, 257)):
        name = _obj(_obj(card, f"contacts[{i}]").get("name"), f"contacts[{i}].name")
        _text(name.get("formatted_name"), f"contacts[{i}].name.formatted_name", 1, 512)


CHECKS: dict[str, Callable[[Any], None]] = {
    "text": _check_text,
    **{kind: _media_check(kind) for kind in MEDIA_TYPES},
    "template": _check_template,
    "interactive": _check_interactive,
    "reaction": _check_reaction,
    "location": _check_location,
    "contacts": _check_contacts,
}
