"""One knowledge-base entry: a Markdown file with YAML front matter, parsed with the line of every problem.

The format is documented in ``docs/knowledge-base.md``. Errors name the file, the line and the key; they
quote no content, so they can be logged and shown as they are.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from waflow.drafting.types import LANGUAGES

INTAKE_FIELDS = ("name", "matter", "facts", "deadline")
ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{1,63}$")
_FENCE = "---"
# libyaml's safe loader where PyYAML was built with it (the wheels are): the same rules, ten times faster.
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_SECTION = re.compile(r"^##\s+(\w+)\s*$")


@dataclass(frozen=True)
class KnowledgeError:
    """A problem with one file of the knowledge base: where it is and what is wrong."""

    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


@dataclass(frozen=True)
class Entry:
    id: str
    title: dict[str, str] = field(compare=False)
    questions: dict[str, tuple[str, ...]] = field(compare=False)
    answers: dict[str, str] = field(compare=False)
    tags: tuple[str, ...] = ()
    topic: str = ""
    intake_answered: frozenset[str] = frozenset()
    file: str = ""


class _Invalid(Exception):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line, self.message = line, message


def parse_entry(file: str, text: str) -> tuple[Entry | None, list[KnowledgeError]]:
    """Parse one entry file; on any problem return no entry and the problems found."""
    try:
        front, front_start, body, body_start = _split(text)
        data, key_lines = _front_matter(front, front_start)
        entry = _entry(file, data, key_lines, front_start, body, body_start)
    except _Invalid as invalid:
        return None, [KnowledgeError(file, invalid.line, invalid.message)]
    return entry, []


def _split(text: str) -> tuple[str, int, list[str], int]:
    """The front matter, the line it starts on, the body's lines and the line they start on (1-based)."""
    lines = text.splitlines()
    if not lines or lines[0].strip() != _FENCE:
        raise _Invalid(1, "the file must start with a '---' line opening the YAML front matter")
    for index in range(1, len(lines)):
        if lines[index].strip() == _FENCE:
            return "\n".join(lines[1:index]), 2, lines[index + 1:], index + 2
    raise _Invalid(1, "the YAML front matter opened on line 1 is never closed with a '---' line")


def _front_matter(front: str, first_line: int) -> tuple[dict[str, Any], dict[str, int]]:
    try:
        node = yaml.compose(front, Loader=LOADER)
        data = yaml.load(front, Loader=LOADER)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = first_line + (mark.line if mark else 0)
        opened = exc.context_mark.line + first_line if exc.context_mark else line
        where = f" ({exc.context} on line {opened})" if exc.context and opened != line else ""
        raise _Invalid(line, f"YAML error: {exc.problem or exc.context}{where}") from None
    if not isinstance(data, dict) or not isinstance(node, yaml.MappingNode):
        raise _Invalid(first_line, "the front matter must be a YAML mapping of keys to values")
    key_lines = {key.value: first_line + key.start_mark.line for key, _ in node.value}
    return data, key_lines


def _entry(file: str, data: dict[str, Any], key_lines: dict[str, int], front_start: int,
           body: list[str], body_start: int) -> Entry:
    def line(key: str) -> int:
        return key_lines.get(key, front_start - 1)

    def require(key: str) -> Any:
        if key not in data or data[key] in (None, "", [], {}):
            raise _Invalid(front_start - 1, f"missing required field '{key}'")
        return data[key]

    entry_id = require("id")
    if not isinstance(entry_id, str) or not ID_PATTERN.match(entry_id):
        raise _Invalid(line("id"), "field 'id' must be lower-case letters, digits and hyphens (2-64 characters)")
    title = _per_language(require("title"), "title", line("title"), str)
    questions = _per_language(require("questions"), "questions", line("questions"), list)
    tags = data.get("tags") or []
    if not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags):
        raise _Invalid(line("tags"), "field 'tags' must be a list of words or phrases")
    answered = data.get("intake_answered") or []
    if not isinstance(answered, list) or not set(answered) <= set(INTAKE_FIELDS):
        raise _Invalid(line("intake_answered"),
                       f"field 'intake_answered' must be a list of: {', '.join(INTAKE_FIELDS)}")
    topic = data.get("topic") or ""
    if not isinstance(topic, str):
        raise _Invalid(line("topic"), "field 'topic' must be a word")
    return Entry(
        id=entry_id, title=title, answers=_answers(body, body_start), tags=tuple(tags), topic=topic,
        questions={lang: tuple(str(q) for q in qs) for lang, qs in questions.items()},
        intake_answered=frozenset(answered), file=file,
    )


def _per_language(value: Any, key: str, line: int, kind: type) -> dict[str, Any]:
    """A field given once per language: ``{id: ..., en: ...}``, each a non-empty ``kind``."""
    if not isinstance(value, dict):
        raise _Invalid(line, f"field '{key}' must have an 'id' and an 'en' part")
    for lang in LANGUAGES:
        part = value.get(lang)
        if not part or not isinstance(part, kind):
            what = "a list of questions" if kind is list else "a text"
            raise _Invalid(line, f"field '{key}' is missing its '{lang}' part ({what})")
    return {lang: value[lang] for lang in LANGUAGES}


def _answers(body: list[str], body_start: int) -> dict[str, str]:
    """The body's ``## id`` and ``## en`` sections, each the answer in that language."""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for offset, text in enumerate(body):
        heading = _SECTION.match(text.strip())
        if heading:
            lang = heading.group(1).lower()
            if lang not in LANGUAGES:
                raise _Invalid(body_start + offset, "answer sections are '## id' and '## en' only")
            if lang in sections:
                raise _Invalid(body_start + offset, f"the answer section '## {lang}' appears twice")
            current = sections.setdefault(lang, [])
        elif current is not None:
            current.append(text.strip())
    answers = {}
    for lang in LANGUAGES:
        paragraphs = "\n".join(sections.get(lang, [])).strip()
        if not paragraphs:
            raise _Invalid(body_start, f"missing the answer section '## {lang}' (or it is empty)")
        # Lines are joined into paragraphs: the files wrap at ~110 characters, WhatsApp wraps by itself.
        answers[lang] = "\n\n".join(" ".join(p.split()) for p in re.split(r"\n\s*\n", paragraphs))
    return answers
