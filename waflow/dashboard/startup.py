"""What the dashboard refuses to start with in production: a missing or weak ``SECRET_KEY``, or a demo user
who can still sign in (``bin/run``'s demo users, with passwords printed on a developer's terminal).

``create_dashboard_app`` checks both (``check``). gunicorn's master checks them too, once, before it starts a
worker (``gunicorn.conf.py``'s ``on_starting`` calls ``refuse_unsafe_start``): a refusal there ends the process
with one line and exit code 78, as ``waflow.config`` refuses a configuration; a refusal in a worker would only
make the master start another.
"""
from __future__ import annotations

import sqlalchemy as sa

from waflow import config, users
from waflow.config import ConfigError, Settings
from waflow.db import dispose_engines, get_engine


def check(settings: Settings, conn: sa.Connection | None = None) -> None:
    """Raise ConfigError if production must not start the dashboard with these settings and users."""
    if not settings.production:
        return
    config.require(settings, "SECRET_KEY", settings.secret_key)
    if conn is None:
        with get_engine(settings.database_url).connect() as own:
            demo = users.active_demo_users(own)
    else:
        demo = users.active_demo_users(conn)
    if demo:
        raise ConfigError(
            f"a demo user can sign in ({', '.join(p.email for p in demo)}), which the dashboard refuses in "
            "production: deactivate it first (flask --app wsgi users deactivate EMAIL)")


def refuse_unsafe_start(settings: Settings | None = None) -> None:
    """For gunicorn's master: ``check``, exiting 78 with one line on a refusal. The master's database
    connections are closed before it forks its workers."""
    try:
        check(settings or config.settings)
    except ConfigError as exc:
        raise config.refuse_to_start(exc) from None
    finally:
        dispose_engines()
