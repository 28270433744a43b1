"""The lawyers' dashboard: its own Flask app and process (the ``dashboard`` Procfile line), so that a lawyer's
page never delays Meta's webhook, which the ``web`` line serves alone.

``create_dashboard_app()`` is what gunicorn runs (``gunicorn -c gunicorn.conf.py
'waflow.dashboard:create_dashboard_app()'``). One blueprint module per area: ``auth`` (login, logout),
``inbox``, ``conversations`` (a conversation and its fragments), ``review`` (decisions on drafts), ``live``
(the change log for open pages), ``media`` (clients' files, behind the login), ``people`` (admins: the users),
``audit`` (decisions, their CSV, the weekly report), ``i18n`` (languages); ``security`` guards every route
(private by default), ``layout`` feeds the one base template and renders error pages, ``startup`` holds
production's refusals. A page's view checks, calls one plain function (the same one the CLI calls) and renders.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping

from flask import Flask, Response, redirect, url_for


def create_dashboard_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build the dashboard; ``test_config`` overrides Flask settings (tests pass ``WAFLOW_SETTINGS``)."""
    from waflow import config, web
    from waflow.dashboard import (audit, auth, conversations, formatting, i18n, inbox, layout, live, media, people,
                                  reference, review, security, startup)

    settings = (test_config or {}).get("WAFLOW_SETTINGS") or config.settings
    startup.check(settings)
    app = Flask(__name__)
    app.config.from_mapping(
        WAFLOW_SETTINGS=settings,
        # Error pages never echo configuration or exception text (layout.py renders them).
        PROPAGATE_EXCEPTIONS=False,
        # A login form or a decision is a few kilobytes; nothing here takes uploads.
        MAX_CONTENT_LENGTH=1024 * 1024,
    )
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    web.init_app(app)
    for blueprint in (auth.bp, inbox.bp, conversations.bp, review.bp, live.bp, media.bp, people.bp, audit.bp):
        app.register_blueprint(blueprint)
    app.extensions["waflow.reference"] = reference.Reference(settings)
    formatting.init_app(app)
    app.add_url_rule("/healthz", "healthz", _healthz)
    app.add_url_rule("/", "home", _home)
    security.init_app(app, settings)
    i18n.init_app(app, settings)
    layout.init_app(app, settings.firm_name)
    if test_config:
        app.config.from_mapping({k: v for k, v in test_config.items() if k != "WAFLOW_SETTINGS"})
    return app


def _healthz() -> tuple[str, int, dict[str, str]]:
    """Alive and serving (a load balancer's probe); it touches nothing else."""
    return "ok\n", 200, {"Content-Type": "text/plain; charset=utf-8"}


def _home() -> Response:
    return redirect(url_for("inbox.index"))
