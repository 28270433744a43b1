"""Celery settings for waflow (lowercase names, values from ``waflow.config``).

Why each non-default value is set is said beside it; the facts behind them are
in ``docs/reliability.md`` and ``../shared/reference/celery.md``.
"""
from waflow import config as _config
from waflow import queues as _queues
from waflow import stages as _stages

# Private names: Celery reads every public name of this module as a setting, and Flower shows them.
_settings = _config.settings

broker_url = _settings.broker_url

broker_transport_options = _queues.transport_options(_settings)

broker_connection_retry_on_startup = True
broker_pool_acquire_timeout = 30

task_serializer = "json"
accept_content = ["json"]
# Nothing reads task results: every outcome lives in PostgreSQL.
task_ignore_result = True
result_backend = None

task_queues = _queues.declarations()
task_default_exchange = _queues.EXCHANGE.name
task_default_exchange_type = "direct"
# A routing typo must raise, not create a queue nobody consumes.
task_create_missing_queues = False
task_default_queue = _queues.INCOMING_RAW
# Each task goes to its stage's queue; the stage registry (waflow/stages.py) is where that is written.
task_routes = _stages.task_routes()

# Every stage task is idempotent, so it acknowledges only after it ran: a worker
# killed mid-task leaves the message to be redelivered, not lost.
task_acks_late = True
# Held (prefetched) messages are few: four per pool process (16 for a core worker with -c 4).
worker_prefetch_multiplier = 4

# Task events cost three publishes per task (about 14% of end-to-end throughput, see
# docs/benchmarks.md), so workers send none until a monitor asks: Flower switches them on
# (its enable_events broadcast) while it runs. argsrepr keeps client text out of them.
worker_send_task_events = False
task_send_sent_event = False

# Every worker imports every stage's module, so any task can be run or replayed by name.
imports = _stages.imports()

# The send task's rate_limit="80/s" becomes one limit per phone number across every worker and
# host (shared through waflow.limiter), paced evenly, replies ahead of broadcasts; stock Celery's
# bucket is per worker and collapses to a few tasks a second with a backlog (waflow/consumer.py).
worker_consumer = "waflow.consumer:PacedConsumer"

timezone = "UTC"
enable_utc = True
