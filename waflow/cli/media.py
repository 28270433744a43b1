"""Media commands: ``media requeue-pending`` and ``media purge-expired`` (``flask --app wsgi media ...``)."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import click
from flask import current_app
from flask.cli import AppGroup

from waflow.db import transaction
from waflow.media import upkeep
from waflow.mediastore import default_store
from waflow.tasks import dispatch

TASK = "waflow.media.record_media"


@click.group("media", cls=AppGroup)
def media_group() -> None:
    """Media files: queue what was left pending, delete what is past its retention."""


@media_group.command("requeue-pending")
@click.option("--idle", "idle_minutes", default=15, show_default=True, type=click.IntRange(0, None),
              help="Only rows pending for at least this many minutes (younger ones may still be in a worker).")
def requeue_pending(idle_minutes: int) -> None:
    """Queue the download of every attachment left pending (from before the media stage downloaded,
    or whose worker died); fail those past Meta's 7 days as expired."""
    with transaction() as conn:
        jobs, expired = upkeep.requeue_pending(conn, datetime.now(timezone.utc), timedelta(minutes=idle_minutes))
    for job in jobs:
        dispatch(TASK, (job,))
    click.echo(f"queued {len(jobs)} pending media download(s); {expired} older than 7 days failed as expired")


@media_group.command("purge-expired")
@click.option("--days", type=click.IntRange(1, 36500), default=None,
              help="Retention in days (default: WAFLOW_MEDIA_RETENTION_DAYS).")
def purge_expired(days: int | None) -> None:
    """Delete the media files older than the retention (a file shared with a newer row stays), mark
    their rows deleted, and sweep temporary files left by crashed downloads."""
    days = days or current_app.config["WAFLOW_SETTINGS"].media_retention_days
    store = default_store()
    swept = store.sweep()
    if days is None:
        click.echo(f"WAFLOW_MEDIA_RETENTION_DAYS is not set: media is kept; {swept} stale temporary file(s) swept")
        return
    purged = upkeep.purge_expired(transaction, store, days, datetime.now(timezone.utc))
    click.echo(f"media older than {days} day(s): {purged.rows} row(s) marked deleted, {purged.files} file(s) "
               f"deleted, {purged.kept} kept for newer rows; {swept} stale temporary file(s) swept")
