"""The firm's knowledge base: a folder of entries, reloaded when its files change, without a restart.

``KnowledgeBase(directory).current()`` returns the loaded ``Knowledge``: the entries that parsed, the
templates, and every problem found (file, line, what is wrong). A malformed file is reported and skipped;
the others still load. Whether the folder changed is decided from each file's name, size and modification
time, looked at no more than once every ``check_interval`` seconds, so a draft pays nothing for it.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from waflow.config import BASE_DIR
from waflow.drafting.entries import Entry, KnowledgeError, parse_entry
from waflow.drafting.templates import FILE_NAME, Templates, load_templates

logger = logging.getLogger(__name__)

SAMPLE_DIR = BASE_DIR / "knowledge"
# A lawyer's save shows within this many seconds; a stat of ~60 files costs well under a millisecond.
CHECK_INTERVAL = 2.0

Signature = tuple[tuple[str, int, int], ...]


@dataclass(frozen=True)
class Knowledge:
    """One loaded version of the knowledge base. ``version`` grows by one at every reload."""

    entries: tuple[Entry, ...]
    templates: Templates
    errors: tuple[KnowledgeError, ...]
    signature: Signature
    version: int

    def entry(self, entry_id: str) -> Entry:
        for entry in self.entries:
            if entry.id == entry_id:
                return entry
        raise KeyError(entry_id)


def signature(directory: Path) -> Signature:
    """Name, size and modification time of every file the knowledge base reads."""
    found = []
    for path in _files(directory):
        try:
            stat = path.stat()
        except OSError:
            continue  # removed while we looked: the next check sees the folder without it
        found.append((str(path.relative_to(directory)), stat.st_size, stat.st_mtime_ns))
    return tuple(sorted(found))


def _files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return [p for p in directory.rglob("*") if p.is_file() and not any(
        part.startswith(".") for part in p.relative_to(directory).parts) and p.suffix in (".md", ".yaml", ".yml")]


def load(directory: Path, version: int = 1) -> Knowledge:
    """Read every entry (``*.md`` not starting with ``_``) and ``_templates.yaml`` under ``directory``."""
    sig = signature(directory)
    errors: list[KnowledgeError] = []
    if not directory.is_dir():
        errors.append(KnowledgeError(str(directory), 0, "the knowledge folder does not exist"))
    entries: dict[str, Entry] = {}
    for path in sorted(_files(directory)):
        name = str(path.relative_to(directory))
        if path.suffix != ".md" or path.name.startswith("_"):
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            errors.append(KnowledgeError(name, 1, "the file cannot be read as UTF-8 text"))
            continue
        entry, problems = parse_entry(name, text)
        errors.extend(problems)
        if entry is None:
            continue
        if entry.id in entries:
            errors.append(KnowledgeError(name, 2, f"id '{entry.id}' is already used by {entries[entry.id].file}"))
            continue
        entries[entry.id] = entry
    templates, problems = load_templates(directory / FILE_NAME, SAMPLE_DIR / FILE_NAME)
    errors.extend(problems)
    for error in errors:
        logger.warning("knowledge base: %s", error)
    logger.info("knowledge base: loaded %d entries, %d errors, version %d", len(entries), len(errors), version)
    return Knowledge(tuple(entries.values()), templates, tuple(errors), sig, version)


class KnowledgeBase:
    """The knowledge folder as the drafters see it: always the latest version that was on disk."""

    def __init__(self, directory: Path | str, check_interval: float = CHECK_INTERVAL) -> None:
        self.directory = Path(directory)
        self.check_interval = check_interval
        self._lock = threading.Lock()
        self._knowledge = load(self.directory)
        self._checked = time.monotonic()

    def current(self) -> Knowledge:
        """The loaded knowledge, reloaded first if a file changed since the last look."""
        now = time.monotonic()
        if now - self._checked < self.check_interval:
            return self._knowledge
        with self._lock:
            if now - self._checked >= self.check_interval:
                if signature(self.directory) != self._knowledge.signature:
                    self._knowledge = load(self.directory, self._knowledge.version + 1)
                self._checked = time.monotonic()
            return self._knowledge

    @property
    def errors(self) -> tuple[KnowledgeError, ...]:
        """What is wrong with the folder now, one line per problem (file, line, message)."""
        return self.current().errors
