"""The drafter stage: consumes ``wa.ai.draft.requested``, drafts a conversation's reply, publishes
``wa.ai.draft.created``.

``draft_reply(request_id)`` claims the request once it is due (``claiming``), drafts with the
configured drafter (``waflow.drafting``: ``DRAFTER=offline`` or ``chat``), stores the draft as
``ready`` (or ``failed``, with why) and announces it. A task that arrives before the due time (the
client wrote again meanwhile) goes back on the queue until then; a second task for the same request
(a redelivery, the sweep) finds it claimed and stands down.

It runs on its own Procfile line, on the threads pool: a chat-completions model keeps a draft waiting
on HTTP for seconds, and a thread waits for it at no CPU cost, so the line's concurrency
(``DRAFTER_CONCURRENCY``) is how many conversations are drafted at once. No database connection is
held while the model answers. Each drafter worker also runs the sweep (``sweep.Timer``).

Client text goes to a third party only with ``DRAFTER=chat`` and the firm's explicit switch
(``waflow.config``); prompts and answers are never logged (``waflow.drafting`` logs ids and counts).
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from celery import signals
from requests.adapters import HTTPAdapter

from waflow import config, queues
from waflow.db import transaction
from waflow.drafting import Drafter, make_drafter
from waflow.drafts import claiming, publish, sweep
from waflow.tasks import stage_task

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_drafter: Drafter | None = None
_timer: sweep.Timer | None = None
# The chat drafter's connections to the model server: one per thread that may wait on it.
MODEL_CONNECTIONS = 64


def drafter() -> Drafter:
    """This process's drafter, built once (its knowledge-base index and HTTP session are shared by threads)."""
    global _drafter
    if _drafter is None:
        with _lock:
            if _drafter is None:
                made = make_drafter(config.settings)
                # Imported here, not at the top: every worker imports this module (Celery's ``imports``), and
                # the drafters load retrieval's libraries (``waflow.drafting``), which only this line needs.
                from waflow.drafting.chat import ChatDrafter

                if isinstance(made, ChatDrafter):
                    # requests keeps 10 connections per host by default; more threads would open and
                    # drop a connection per draft.
                    adapter = HTTPAdapter(pool_connections=1, pool_maxsize=MODEL_CONNECTIONS)
                    made.session.mount("http://", adapter)
                    made.session.mount("https://", adapter)
                _drafter = made
    return _drafter


def lease(settings: config.Settings = config.settings) -> timedelta:
    """How long a claim holds before another task may take the draft over: the chat drafter's longest
    wait (its timeout twice, retries included) and a margin."""
    return timedelta(seconds=2 * settings.draft_llm_timeout + 30)


@dataclass(frozen=True)
class Outcome:
    status: str
    again_in: float | None = None  # not due yet: look again after this many seconds
    announce: int | None = None  # the draft to announce (wa.ai.draft.created)


def draft_request(request_id: int, task_id: str | None, *, database_url: str | None = None,
                  using: Drafter | None = None, now: datetime | None = None) -> Outcome:
    """Claim, draft, store: one attempt at one request. Returns what to publish (the caller does, after)."""
    with transaction(database_url) as conn:
        step = claiming.claim(conn, request_id, task_id, lease=lease(), now=now)
    if isinstance(step, claiming.NotDue):
        return Outcome("not due", again_in=step.seconds)
    if isinstance(step, claiming.Skipped):
        return Outcome(step.reason, announce=step.announce)
    made, error = None, None
    try:
        made = (using or drafter()).draft(step.input)
    except Exception as exc:  # noqa: BLE001 - stored as a failed draft, so a person still sees the client waiting
        error = f"the drafter failed ({type(exc).__name__})"
        logger.error("draft_reply: request %s: %s", request_id, error)
    with transaction(database_url) as conn:
        status = claiming.finish(conn, step, task_id, made, error)
    logger.info("draft_reply: request %s -> draft %s %s", request_id, step.draft_id, status)
    return Outcome(status, announce=step.draft_id if status in ("ready", "failed") else None)


@stage_task(name=publish.DRAFT_TASK, queue=queues.AI_DRAFT_REQUESTED)
def draft_reply(request_id: int) -> str:
    """Draft the reply a request asks for, once it is due."""
    outcome = draft_request(request_id, draft_reply.request.id)
    if outcome.again_in is not None:
        publish.draft_at(request_id, max(0.05, outcome.again_in))
    if outcome.announce is not None:
        publish.created(outcome.announce)
    return outcome.status


# --- the drafter worker: its configuration checked at start, and its sweep -----------------------------------


def _drafts_here(app: Any) -> bool:
    """Whether this worker consumes wa.ai.draft.requested (every worker imports this module)."""
    consumed = app.amqp.queues.consume_from
    return consumed is None or queues.AI_DRAFT_REQUESTED in consumed


@signals.worker_init.connect
def _prepare_the_drafter(sender: Any = None, **_: Any) -> None:
    """A drafter worker builds its drafter and the knowledge base's index before it takes a task (the
    first drafts would otherwise wait for the index together), and a production chat drafter without a
    proper DRAFT_LLM_API_KEY stops the line at start, naming the variable (exit 78)."""
    if sender is not None and _drafts_here(sender.app):
        try:
            made = drafter()
        except config.ConfigError as exc:
            raise config.refuse_to_start(exc) from None
        from waflow.drafting.chat import ChatDrafter  # loaded by drafter() above

        (made.offline if isinstance(made, ChatDrafter) else made).index()


@signals.worker_ready.connect
def _start_the_sweep(sender: Any = None, **_: Any) -> None:
    global _timer
    if sender is not None and _drafts_here(sender.app) and _timer is None:
        _timer = sweep.Timer(lease()).start()
        logger.info("drafter: sweeping for lost draft work every %.0f s", _timer.interval)


@signals.worker_shutdown.connect
def _stop_the_sweep(**_: Any) -> None:
    if _timer is not None:
        _timer.stop()
