"""The offline drafter (the default): retrieval over the firm's knowledge base, no network, no download.

It answers what the matched entries answer, in the conversation's language, asks the intake questions the
client has not answered, and flags what a lawyer must see first. The index is built once per version of
the knowledge base and shared by every thread; a draft then takes about a millisecond.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from waflow.drafting.compose import compose
from waflow.drafting.entries import INTAKE_FIELDS
from waflow.drafting.knowledge import Knowledge, KnowledgeBase
from waflow.drafting.retrieval import Hit, Index
from waflow.drafting.signals import answered_intake, detect_language, is_urgent
from waflow.drafting.text import words
from waflow.drafting.types import Draft, DraftInput, Source, ordered_flags

logger = logging.getLogger(__name__)

# BM25 scores have no fixed scale; these were set on the dev half of the evaluation set
# (docs/benchmarks.md, "Drafting"). HALF_CONFIDENCE is the top score that maps to a confidence of 0.5.
HALF_CONFIDENCE = 4.0
LOW_CONFIDENCE = 0.33  # below it the draft holds instead of answering: no answer beats a wrong one
SECOND_ANSWER = 0.75  # a runner-up within this share of the best score is answered too
MAX_ANSWERS = 3
RETRIEVED = 3  # entries kept as sources and handed to the chat drafter as context
MEDIA_TYPES = frozenset({"image", "document", "audio", "video", "sticker"})


@dataclass(frozen=True)
class Analysis:
    """Everything a drafter decides before it writes: shared by the offline and the chat drafter."""

    knowledge: Knowledge
    language: str
    retrieved: tuple[Hit, ...]  # best first
    answers: tuple[Hit, ...]  # the entries the offline draft answers from
    confidence: float
    flags: frozenset[str]
    missing: tuple[str, ...]  # intake questions still to ask, in INTAKE_FIELDS' order
    media_kinds: tuple[str | None, ...]


def confidence(score: float) -> float:
    return round(score / (score + HALF_CONFIDENCE), 3) if score > 0 else 0.0


class OfflineDrafter:
    name = "offline"

    def __init__(self, knowledge_base: KnowledgeBase) -> None:
        self.knowledge_base = knowledge_base
        self._lock = threading.Lock()
        self._index: tuple[int, Index] | None = None

    def index(self) -> tuple[Knowledge, Index]:
        """The current knowledge and its index, rebuilt only when the knowledge base changed."""
        knowledge = self.knowledge_base.current()
        built = self._index
        if built is None or built[0] != knowledge.version:
            with self._lock:
                built = self._index
                if built is None or built[0] != knowledge.version:
                    started = time.perf_counter()
                    built = self._index = (knowledge.version, Index(knowledge.entries))
                    logger.info("drafting index: version %d, %d entries, built in %.0f ms", knowledge.version,
                                len(knowledge.entries), (time.perf_counter() - started) * 1000)
        return knowledge, built[1]

    def analyse(self, request: DraftInput) -> Analysis:
        knowledge, index = self.index()
        texts = [m.text for m in request.messages if m.text and m.text.strip()]
        current = [w for text in texts for w in words(text)]
        earlier = [w for line in request.history if line.role == "client" for w in words(line.text)]
        language = detect_language(current, earlier, index.language_words)
        retrieved, answers = _retrieve(index, texts)
        best = retrieved[0].score if retrieved else 0.0
        media = tuple(m.media_kind or m.type for m in request.messages if m.media_kind or m.type in MEDIA_TYPES)
        flags = {"low_confidence"} if confidence(best) < LOW_CONFIDENCE else set()
        # Urgency is read from the messages being answered only: an arrest the history mentions may be long
        # settled, and the lawyer sees the history anyway.
        if is_urgent(current):
            flags.add("urgent")
        if request.first_contact:
            flags.add("first_contact")
        if media:
            flags.add("has_media")
        if "low_confidence" in flags:
            answers = ()
        answered = answered_intake(earlier + current, request.contact_name)
        for hit in answers:
            answered |= hit.entry.intake_answered
        missing = tuple(f for f in INTAKE_FIELDS if f not in answered)
        return Analysis(knowledge, language, retrieved, answers, confidence(best), frozenset(flags), missing, media)

    def draft(self, request: DraftInput) -> Draft:
        started = time.perf_counter()
        analysis = self.analyse(request)
        text = compose(
            analysis.knowledge.templates, analysis.language,
            answers=[hit.entry.answers[analysis.language] for hit in analysis.answers],
            first_contact=request.first_contact, contact_name=request.contact_name,
            media_kinds=analysis.media_kinds, urgent="urgent" in analysis.flags, missing=analysis.missing)
        sources = tuple(Source(hit.entry.id, round(hit.score, 3)) for hit in analysis.answers)
        latency_ms = round((time.perf_counter() - started) * 1000)
        log_draft(request, "offline", analysis, latency_ms)
        return Draft(text=text, language=analysis.language, flags=ordered_flags(set(analysis.flags)),
                     confidence=analysis.confidence, sources=sources, drafter="offline", model=None,
                     prompt_version=None, latency_ms=latency_ms)


def _retrieve(index: Index, texts: list[str]) -> tuple[tuple[Hit, ...], tuple[Hit, ...]]:
    """Search each message and all of them together; each message's best entry is answered."""
    if not texts:
        return (), ()
    best: dict[str, Hit] = {}
    answers: dict[str, Hit] = {}
    searches = [index.search(" ".join(texts), RETRIEVED)]
    if len(texts) > 1:
        searches += [index.search(text, RETRIEVED) for text in texts]
    for hits in searches:
        for hit in hits:
            if hit.entry.id not in best or hit.score > best[hit.entry.id].score:
                best[hit.entry.id] = hit
        if hits and confidence(hits[0].score) >= LOW_CONFIDENCE:
            answers.setdefault(hits[0].entry.id, hits[0])
    retrieved = sorted(best.values(), key=lambda h: -h.score)[:RETRIEVED]
    if len(retrieved) > 1 and retrieved[1].score >= SECOND_ANSWER * retrieved[0].score:
        answers.setdefault(retrieved[1].entry.id, retrieved[1])
    ranked = sorted(answers.values(), key=lambda h: -h.score)[:MAX_ANSWERS]
    return tuple(retrieved), tuple(ranked)


def log_draft(request: DraftInput, drafter: str, analysis: Analysis, latency_ms: int, **extra: object) -> None:
    """One line per draft: ids, counts, sizes and scores only, never what the client wrote."""
    chars = sum(len(m.text or "") for m in request.messages)
    sources = ",".join(f"{h.entry.id}:{h.score:.2f}" for h in analysis.retrieved) or "-"
    details = "".join(f" {key}={value}" for key, value in extra.items())
    logger.info("draft: conversation=%s drafter=%s messages=%d chars=%d language=%s flags=%s sources=%s "
                "confidence=%.2f latency_ms=%d%s", request.conversation_id, drafter, len(request.messages), chars,
                analysis.language, ",".join(sorted(analysis.flags)) or "-", sources, analysis.confidence,
                latency_ms, details)
