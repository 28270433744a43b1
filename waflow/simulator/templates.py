"""The simulator's message templates: a small approved registry, checked on every template send,
and listed as Meta's ``GET /{waba-id}/message_templates`` lists them.

A template's placeholders are ``{{1}}``, ``{{2}}`` … (``parameter_format`` POSITIONAL) or
``{{name}}`` (NAMED); a BODY with placeholders carries the example values Meta requires at
creation (``example.body_text`` or ``example.body_text_named_params``). The list answers Graph
API style: filters (``name`` matches any part of the name; ``language``, ``status``, ``category``
take comma-separated values), ``fields``, cursor ``paging`` (``limit``, ``after``, ``before``;
``next`` and ``previous`` links on the simulator's base URL) and, when asked with ``summary``,
the counts pywa and Meta's own tools read.
"""
from __future__ import annotations

import base64
import binascii
import re
import threading
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from waflow.simulator.errors import MetaError

PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")
FIELDS = ("name", "parameter_format", "components", "language", "status", "category", "id")
# Meta's cap on templates per WABA for a business that is not verified; the summary reports it.
TEMPLATE_LIMIT = 250
PAGE_SIZE = 25  # the Graph API's default page


@dataclass(frozen=True)
class Template:
    name: str
    language: str
    category: str  # UTILITY, MARKETING or AUTHENTICATION, as Meta names them
    body: str
    examples: tuple[str, ...] = ()  # one per placeholder, in order; made up where missing

    @property
    def placeholders(self) -> list[str]:
        """Distinct placeholders: numbers in numeric order, names in order of first use."""
        found = list(dict.fromkeys(PLACEHOLDER.findall(self.body)))
        return sorted(found, key=int) if self.parameter_format == "POSITIONAL" else found

    @property
    def parameter_count(self) -> int:
        return len(self.placeholders)

    @property
    def parameter_format(self) -> str:
        return "POSITIONAL" if all(p.isdigit() for p in PLACEHOLDER.findall(self.body)) else "NAMED"

    @property
    def id(self) -> str:
        return str(10**15 + zlib.crc32(f"{self.name}:{self.language}".encode()))

    def as_meta(self) -> dict[str, Any]:
        """The template as Meta's ``message_templates`` list shows it."""
        body: dict[str, Any] = {"type": "BODY", "text": self.body}
        names = self.placeholders
        if names:
            values = [self.examples[i] if i < len(self.examples) else f"example {i + 1}" for i in range(len(names))]
            body["example"] = ({"body_text": [values]} if self.parameter_format == "POSITIONAL" else
                               {"body_text_named_params": [{"param_name": n, "example": v}
                                                           for n, v in zip(names, values)]})
        return {"name": self.name, "parameter_format": self.parameter_format, "components": [body],
                "language": self.language, "status": "APPROVED", "category": self.category, "id": self.id}


BUILT_IN = (
    Template("hello_world", "en_US", "UTILITY",
             "Welcome and congratulations!! This message demonstrates your ability to send a WhatsApp message "
             "notification from the Cloud API, hosted by Meta. Thank you for taking the time to test with us."),
    Template("appointment_reminder", "en_US", "UTILITY",
             "Hello {{1}}, this is a reminder of your appointment with our firm on {{2}}. "
             "Reply to this message if you need to reschedule.", ("Ana Pereira", "12 May at 10:00")),
    Template("appointment_reminder", "id", "UTILITY",
             "Halo {{1}}, ini pengingat janji temu Anda dengan kantor kami pada {{2}}. "
             "Balas pesan ini jika Anda perlu menjadwalkan ulang.", ("Siti Rahmawati", "12 Mei pukul 10.00")),
    Template("case_update", "en_US", "UTILITY",
             "There is an update on your case {{1}}. Reply to this message to talk with your lawyer.",
             ("2026-114",)),
    Template("case_update", "id", "UTILITY",
             "Ada perkembangan baru pada perkara Anda {{1}}. Balas pesan ini untuk berbicara dengan pengacara Anda.",
             ("2026-114",)),
)


