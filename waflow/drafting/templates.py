"""The fixed parts of a draft (first-contact acknowledgement, greeting, holding answer, intake questions ...).

They live in the knowledge folder's ``_templates.yaml`` so the firm edits them like the entries. A key the
firm's file lacks, or a file that does not parse, is reported with its line, and the shipped sample's text
stands in for it, so a typo never leaves a draft without its acknowledgement.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from waflow.drafting.entries import INTAKE_FIELDS, LOADER, KnowledgeError
from waflow.drafting.types import LANGUAGES

FILE_NAME = "_templates.yaml"
# Keys every templates file must give in both languages; "intake.name" is the nested key name under intake.
PER_LANGUAGE = ("acknowledgement", "greeting", "greeting_anonymous", "media", "urgent", "holding",
                "intake_intro", "closing", "firm.hours") + tuple(f"intake.{f}" for f in INTAKE_FIELDS)
MEDIA_KINDS = ("image", "document", "audio", "video", "sticker", "other")
_PLACEHOLDER = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True)
class Templates:
    data: Mapping[str, Any]

    def text(self, key: str, language: str, **values: str) -> str:
        """The template ``key`` (dotted for nested keys) in ``language``, with {placeholders} filled."""
        node: Any = self.data
        for part in key.split("."):
            node = node[part]
        values = {"firm": self.data["firm"]["name"], "hours": self.data["firm"]["hours"][language], **values}
        # Unknown placeholders stay as written: a lawyer sees "{nama}" in the draft and fixes the template.
        return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), " ".join(node[language].split()))

    def media_word(self, kind: str | None, language: str) -> str:
        kinds = self.data["media_kinds"]
        return kinds.get(kind or "other", kinds["other"])[language]


def load_templates(path: Path, fallback: Path | None) -> tuple[Templates, list[KnowledgeError]]:
    """Read ``path``; keys it lacks come from ``fallback`` (the shipped sample), each reported."""
    errors: list[KnowledgeError] = []
    data, lines = _read(path, errors)
    if fallback is not None and fallback.resolve() != path.resolve():
        base, _ = _read(fallback, [])
    else:
        base = {}
    merged: dict[str, Any] = {}
    for key in PER_LANGUAGE + ("firm.name",) + tuple(f"media_kinds.{k}" for k in MEDIA_KINDS):
        value = _get(data, key)
        problem = _problem(key, value)
        if problem and data:
            errors.append(KnowledgeError(path.name, lines.get(key.split(".")[0], 1), problem))
        _put(merged, key, _get(base, key) if problem else value)
    return Templates(merged), errors


def _read(path: Path, errors: list[KnowledgeError]) -> tuple[dict[str, Any], dict[str, int]]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        errors.append(KnowledgeError(path.name, 1, "the templates file is missing or unreadable; "
                                     "the shipped sample's templates are used"))
        return {}, {}
    try:
        node = yaml.compose(text, Loader=LOADER)
        data = yaml.load(text, Loader=LOADER)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        errors.append(KnowledgeError(path.name, (mark.line + 1) if mark else 1,
                                     f"YAML error: {exc.problem or exc.context}; the sample's templates are used"))
        return {}, {}
    if not isinstance(data, dict) or not isinstance(node, yaml.MappingNode):
        errors.append(KnowledgeError(path.name, 1, "the templates file must be a YAML mapping"))
        return {}, {}
    return data, {key.value: key.start_mark.line + 1 for key, _ in node.value}


def _get(data: Mapping[str, Any], key: str) -> Any:
    node: Any = data
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _put(data: dict[str, Any], key: str, value: Any) -> None:
    *parents, last = key.split(".")
    for part in parents:
        data = data.setdefault(part, {})
    data[last] = value


def _problem(key: str, value: Any) -> str | None:
    if key == "firm.name":
        return None if isinstance(value, str) and value.strip() else "missing 'firm: name:'"
    if not isinstance(value, Mapping):
        return f"missing template '{key}' (with an 'id' and an 'en' text)"
    for lang in LANGUAGES:
        if not isinstance(value.get(lang), str) or not value[lang].strip():
            return f"template '{key}' is missing its '{lang}' text"
    return None
