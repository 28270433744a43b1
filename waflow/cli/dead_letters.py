"""``flask --app wsgi dlq ...``: inspect, replay and purge dead letters; run the recorder.

Dead letters hold client content: these commands are for operators with access to
the database (docs/reliability.md, "Who may read dead letters").
"""
from __future__ import annotations

import getpass
import json
import re
import signal
from datetime import timedelta

import click
import sqlalchemy as sa
from flask import current_app
from flask.cli import AppGroup

from waflow.db import transaction
from waflow.dlq import recorder, tooling
from waflow.dlq.records import DEAD_LETTER_QUEUE
from waflow.models import DeadLetterReplay


_AGE = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_age(value: str | None) -> timedelta | None:
    """``90s``, ``30m``, ``2h``, ``7d`` as a timedelta."""
    if not value:
        return None
    match = _AGE.match(value.strip())
    if not match:
        raise click.BadParameter(f"{value!r} is not an age like 90s, 30m, 2h or 7d")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def _filters(f):
    f = click.option("--queue", help="Only dead letters from this queue.")(f)
    f = click.option("--error-type", help="Only this exception type (e.g. OperationalError, NotAWebhook).")(f)
    f = click.option("--older-than", help="Only those recorded at least this long ago (90s, 30m, 2h, 7d).")(f)
    f = click.option("--newer-than", help="Only those recorded at most this long ago.")(f)
    f = click.option("--status", type=click.Choice(["dead", "replayed"]), help="Only dead letters in this state.")(f)
    return f


def _find(conn, ids, queue, error_type, older_than, newer_than, status, limit=None):
    return tooling.find(conn, ids=ids, queue=queue, error_type=error_type, older_than=parse_age(older_than),
                    newer_than=parse_age(newer_than), status=status, limit=limit)


def _refuse_unknown(ids, rows) -> None:
    """A named id that matches no dead letter (or not the filters given) stops the command before it does
    anything, with exit status 1, as for any error."""
    missing = sorted(set(ids) - {r.id for r in rows})
    if missing:
        raise click.ClickException(f"no dead letter {', '.join(map(str, missing))}")


@click.group("dlq", cls=AppGroup)
def dlq_group() -> None:
    """Inspect, replay and purge dead letters (they hold client content: operators only)."""


@dlq_group.command("list")
@_filters
@click.option("--limit", default=50, show_default=True)
def dlq_list(queue, error_type, older_than, newer_than, status, limit) -> None:
    """List dead letters, oldest first (no arguments shown: use `show`)."""
    with transaction() as conn:
        rows = _find(conn, (), queue, error_type, older_than, newer_than, status, limit)
    if not rows:
        click.echo("no dead letters match")
        return
    click.echo(f"{'id':>6}  {'recorded (UTC)':19}  {'queue':24} {'error':20} {'retries':>7}  {'status':8}  reason")
    for r in rows:
        click.echo(f"{r.id:>6}  {r.recorded_at:%Y-%m-%d %H:%M:%S}  {r.queue:24} {(r.error_type or '-'):20} "
                   f"{r.retries if r.retries is not None else '-':>7}  {r.status:8}  "
                   f"{(r.error_message or '')[:80]}")


