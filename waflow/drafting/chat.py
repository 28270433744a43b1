"""The chat-completions drafter: any OpenAI-compatible ``POST {DRAFT_LLM_URL}/chat/completions``.

It sends the versioned system prompt (``prompt.py``) with the offline retrieval's best entries as context,
the recent conversation (bounded) and the messages to answer. Timeouts, 429 and 5xx are retried a bounded
number of times with a short backoff; other 4xx are not (the same request would fail again). Any failure
falls back to the offline drafter, and the draft records why (``fallback_reason``, flag ``fallback``).

Client text leaves the firm here: ``waflow.config`` lets this drafter run only where the firm said so
(``DRAFT_LLM_SEND_CLIENT_TEXT``). Prompts and answers are never logged; failures are logged by reason code.
"""
from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any

import requests

from waflow.drafting.compose import compose
from waflow.drafting.offline import OfflineDrafter, log_draft
from waflow.drafting.prompt import PROMPT_VERSION, conversation, system_prompt
from waflow.drafting.types import Draft, DraftInput, Source, ordered_flags

logger = logging.getLogger(__name__)

# Two retries cover a model server's brief overload without keeping the client waiting long: no retry
# starts once DRAFT_LLM_TIMEOUT has passed since the first request, so a draft waits at most about twice it.
RETRIES = 2
BACKOFF = 0.5  # seconds before the first retry, doubled for the next
MAX_BACKOFF = 4.0  # a longer Retry-After is not waited for: the offline draft follows instead
CONNECT_TIMEOUT = 5.0
MAX_TOKENS = 600  # a WhatsApp reply; a longer answer is cut and the draft flagged incomplete
TEMPERATURE = 0.2


class ChatFailure(Exception):
    """Why the model gave no usable answer: a reason code and a short text, never the server's body."""

    def __init__(self, code: str, detail: str, retryable: bool = False, retry_after: float | None = None) -> None:
        super().__init__(f"{code}: {detail}")
        self.code, self.detail, self.retryable, self.retry_after = code, detail, retryable, retry_after

    @property
    def reason(self) -> str:
        return f"{self.code}: {self.detail}"


class ChatDrafter:
    name = "chat"

    def __init__(self, offline: OfflineDrafter, *, url: str, model: str, api_key: str, timeout: float,
                 retries: int = RETRIES, backoff: float = BACKOFF) -> None:
        self.offline = offline
        self.knowledge_base = offline.knowledge_base
        self.endpoint = url.rstrip("/") + "/chat/completions"
        self.model = model
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        # One session per drafter: its connections are reused between drafts (urllib3's pool is thread-safe).
        self.session = requests.Session()
        self.session.headers.update({"Authorization": f"Bearer {api_key}"})

    def draft(self, request: DraftInput) -> Draft:
        started = time.monotonic()
        analysis = self.offline.analyse(request)
        templates = analysis.knowledge.templates
        prompt = system_prompt(templates.data["firm"]["name"], analysis.language, analysis.retrieved,
                               analysis.missing, "urgent" in analysis.flags)
        body = {"model": self.model, "stream": False, "temperature": TEMPERATURE, "max_tokens": MAX_TOKENS,
                "messages": [{"role": "system", "content": prompt},
                             *conversation(request.history, request.messages)]}
        try:
            text, finish_reason, usage = _parse(self._post(body, started))
        except ChatFailure as failure:
            return self._fallback(request, failure, started)
        flags = set(analysis.flags) | ({"incomplete"} if finish_reason == "length" else set())
        latency_ms = round((time.monotonic() - started) * 1000)
        log_draft(request, "chat", analysis, latency_ms, finish=finish_reason)
        return Draft(
            text=compose(templates, analysis.language, answers=(), first_contact=request.first_contact,
                         contact_name=request.contact_name, media_kinds=analysis.media_kinds,
                         urgent="urgent" in analysis.flags, missing=analysis.missing, body=text),
            language=analysis.language, flags=ordered_flags(flags), confidence=analysis.confidence,
            sources=tuple(Source(h.entry.id, round(h.score, 3)) for h in analysis.retrieved), drafter="chat",
            model=self.model, prompt_version=PROMPT_VERSION, latency_ms=latency_ms,
            prompt_tokens=usage.get("prompt_tokens"), completion_tokens=usage.get("completion_tokens"),
            finish_reason=finish_reason)

    def _post(self, body: dict[str, Any], started: float) -> Any:
        attempt = 0
        while True:
            attempt += 1
            try:
                return self._attempt(body)
            except ChatFailure as failure:
                wait = min(max(failure.retry_after or 0.0, self.backoff * 2 ** (attempt - 1)), MAX_BACKOFF)
                out_of_time = time.monotonic() - started + wait >= self.timeout
                if not failure.retryable or attempt > self.retries or out_of_time:
                    if attempt > 1:
                        failure.detail += f" ({attempt} attempts)"
                    raise
                logger.info("chat drafter: %s, retrying in %.1f s", failure.code, wait)
                time.sleep(wait)

    def _attempt(self, body: dict[str, Any]) -> Any:
        try:
            response = self.session.post(self.endpoint, json=body,
                                         timeout=(min(CONNECT_TIMEOUT, self.timeout), self.timeout))
        except requests.Timeout:
            raise ChatFailure("timeout", f"no answer within {self.timeout:g} s", retryable=True) from None
        except requests.ConnectionError:
            raise ChatFailure("connection", "the model server could not be reached", retryable=True) from None
        except requests.RequestException as exc:
            raise ChatFailure("request", type(exc).__name__) from None
        status = response.status_code
        if status == 200:
            try:
                return response.json()
            except ValueError:
                raise ChatFailure("malformed", "the answer is not JSON") from None
        raise ChatFailure(f"http_{status}", _STATUS_TEXT.get(status, "the model server refused the request"),
                          retryable=status == 429 or status >= 500,
                          retry_after=_seconds(response.headers.get("Retry-After")))

    def _fallback(self, request: DraftInput, failure: ChatFailure, started: float) -> Draft:
        logger.warning("draft: conversation=%s chat drafter failed (%s); the offline draft stands in",
                       request.conversation_id, failure.reason)
        draft = self.offline.draft(request)
        return replace(draft, flags=ordered_flags(set(draft.flags) | {"fallback"}), fallback_reason=failure.reason,
                       latency_ms=round((time.monotonic() - started) * 1000))


_STATUS_TEXT = {
    400: "the model server rejected the request", 401: "the model server refused the API key",
    403: "the model server refused the API key", 404: "no such model or endpoint",
    429: "the model server is rate limiting", 500: "the model server failed",
    502: "the model server's gateway failed", 503: "the model server is unavailable",
    504: "the model server's gateway timed out",
}


def _seconds(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None


def _parse(answer: Any) -> tuple[str, str | None, dict[str, int]]:
    """The reply text, finish reason and token counts of a chat-completions answer."""
    try:
        choice = answer["choices"][0]
        text = choice["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise ChatFailure("malformed", "the answer has no choices[0].message.content") from None
    if not isinstance(text, str):
        raise ChatFailure("malformed", "the answer's content is not text")
    if not text.strip():
        raise ChatFailure("empty", "the model returned no text")
    finish = choice.get("finish_reason") if isinstance(choice, dict) else None
    usage = answer.get("usage") if isinstance(answer.get("usage"), dict) else {}
    counts = {k: v for k, v in usage.items() if k in ("prompt_tokens", "completion_tokens") and isinstance(v, int)}
    return text, finish if isinstance(finish, str) else None, counts