class TemplateRegistry:
    """Approved templates by (name, language); the control endpoint adds more."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._templates: dict[tuple[str, str], Template] = {}
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._templates = {(t.name, t.language): t for t in BUILT_IN}

    def add(self, template: Template) -> None:
        with self._lock:
            self._templates[(template.name, template.language)] = template

    def find(self, name: str | None = None, language: str | None = None) -> list[Template]:
        with self._lock:
            found = list(self._templates.values())
        return [t for t in found if name in (None, t.name) and language in (None, t.language)]

    def check(self, obj: dict[str, Any]) -> Template:
        """The template a (shape-checked) send names; 132001 if unknown, 132000 on a parameter-count mismatch."""
        name, language = obj["name"], obj["language"]["code"]
        with self._lock:
            template = self._templates.get((name, language))
        if template is None:
            raise MetaError(132001, f"template name ({name}) does not exist in {language}")
        given = sum(len(c.get("parameters") or []) for c in obj.get("components", [])
                    if str(c.get("type", "")).lower() == "body")
        if given != template.parameter_count:
            raise MetaError(132000, f"body: number of localizable_params ({given}) does not match the expected "
                                    f"number of params ({template.parameter_count})")
        return template


def listing(templates: list[Template], args: Mapping[str, str],
            link: Callable[[dict[str, str]], str]) -> dict[str, Any]:
    """One page of the template list for a request's query ``args``; ``link`` makes a page's URL
    from its query. MetaError 100 for a bad ``limit`` or cursor."""
    matching = [t for t in templates if _matches(t, args)]
    limit = _limit(args.get("limit"))
    start = _cursor(args["after"]) + 1 if "after" in args else 0
    end = start + limit
    if "before" in args and "after" not in args:
        end = _cursor(args["before"])
        start = max(0, end - limit)
    page = matching[start:end]
    fields = [f for f in args.get("fields", "").split(",") if f in FIELDS] or list(FIELDS)
    doc: dict[str, Any] = {"data": [{k: v for k, v in t.as_meta().items() if k in fields or k == "id"} for t in page]}
    if page:
        cursors = {"before": _encode(start), "after": _encode(start + len(page) - 1)}
        paging: dict[str, Any] = {"cursors": cursors}
        query = {k: v for k, v in args.items() if k not in ("after", "before")}
        if start + len(page) < len(matching):
            paging["next"] = link({**query, "after": cursors["after"]})
        if start > 0:
            paging["previous"] = link({**query, "before": cursors["before"]})
        doc["paging"] = paging
    if "summary" in args:
        counts = {"total_count": len(matching), "message_template_count": len(templates),
                  "message_template_limit": TEMPLATE_LIMIT,
                  # The simulator has no translation workflow: every template it holds is complete.
                  "are_translations_complete": True}
        asked = args["summary"].split(",")
        doc["summary"] = counts if asked == ["true"] else {k: v for k, v in counts.items() if k in asked}
    return doc


def _matches(template: Template, args: Mapping[str, str]) -> bool:
    if args.get("name") and args["name"].lower() not in template.name.lower():
        return False
    for key, value in (("language", template.language), ("status", "APPROVED"), ("category", template.category)):
        if args.get(key) and value.upper() not in [v.strip().upper() for v in args[key].split(",")]:
            return False
    return True


def _limit(raw: str | None) -> int:
    if raw is None:
        return PAGE_SIZE
    if not raw.isdigit() or not 1 <= int(raw) <= 1000:
        raise MetaError(100, "limit must be a whole number from 1 to 1000")
    return int(raw)


def _encode(position: int) -> str:
    return base64.urlsafe_b64encode(f"position:{position}".encode()).decode()


def _cursor(cursor: str) -> int:
    try:
        kind, _, number = base64.urlsafe_b64decode(cursor.encode()).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        kind, number = "", ""
    if kind != "position" or not number.isdigit():
        raise MetaError(100, "the paging cursor is not one this list gave")
    return int(number)