@dlq_group.command("show")
@click.argument("dead_letter_id", type=int)
def dlq_show(dead_letter_id: int) -> None:
    """Show one dead letter in full, arguments and traceback included."""
    with transaction() as conn:
        rows = _find(conn, (dead_letter_id,), None, None, None, None, None)
        if not rows:
            raise click.ClickException(f"no dead letter {dead_letter_id}")
        replays = conn.execute(sa.select(DeadLetterReplay).where(
            DeadLetterReplay.dead_letter_id == dead_letter_id).order_by(DeadLetterReplay.id)).all()
    r = rows[0]
    for name in ("id", "key", "status", "queue", "task", "task_id", "source", "broker_reason", "error_type",
                 "error_message", "retries", "first_failed_at", "last_failed_at", "received_at", "recorded_at",
                 "replay_count"):
        click.echo(f"{name:16} {getattr(r, name)}")
    click.echo(f"{'args':16} {json.dumps(r.args, ensure_ascii=False)}")
    click.echo(f"{'kwargs':16} {json.dumps(r.kwargs, ensure_ascii=False)}")
    for label, text in (("detail", r.detail), ("raw", r.raw), ("traceback", r.traceback)):
        if text:
            click.echo(f"{label}:\n{text.rstrip()}")
    for rp in replays:
        click.echo(f"replayed {rp.replayed_at:%Y-%m-%d %H:%M:%S} by {rp.replayed_by} as {rp.task_id} "
                   f"to {rp.queue}")


@dlq_group.command("replay")
@click.argument("ids", nargs=-1, type=int)
@click.option("--all", "everything", is_flag=True, help="Replay every dead letter matching the filters.")
@_filters
@click.option("--by", default=getpass.getuser, show_default="your user name", help="Recorded as who replayed.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def dlq_replay(ids, everything, queue, error_type, older_than, newer_than, status, by, yes) -> None:
    """Send dead letters back to their original queue with a fresh retry budget."""
    if not ids and not everything:
        raise click.UsageError("name dead letter ids, or --all (with filters)")
    with transaction() as conn:
        rows = _find(conn, ids, queue, error_type, older_than, newer_than, status or ("dead" if everything
                                                                                       else None))
    _refuse_unknown(ids, rows)
    if not rows:
        click.echo("no dead letters match")
        return
    if not yes:
        click.confirm(f"Replay {len(rows)} dead letter(s)?", abort=True)
    failed = 0
    for r in rows:
        try:
            with transaction() as conn:
                task_id = tooling.replay(conn, r, by)
        except tooling.NotReplayable as exc:
            failed += 1
            click.echo(f"{r.id}: not replayed: {exc}", err=True)
            continue
        if task_id is None:
            failed += 1
            click.echo(f"{r.id}: not replayed: its stage settled it instead (see the log; for a send: "
                       "`flask --app wsgi outbox list`)", err=True)
            continue
        click.echo(f"{r.id}: replayed to {r.queue} as {task_id}")
    if failed:
        raise SystemExit(1)


@dlq_group.command("purge")
@click.argument("ids", nargs=-1, type=int)
@click.option("--all", "everything", is_flag=True, help="Purge every dead letter matching the filters.")
@_filters
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def dlq_purge(ids, everything, queue, error_type, older_than, newer_than, status, yes) -> None:
    """Delete dead letters for good (asks first)."""
    if not ids and not everything:
        raise click.UsageError("name dead letter ids, or --all (with filters)")
    with transaction() as conn:
        rows = _find(conn, ids, queue, error_type, older_than, newer_than, status)
    _refuse_unknown(ids, rows)
    if not rows:
        click.echo("no dead letters match")
        return
    if not yes:
        click.confirm(f"Delete {len(rows)} dead letter(s) for good?", abort=True)
    with transaction() as conn:
        gone = tooling.purge(conn, [r.id for r in rows])
    click.echo(f"purged {gone} dead letter(s)")


@dlq_group.command("record")
def dlq_record() -> None:
    """Run the dead-letter recorder: store what arrives in wa.dead_letter (runs until stopped)."""
    settings = current_app.config["WAFLOW_SETTINGS"]
    with recorder.recorder_connection() as conn:
        running = recorder.Recorder(conn, timedelta(days=settings.dead_letter_retention_days))
        # A platform's SIGTERM: finish the message in hand (its row commits or it stays queued).
        signal.signal(signal.SIGTERM, lambda *_: setattr(running, "should_stop", True))
        click.echo(f"dlq recorder: consuming {DEAD_LETTER_QUEUE.name}; keeping dead letters "
                   f"{settings.dead_letter_retention_days} days")
        running.run()
