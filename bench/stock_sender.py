"""``celery -A waflow`` on stock Celery's worker consumer: the baseline of ``bench/send.py``.

Takes the same arguments as ``celery -A waflow`` (``worker -Q ... -P threads ...``) and runs that
worker with ``worker_consumer`` set back to Celery's own, so the send task's ``rate_limit`` is
enforced the stock way (per worker, one timer per waiting message).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from waflow.celery import app  # noqa: E402

app.conf.worker_consumer = "celery.worker.consumer:Consumer"
app.worker_main(sys.argv[1:])
