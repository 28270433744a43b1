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

    @property
    def celery(self) -> bool:
        return self.process is None


STAGES: tuple[Stage, ...] = (
    Stage("ingestor", "waflow.ingestor", (queues.INCOMING_RAW,), ("waflow.ingestor.ingest_raw",)),
    Stage("core", "waflow.core", (queues.INCOMING_NORMALIZED,), ("waflow.core.handle_normalized",)),
    Stage("media", "waflow.media", (queues.MEDIA_PROCESSING,), ("waflow.media.record_media",)),
    # Two lanes, one task: replies in wa.outgoing.command go ahead of broadcasts.
    Stage("sender", "waflow.outbound", (queues.OUTGOING_COMMAND, queues.OUTGOING_BROADCAST),
          ("waflow.outbound.send_message",)),
    # Not a Celery task: dead-letter records are not task messages (waflow/dlq/recorder.py).
    Stage("deadletter", "waflow.dlq.recorder", (queues.DEAD_LETTER,), process="flask --app wsgi dlq record"),
)

# Seed queues declared on the broker that no stage consumes yet, with the issue that adds their consumer.
NOT_YET_CONSUMED: dict[str, str] = {
    queues.AI_DRAFT_CREATED: "the AI-draft issue",
    queues.AI_DRAFT_APPROVED: "the AI-draft issue",
}

BY_NAME = {stage.name: stage for stage in STAGES}
_TASK_QUEUE = {task: stage.consumes[0] for stage in STAGES for task in stage.tasks}


def queue_of(task: str) -> str:
    """The queue a task is routed to unless its publisher names another (a lane)."""
    try:
        return _TASK_QUEUE[task]
    except KeyError:
        raise KeyError(f"no stage runs the task {task!r} (waflow/stages.py)") from None


def task_routes() -> dict[str, dict[str, str]]:
    """Celery's ``task_routes``: every task to its stage's first queue."""
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
