"""Tasks that fail in each way a message can fail, for ``test_dead_letter_paths.py``.

Loaded into a real worker with ``-I dead_letter_tasks``; they use the media queue
(the tests' own vhost, purged around each test).
"""
from __future__ import annotations

import os

from celery.exceptions import Reject
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy.exc import OperationalError

from waflow import queues, tasks
from waflow.dlq import records
from waflow.tasks import StageTask, stage_task

# Few redeliveries, so the test restarts the worker only a few times.
tasks.REDELIVERY_LIMIT = 1
# A fast retry budget for a worker that keeps losing its pool process.
tasks.BACKOFF_FACTOR = 0


class RetriesCannotBePublished(StageTask):
    def apply_async(self, args=None, kwargs=None, **options):  # type: ignore[override]
        if options.get("retries"):
            raise BrokerError("the broker refused the retry")
        return super().apply_async(args, kwargs, **options)


@stage_task(name="tests.paths.die", queue=queues.MEDIA_PROCESSING, default_retry_delay=0)
def die(marker: str) -> None:
    """Kill the process running it: a prefork pool process, or the whole solo worker."""
    os._exit(1)


@stage_task(name="tests.paths.reject", queue=queues.MEDIA_PROCESSING)
def reject(marker: str) -> None:
    raise Reject("this message is refused", requeue=False)


@stage_task(name="tests.paths.unpublishable_retry", queue=queues.MEDIA_PROCESSING, base=RetriesCannotBePublished)
def unpublishable_retry(marker: str) -> None:
    raise OperationalError("SELECT 1", {}, ConnectionRefusedError("database down"))


_publish = records.publish


def _publish_unless_unrecorded(app, record):
    if record.get("task") == "tests.paths.fail_unrecorded":
        raise BrokerError("dead-letter record refused")
    return _publish(app, record)


records.publish = _publish_unless_unrecorded


@stage_task(name="tests.paths.fail_unrecorded", queue=queues.MEDIA_PROCESSING)
def fail_unrecorded(marker: str) -> None:
    raise ValueError("a permanent error whose record cannot be published")
