"""What a conversation's words say besides its topic: its language, whether it is urgent, what intake
questions it has already answered. All three read their words from ``data/`` (language.yaml, urgency.yaml,
intake.yaml) and look at the plain words of ``text.words()``, so "sy", "bsk" and "dlm 3 hr" count.
"""
from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from waflow.drafting.text import data_file


@dataclass(frozen=True)
class WordRule:
    """Single words, word sequences and regular expressions, any of which matches."""

    words: frozenset[str] = frozenset()
    phrases: tuple[str, ...] = ()
    patterns: tuple[re.Pattern[str], ...] = ()
    negations: frozenset[str] = frozenset()

    @classmethod
    def from_data(cls, data: Mapping) -> WordRule:
        return cls(frozenset(data.get("words", ())), tuple(" ".join(p) for p in data.get("phrases", ())),
                   tuple(re.compile(p) for p in data.get("patterns", ())), frozenset(data.get("negations", ())))

    def matches(self, plain: list[str]) -> bool:
        # A word counts unless negated just before it ("tidak memukul"): the firm wants the urgent flag
        # on violence that happens, not on a question about what counts as violence.
        for index, word in enumerate(plain):
            if word in self.words and (index == 0 or plain[index - 1] not in self.negations):
                return True
        joined = f" {' '.join(plain)} "
        return any(f" {phrase} " in joined for phrase in self.phrases) or any(
            pattern.search(joined) for pattern in self.patterns)


@functools.cache
def _function_words() -> dict[str, frozenset[str]]:
    return {lang: frozenset(listed) for lang, listed in data_file("language.yaml").items()}


@functools.cache
def urgency_rule() -> WordRule:
    return WordRule.from_data(data_file("urgency.yaml"))


@functools.cache
def _intake_rules() -> tuple[WordRule, WordRule, int, WordRule]:
    rules = data_file("intake.yaml")
    facts = rules["facts"]
    return (WordRule.from_data(rules["name"]), WordRule.from_data(facts), int(facts["min_words"]),
            WordRule.from_data(rules["deadline"]))


def _count(plain: Iterable[str], vocabulary: Mapping[str, frozenset[str]]) -> tuple[int, int]:
    found = list(plain)
    return sum(w in vocabulary["id"] for w in found), sum(w in vocabulary["en"] for w in found)


def _decide(indonesian: int, english: int) -> str | None:
    """Mixed messages count as Indonesian: any two Indonesian function words, or as many as English ones."""
    if indonesian == english == 0:
        return None
    return "id" if indonesian >= 2 or indonesian >= english else "en"


def detect_language(current: list[str], earlier: list[str], vocabulary: Mapping[str, frozenset[str]]) -> str:
    """``id`` or ``en`` for a conversation: its unanswered messages' words, then its earlier client words.

    Function words decide first; the words only the knowledge base's answers in one language use
    (``vocabulary``: "divorce" against "cerai") decide when there are none. Too little to go on (a message
    such as "ok") takes the earlier messages into account, and a conversation with nothing at all is
    Indonesian, the firm's language.
    """
    for words_of in (_function_words(), vocabulary):
        indonesian, english = _count(current, words_of)
        if indonesian + english < 2:
            more_id, more_en = _count(earlier, words_of)
            indonesian, english = indonesian + more_id, english + more_en
        decided = _decide(indonesian, english)
        if decided:
            return decided
    return "id"


def is_urgent(plain: list[str]) -> bool:
    """Whether the firm's urgency rule (``data/urgency.yaml``) matches these words."""
    return urgency_rule().matches(plain)


def answered_intake(plain: list[str], contact_name: str | None) -> set[str]:
    """The intake questions the client's words already answer (``matter`` is left to retrieval)."""
    name, facts, min_words, deadline = _intake_rules()
    answered = set()
    if (contact_name and contact_name.strip()) or name.matches(plain):
        answered.add("name")
    if len(plain) >= min_words and facts.matches(plain):
        answered.add("facts")
    if deadline.matches(plain):
        answered.add("deadline")
    return answered
