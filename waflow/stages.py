"""The stage registry: which stage consumes which queue, with which task or process, on which Procfile line.

This is the one place the pipeline's wiring is written. Celery's ``task_routes`` and
``imports`` are derived from it (``celeryconfig.py``), stages hand work on by task name
through it (``waflow.tasks.dispatch``), and ``tests/test_stages.py`` holds it against
what is independent of it: the queues ``waflow.queues`` declares, the tasks Celery has
registered after import, both Procfiles' ``-Q`` lists and README.md's queue table.

It names modules and tasks as strings, so infrastructure can read it without importing
a single stage.
"""
from __future__ import annotations

from dataclasses import dataclass

from waflow import queues


@dataclass(frozen=True)
class Stage:
    """One consumer of queues: a Celery worker line, or a process of its own (``process``)."""

    # The Procfile line that runs it (Procfile and Procfile.dev use the same name).
    name: str
    # The module that holds it; Celery imports it in every worker (``imports``).
    module: str
    # The queues it consumes; the first is where its tasks are routed by default.
    consumes: tuple[str, ...]
    # The Celery tasks it runs, by wire name (pinned: a rename must show).
    tasks: tuple[str, ...] = ()
    # For a stage that is not a Celery worker: the command its Procfile line runs.
    process: str | None = None
    # Tasks routed to another of its queues than the first: (task, queue) pairs.
    routes: tuple[tuple[str, str], ...] = ()

    @property
    def celery(self) -> bool:
        return self.process is None

    def queue_of(self, task: str) -> str:
        """The queue this stage's task ``task`` is routed to."""
        return dict(self.routes).get(task, self.consumes[0])


STAGES: tuple[Stage, ...] = (
    Stage("ingestor", "waflow.ingestor", (queues.INCOMING_RAW,), ("waflow.ingestor.ingest_raw",)),
    # Core also takes lawyers' approvals and hands each to the sender (waflow/drafts/sending.py).
    Stage("core", "waflow.core", (queues.INCOMING_NORMALIZED, queues.AI_DRAFT_APPROVED),
          ("waflow.core.handle_normalized", "waflow.core.send_approved"),
          routes=(("waflow.core.send_approved", queues.AI_DRAFT_APPROVED),)),
    Stage("media", "waflow.media", (queues.MEDIA_PROCESSING,), ("waflow.media.record_media",)),
    # Two lanes, one task: replies in wa.outgoing.command go ahead of broadcasts.
    Stage("sender", "waflow.outbound", (queues.OUTGOING_COMMAND, queues.OUTGOING_BROADCAST),
          ("waflow.outbound.send_message",)),
    # Not a Celery task: dead-letter records are not task messages (waflow/dlq/recorder.py).
    Stage("deadletter", "waflow.dlq.recorder", (queues.DEAD_LETTER,), process="flask --app wsgi dlq record"),
    # Its own line (threads pool), so a slow model never holds up core.
    Stage("drafter", "waflow.drafts.drafter", (queues.AI_DRAFT_REQUESTED,), ("waflow.drafts.drafter.draft_reply",)),
    # Records each ready or failed draft in the change log the dashboard reads.
    Stage("announcer", "waflow.drafts.announcer", (queues.AI_DRAFT_CREATED,),
          ("waflow.drafts.announcer.announce_draft",)),
)

# Seed queues declared on the broker that no stage consumes yet, with the issue that adds their consumer.
NOT_YET_CONSUMED: dict[str, str] = {}

BY_NAME = {stage.name: stage for stage in STAGES}
_TASK_QUEUE = {task: stage.queue_of(task) for stage in STAGES for task in stage.tasks}


def queue_of(task: str) -> str:
    """The queue a task is routed to unless its publisher names another (a lane)."""
    try:
        return _TASK_QUEUE[task]
    except KeyError:
        raise KeyError(f"no stage runs the task {task!r} (waflow/stages.py)") from None


def task_routes() -> dict[str, dict[str, str]]:
    """Celery's ``task_routes``: every task to its stage's first queue, or the one its ``routes`` names."""
    return {task: {"queue": queue} for task, queue in _TASK_QUEUE.items()}


def imports() -> tuple[str, ...]:
    """Celery's ``imports``: the module of every stage that runs Celery tasks."""
    return tuple(stage.module for stage in STAGES if stage.celery)


def consumer_of(queue: str) -> Stage | None:
    """The stage that consumes ``queue``, or None."""
    found = [stage for stage in STAGES if queue in stage.consumes]
    if len(found) > 1:
        raise RuntimeError(f"{queue} has more than one consumer: {', '.join(s.name for s in found)}")
    return found[0] if found else None
