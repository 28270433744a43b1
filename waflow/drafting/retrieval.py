"""Retrieval over the knowledge base: BM25 (bm25s) on stemmed terms, with typo correction (rapidfuzz).

Each entry is indexed as one document: its titles, tags and example questions in both languages. A query
word whose stems are not in the index is taken for a typo and replaced by the closest word of the index's
vocabulary within a small edit distance ("sertifkat" → "sertifikat", "pesagon" → "pesangon"): a word of
seven letters or more allows two edits, a shorter one one edit, words under five letters none (too many
short words are one edit apart). The first letter must agree: typing slips rarely hit it, while real words
the knowledge base does not use often lie one edit from one it does ("mending" from "lending").
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import bm25s
import numpy as np
from rapidfuzz import process
from rapidfuzz.distance import Levenshtein

from waflow.drafting.entries import Entry
from waflow.drafting.text import Stems, content_words, words

logger = logging.getLogger(__name__)

MIN_TYPO_LENGTH = 5
LONG_WORD = 7


@dataclass(frozen=True)
class Hit:
    entry: Entry
    score: float


def document(entry: Entry) -> str:
    """The text an entry is found by."""
    parts = [*entry.title.values(), " ".join(entry.tags)]
    for questions in entry.questions.values():
        parts.extend(questions)
    return "\n".join(parts)


class Index:
    """A BM25 index of one version of the knowledge base; immutable once built, safe to share across threads."""

    def __init__(self, entries: tuple[Entry, ...]) -> None:
        self.entries = entries
        self._local = threading.local()
        corpus_words = [content_words(words(document(entry))) for entry in entries]
        corpus = [self._stem(ws) for ws in corpus_words]
        self._terms = frozenset(term for doc in corpus for term in doc)
        self._by_initial: dict[str, list[str]] = {}
        for word in sorted({w for ws in corpus_words for w in ws}):
            self._by_initial.setdefault(word[0], []).append(word)
        self.language_words = _language_words(entries)
        self._bm25 = bm25s.BM25()
        if entries:
            self._bm25.index(corpus, show_progress=False)

    def search(self, text: str, k: int = 3) -> list[Hit]:
        """The ``k`` best entries for ``text``, best first; entries that share no term with it are left out."""
        query = self.terms(text)
        if not query or not self.entries:
            return []
        scores = self._bm25.get_scores(query)
        best = np.argsort(-scores, kind="stable")[:k]
        return [Hit(self.entries[i], float(scores[i])) for i in best if scores[i] > 0]

    def terms(self, text: str) -> list[str]:
        """The search terms of ``text``: content words, typos corrected, stemmed."""
        return self._stem([self._corrected(w) for w in content_words(words(text))])

    def _corrected(self, word: str) -> str:
        if len(word) < MIN_TYPO_LENGTH or word.isdigit() or any(s in self._terms for s in self._stems().of(word)):
            return word
        limit = 2 if len(word) >= LONG_WORD else 1
        candidates = self._by_initial.get(word[0], ())
        match = process.extractOne(word, candidates, scorer=Levenshtein.distance, score_cutoff=limit)
        return match[0] if match else word

    def _stem(self, plain: list[str]) -> list[str]:
        stems = self._stems()
        return [term for word in plain for term in stems.of(word)]

    def _stems(self) -> Stems:
        stems = getattr(self._local, "stems", None)
        if stems is None:
            stems = self._local.stems = Stems()
        return stems


def _language_words(entries: tuple[Entry, ...]) -> dict[str, frozenset[str]]:
    """Words the knowledge base writes in one of its languages only: "cerai" is Indonesian, "divorce" English."""
    seen: dict[str, set[str]] = {}
    for lang in ("id", "en"):
        seen[lang] = set()
        for entry in entries:
            text = " ".join([entry.title[lang], entry.answers[lang], *entry.questions[lang]])
            seen[lang].update(content_words(words(text)))
    return {"id": frozenset(seen["id"] - seen["en"]), "en": frozenset(seen["en"] - seen["id"])}
