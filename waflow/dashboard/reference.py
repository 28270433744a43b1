"""What the draft panel shows besides the database: the knowledge-base entries a draft used (their titles, from
the firm's knowledge folder, ``WAFLOW_KNOWLEDGE_DIR``) and the account's approved templates (asked of Meta,
``whatsapp.approved_templates``), both kept a few minutes in the process so a page never waits on them twice.
No Flask here.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import requests

from waflow import whatsapp
from waflow.config import Settings
from waflow.drafting.knowledge import KnowledgeBase

logger = logging.getLogger(__name__)

TEMPLATES_FOR = 300.0  # seconds a list of approved templates is reused
TEMPLATES_RETRY = 30.0  # after Meta failed to answer, ask again no sooner than this


@dataclass(frozen=True)
class Source:
    entry_id: str
    title: str | None  # None: the entry is no longer in the knowledge base
    score: float | None


class Reference:
    """One per dashboard app (``app.extensions["waflow.reference"]``)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._knowledge: KnowledgeBase | None = None
        self._lock = threading.Lock()
        self._templates: tuple[float, list[whatsapp.ApprovedTemplate] | None] = (0.0, None)

    def _base(self) -> KnowledgeBase | None:
        with self._lock:
            if self._knowledge is None:
                try:
                    self._knowledge = KnowledgeBase(self.settings.knowledge_dir)
                except OSError as exc:
                    logger.warning("dashboard: cannot read the knowledge base (%s)", type(exc).__name__)
                    return None
            return self._knowledge

    def sources(self, used: list[Any], locale: str) -> list[Source]:
        """The entries a draft used, with their titles in ``locale`` (or another language they have)."""
        base = self._base()
        found = []
        for item in used or []:
            entry_id = str(item.get("entry_id", "")) if isinstance(item, dict) else str(item)
            title = None
            if base is not None:
                try:
                    titles = base.current().entry(entry_id).title
                    title = titles.get(locale) or next(iter(titles.values()), None)
                except KeyError:
                    pass
            score = item.get("score") if isinstance(item, dict) else None
            found.append(Source(entry_id, title, score if isinstance(score, (int, float)) else None))
        return found

    def templates(self) -> list[whatsapp.ApprovedTemplate] | None:
        """The account's approved templates, or None when Meta cannot be asked now (no WABA id, no answer)."""
        fetched_at, known = self._templates
        age = time.monotonic() - fetched_at
        if (known is not None and age < TEMPLATES_FOR) or (known is None and fetched_at and age < TEMPLATES_RETRY):
            return known
        if not self.settings.waba_id:
            return None
        try:
            client = whatsapp.Client(self.settings.whatsapp_api_url, self.settings.access_token, pool_size=1)
            known = sorted(whatsapp.approved_templates(client, self.settings.waba_id),
                           key=lambda t: (t.name, t.language))
        except (requests.RequestException, ValueError) as exc:
            logger.warning("dashboard: the approved templates could not be listed (%s)", type(exc).__name__)
            known = None
        self._templates = (time.monotonic(), known)
        return known
