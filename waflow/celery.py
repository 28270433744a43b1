"""What ``celery -A waflow`` loads: the Celery app, with every stage's tasks registered."""
from waflow.tasks import celery_app as app  # noqa: F401

app.loader.import_default_modules()
