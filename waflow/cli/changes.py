"""The change log's upkeep: ``changes prune`` (``flask --app wsgi changes ...``)."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import click
from flask.cli import AppGroup

from waflow import changelog
from waflow.db import transaction


@click.group("changes", cls=AppGroup)
def changes_group() -> None:
    """The change log that open dashboard pages poll."""


@changes_group.command("prune")
@click.option("--days", type=click.IntRange(1, 3650), default=2, show_default=True,
              help="Keep the changes of this many days.")
def prune(days: int) -> None:
    """Delete the change log's rows older than --days (pages ask only for the last few seconds')."""
    with transaction() as conn:
        gone = changelog.prune(conn, datetime.now(timezone.utc) - timedelta(days=days))
    click.echo(f"deleted {gone} change(s) older than {days} day(s)")
