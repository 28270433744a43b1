"""Reply drafts for the firm's WhatsApp line: a conversation in, a draft for a lawyer to approve out.

The pipeline calls ``make_drafter(settings)`` once per process and then ``drafter.draft(DraftInput(...))``
for each conversation; the result is a ``Draft`` (text, language, flags, sources, timings). Two drafters:

- ``offline`` (the default, ``offline.py``): retrieval over the firm's knowledge base (``knowledge.py``),
  no network;
- ``chat`` (``chat.py``): an OpenAI-compatible chat-completions model, given the offline retrieval's entries
  as context, falling back to the offline draft on any failure.

Nothing here is sent to a client: a lawyer approves every draft.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from waflow import config
from waflow.drafting.types import ClientMessage, Draft, Drafter, DraftInput, HistoryLine, Source

if TYPE_CHECKING:
    from waflow.drafting.chat import ChatDrafter
    from waflow.drafting.knowledge import KnowledgeBase
    from waflow.drafting.offline import OfflineDrafter
    from waflow.drafting.prompt import PROMPT_VERSION

__all__ = ["ChatDrafter", "ClientMessage", "Draft", "DraftInput", "Drafter", "HistoryLine", "KnowledgeBase",
           "OfflineDrafter", "PROMPT_VERSION", "Source", "make_drafter"]

# The drafters load on first use (PEP 562): retrieval brings bm25s, numpy and rapidfuzz (about 23 MB), and
# every worker imports this package through core's urgency check (``drafting.signals``) while only the
# drafter line drafts.
_LAZY = {"ChatDrafter": "waflow.drafting.chat", "OfflineDrafter": "waflow.drafting.offline",
         "KnowledgeBase": "waflow.drafting.knowledge", "PROMPT_VERSION": "waflow.drafting.prompt"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def make_drafter(settings: config.Settings, knowledge_base: KnowledgeBase | None = None) -> Drafter:
    """The drafter ``settings.drafter`` names, over ``settings.knowledge_dir`` (or ``knowledge_base``).

    Build it once per process: it keeps the knowledge base's index and, for ``chat``, an HTTP session.
    In production ``chat`` refuses a missing or weak ``DRAFT_LLM_API_KEY`` (``config.ConfigError``).
    """
    from waflow.drafting.chat import ChatDrafter
    from waflow.drafting.knowledge import KnowledgeBase
    from waflow.drafting.offline import OfflineDrafter

    offline = OfflineDrafter(knowledge_base or KnowledgeBase(settings.knowledge_dir))
    if settings.drafter == "offline":
        return offline
    config.require(settings, "DRAFT_LLM_API_KEY", settings.draft_llm_api_key)
    return ChatDrafter(offline, url=settings.draft_llm_url, model=settings.draft_llm_model,
                       api_key=settings.draft_llm_api_key, timeout=settings.draft_llm_timeout)
