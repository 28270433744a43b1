"""A task that notes each run, for the consumer-timeout fault test (loaded with ``-I countdown_tasks``)."""
from __future__ import annotations

from waflow import queues
from waflow.tasks import stage_task


@stage_task(name="tests.countdown.note", queue=queues.MEDIA_PROCESSING)
def note(path: str) -> None:
    with open(path, "a") as f:
        f.write("ran\n")
