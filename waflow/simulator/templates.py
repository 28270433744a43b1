"""The simulator's message templates: a small approved registry, checked on every template send."""
from __future__ import annotations

import re
import threading
import zlib
from dataclasses import dataclass
from typing import Any

from waflow.simulator.errors import MetaError

PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")


@dataclass(frozen=True)
class Template:
    name: str
    language: str
    category: str  # UTILITY, MARKETING or AUTHENTICATION, as Meta names them
    body: str

    @property
    def parameter_count(self) -> int:
        """Distinct ``{{n}}`` placeholders in the body."""
        return len(set(PLACEHOLDER.findall(self.body)))

    def as_meta(self) -> dict[str, Any]:
        """The template as Meta's ``message_templates`` list shows it."""
        return {"name": self.name, "language": self.language, "status": "APPROVED", "category": self.category,
                "id": str(10**15 + zlib.crc32(f"{self.name}:{self.language}".encode())),
                "components": [{"type": "BODY", "text": self.body}]}


BUILT_IN = (
    Template("hello_world", "en_US", "UTILITY",
             "Welcome and congratulations!! This message demonstrates your ability to send a WhatsApp message "
             "notification from the Cloud API, hosted by Meta. Thank you for taking the time to test with us."),
    Template("appointment_reminder", "en_US", "UTILITY",
             "Hello {{1}}, this is a reminder of your appointment with our firm on {{2}}. "
             "Reply to this message if you need to reschedule."),
    Template("appointment_reminder", "id", "UTILITY",
             "Halo {{1}}, ini pengingat janji temu Anda dengan kantor kami pada {{2}}. "
             "Balas pesan ini jika Anda perlu menjadwalkan ulang."),
    Template("case_update", "en_US", "UTILITY",
             "There is an update on your case {{1}}. Reply to this message to talk with your lawyer."),
    Template("case_update", "id", "UTILITY",
             "Ada perkembangan baru pada perkara Anda {{1}}. Balas pesan ini untuk berbicara dengan pengacara Anda."),
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
