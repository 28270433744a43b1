"""``gunicorn wsgi:app`` and ``flask --app wsgi``."""
from waflow import create_app

app = create_app()
