"""The chat drafter's system prompt and the messages it sends: versioned, bounded, built from the analysis.

Change ``SYSTEM_PROMPT`` only together with ``PROMPT_VERSION``: every draft records the version it was
written with, so approval rates can be compared across prompt changes.
"""
from __future__ import annotations

from collections.abc import Sequence

from waflow.drafting.retrieval import Hit
from waflow.drafting.types import ClientMessage, HistoryLine

PROMPT_VERSION = "2026-12-07.1"

SYSTEM_PROMPT = """\
You draft WhatsApp replies for {firm}, a law firm in Jakarta, Indonesia. A lawyer reads, edits and approves
every word of your draft before anything is sent; you never speak to the client directly.

Rules:
- Write the reply only: no notes to the lawyer, no subject line, no signature (the firm adds its own).
- Reply in {language}, the client's language, even when the entries below are in another language.
- Be brief, as on WhatsApp: a few short paragraphs, plain words, no Markdown headings or tables.
- Give general information only, never a final legal opinion, a promise about the outcome, or a fee that
  the entries below do not state. Say that a lawyer will advise once the facts are known.
- Use only the facts in the firm's entries below and what the client wrote. If they do not answer the
  question, say that a lawyer will look into it; never invent laws, articles, deadlines or amounts.
- Do not write a greeting about software or disclaimers: the firm adds its own notice where needed.
- End by asking for what the firm still needs to know: {missing}.
- {urgency}

The firm's entries for this conversation (id, title, answer):
{entries}
"""

LANGUAGE_NAMES = {"id": "Indonesian (Bahasa Indonesia)", "en": "English"}
MISSING_NAMES = {"name": "the client's full name", "matter": "what kind of legal matter it is",
                 "facts": "what happened and when", "deadline": "any deadline, court date or summons"}
URGENT = "This is urgent (an arrest, detention, hearing, summons or a deadline within days): say that the " \
         "message is going straight to the lawyer on duty, and ask first for what the lawyer needs to act now."
CALM = "Nothing in the messages looks urgent; do not create urgency."

# WhatsApp messages are short; these bounds keep a long conversation's prompt (and its cost) bounded.
MAX_HISTORY_LINES = 12
MAX_HISTORY_CHARS = 4000
MAX_MESSAGE_CHARS = 2000


def system_prompt(firm: str, language: str, hits: Sequence[Hit], missing: Sequence[str], urgent: bool) -> str:
    entries = "\n\n".join(f"[{hit.entry.id}] {hit.entry.title[language]}\n{hit.entry.answers[language]}"
                          for hit in hits) or "(none matched: do not answer the substance)"
    asks = ", ".join(MISSING_NAMES[m] for m in missing) or "nothing more"
    return SYSTEM_PROMPT.format(firm=firm, language=LANGUAGE_NAMES[language], missing=asks,
                                urgency=URGENT if urgent else CALM, entries=entries)


def conversation(history: Sequence[HistoryLine], messages: Sequence[ClientMessage]) -> list[dict[str, str]]:
    """The recent history (newest kept within the bounds) and then the messages to answer, as chat turns."""
    kept: list[dict[str, str]] = []
    budget = MAX_HISTORY_CHARS
    for line in reversed(history[-MAX_HISTORY_LINES:]):
        text = line.text[:MAX_MESSAGE_CHARS]
        if len(text) > budget:
            break
        budget -= len(text)
        kept.append({"role": "user" if line.role == "client" else "assistant", "content": text})
    kept.reverse()
    latest = "\n".join(_describe(m) for m in messages)
    return [*kept, {"role": "user", "content": latest}]


def _describe(message: ClientMessage) -> str:
    text = (message.text or "").strip()[:MAX_MESSAGE_CHARS]
    kind = message.media_kind or (message.type if message.type not in ("text", "interactive", "button") else None)
    if kind:
        return f"[the client sent a {kind}]" + (f" {text}" if text else "")
    return text
