"""waflow: the event bus behind a law firm's WhatsApp line.

``create_app`` builds the web process (the webhook gateway); the Celery app
lives in ``waflow.tasks`` and is what ``celery -A waflow`` finds through
``waflow.celery``.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    from flask import Flask


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build the Flask app; ``test_config`` overrides settings (tests pass a publisher or settings)."""
    # Imported here, not with the package: every Celery worker imports ``waflow`` and has no use for Flask.
    from flask import Flask

    from waflow import cli, config, web
    from waflow.broker import make_publisher
    from waflow.gateway import bp as gateway_bp
    from waflow.health import bp as health_bp

    app = Flask(__name__)
    settings = (test_config or {}).get("WAFLOW_SETTINGS") or config.settings
    app.config.from_mapping(
        WAFLOW_SETTINGS=settings,
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
        # Error pages never echo configuration; secrets stay out of them and of logs.
        PROPAGATE_EXCEPTIONS=False,
    )
    if test_config:
        app.config.from_mapping({k: v for k, v in test_config.items() if k != "WAFLOW_PUBLISHER"})
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app.extensions["waflow.publisher"] = (test_config or {}).get("WAFLOW_PUBLISHER") or make_publisher(settings)
    web.init_app(app)
    app.register_blueprint(gateway_bp)
    app.register_blueprint(health_bp)
    for command in cli.commands():
        app.cli.add_command(command)
    return app
