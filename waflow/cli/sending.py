"""Sending commands: ``send``, ``broadcast``, ``broadcast-cancel``, ``send-rate``, ``outbox``.

All of them work through the sender's command API (``waflow.outbound.commands``): a command is
stored under an idempotency key and its send task queued; the sender workers do
the rest at the number's pace.
"""
from __future__ import annotations

import getpass
import time
import uuid
from pathlib import Path

import click
import requests
import sqlalchemy as sa
from flask import current_app
from flask.cli import AppGroup, with_appcontext

from waflow import compose, limiter, whatsapp
from waflow.db import transaction
from waflow.media import outgoing
from waflow.models import OutboundMessage
from waflow.outbound import broadcast, commands, operator


@click.command("send")
@with_appcontext
@click.argument("to")
@click.argument("text", required=False)
@click.option("--template", help="Send this approved template instead of text.")
@click.option("--param", "params", multiple=True, help="A template body parameter ({{1}}, {{2}}, ...), in order.")
@click.option("--language", default="en_US", show_default=True, help="The template's language.")
@click.option("--reply-to", help="The wamid of the client's message to quote.")
@click.option("--key", help="Idempotency key (default: a new one): the same key never sends twice.")
@click.option("--wait", "wait_seconds", default=15.0, show_default=True,
              help="Seconds to wait for Meta's answer (0: queue and return).")
@click.option("--file", "file_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Send this file (image, video, audio, document or sticker, by its type) instead of text.")
@click.option("--caption", help="The file's caption (images, videos, documents).")
def send(to, text, template, params, language, reply_to, key, wait_seconds, file_path, caption) -> None:
    """Send one message to TO (a phone number, or a business-scoped user id) as a reply."""
    if caption and not file_path:
        raise click.UsageError("--caption goes with --file")
    if sum(map(bool, (text, template, file_path))) != 1:
        raise click.UsageError("give TEXT, or --template NAME (with --param for its parameters), or --file PATH")
    message = ({"kind": "template", "name": template, "language": language, "parameters": list(params)}
               if template else {"kind": "text", "body": text})
    try:
        prepared = outgoing.prepare(file_path) if file_path else None  # checked and stored before anything is queued
    except outgoing.Unsendable as exc:
        raise click.ClickException(f"not sent: {exc}") from None
    try:
        with transaction() as conn:
            if prepared is not None:
                message = outgoing.record(conn, prepared, caption=caption)
            if reply_to:
                message["reply_to"] = reply_to
            queued, new = commands.command(conn, key=key or f"cli:{uuid.uuid4()}", recipient=to,
                                           message=message)
            status = _status(conn, queued.id)
    except (compose.InvalidCommand, outgoing.Unsendable) as exc:
        raise click.ClickException(f"not sent: {exc}") from None
    if status == "queued":
        # New, or commanded before and still unsent (its publish may have been lost): queue it.
        # A second task for one message is harmless: only one claims it.
        commands.enqueue([queued])
    click.echo(f"outbound {queued.id} {'queued' if new else f'was already commanded under that key ({status})'}")
    if wait_seconds > 0:
        row = _wait_settled(queued.id, wait_seconds)
        click.echo(_describe(row) if row else f"still queued after {wait_seconds:.0f}s: are the senders running?")


@click.command("broadcast")
@with_appcontext
@click.argument("template")
@click.argument("recipients", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--language", default="en_US", show_default=True, help="The template's language code.")
@click.option("--name", help="The broadcast's name (default: TEMPLATE-FILE); run again under it to resume.")
@click.option("--dry-run", is_flag=True, help="Check everything and say what would be queued; queue nothing.")
@click.option("--requeue", is_flag=True, help="Queue every unsent message again (after queues were purged).")
@click.option("--no-wait", is_flag=True, help="Queue and return, without the progress bar.")
def broadcast_command(template, recipients, language, name, dry_run, requeue, no_wait) -> None:
    """Send TEMPLATE to every recipient in RECIPIENTS.csv (no header; recipient, then parameters)."""
    name = name or f"{template}-{recipients.stem}"
    try:
        rows = broadcast.read_recipients(recipients)
        expected = _template_parameters(current_app.config["WAFLOW_SETTINGS"], template, language)
        count = broadcast.check_parameters(rows, expected)
    except broadcast.BroadcastError as exc:
        raise click.ClickException(f"nothing queued: {exc}") from None
    checked = ("checked with Meta" if expected is not None
               else "not checked with Meta (set WHATSAPP_WABA_ID): every row gives the same number")
    click.echo(f"broadcast {name!r}: {template} ({language}), {len(rows)} recipient(s), "
               f"{count} parameter(s) each, {checked}")
    if dry_run:
        for r in rows[:3]:
            click.echo(f"  would send to {r.to}: {list(r.parameters)}")
        click.echo("dry run: nothing queued")
        return
    try:
        with transaction() as conn:
            broadcast_id = broadcast.start(conn, name=name, template=template, language=language,
                                           phone_number_id=current_app.config["WAFLOW_SETTINGS"].phone_number_id,
                                       recipients=rows)
    except broadcast.BroadcastError as exc:
        raise click.ClickException(str(exc)) from None
    queued = broadcast.queue_unqueued(transaction, broadcast_id, requeue=requeue)
    click.echo(f"queued {queued} send(s) on the broadcast lane")
    if not no_wait:
        _watch(broadcast_id)


@click.command("broadcast-cancel")
@with_appcontext
@click.argument("name")
def broadcast_cancel(name: str) -> None:
    """Stop broadcast NAME: nothing not yet sent will be."""
    try:
        with transaction() as conn:
            cancelled, waiting = broadcast.cancel(conn, name)
    except broadcast.BroadcastError as exc:
        raise click.ClickException(str(exc)) from None
    commands.enqueue(waiting)  # replies that were waiting behind a cancelled message go now
    click.echo(f"broadcast {name!r} cancelled: {cancelled} unsent message(s) will not be sent")


@click.command("send-rate")
@with_appcontext
@click.argument("rate", type=click.IntRange(1, 1000), required=False)
@click.option("--phone-number-id", default=None, help="The number (default: WHATSAPP_PHONE_NUMBER_ID).")
@click.option("--clear", is_flag=True, help="Forget the stored rate: WHATSAPP_SEND_RATE applies again.")
def send_rate(rate, phone_number_id, clear) -> None:
    """Show the number's send rate, or store RATE (msg/s) for every sender at once."""
    store = limiter.default_store()
    number = phone_number_id or current_app.config["WAFLOW_SETTINGS"].phone_number_id
    if clear:
        store.clear_rate(number)
    elif rate is not None:
        store.set_rate(number, rate)
    s = store.status(number)
    click.echo(f"{number}: {s['rate']:g} msg/s ({s['rate_source']}), paced at {s['effective_rate']:.1f}/s; "
               f"next slot in {s['next_slot_in']:.3f}s"
               + (f"; paused until {time.strftime('%H:%M:%S', time.localtime(s['paused_until']))}"
                  if s.get("paused_until") else ""))


@click.group("outbox", cls=AppGroup)
def outbox() -> None:
    """Outbound messages: list them, and settle the ones in doubt."""

@outbox.command("list")
@click.option("--status", type=click.Choice(["queued", "sending", "accepted", "failed", "in_doubt",
                                             "cancelled"]), default="in_doubt", show_default=True)
@click.option("--limit", default=50, show_default=True)
def outbox_list(status, limit) -> None:
    """List outbound messages in one state (in doubt: sent or not, only Meta or a person knows)."""
    with transaction() as conn:
        rows = conn.execute(sa.select(OutboundMessage.__table__).where(OutboundMessage.status == status)
                            .order_by(OutboundMessage.id).limit(limit)).all()
    if not rows:
        click.echo(f"no outbound message is {status}")
    for r in rows:
        click.echo(_describe(r))

@outbox.command("resolve")
@click.argument("outbound_id", type=int)
@click.option("--accepted", "wamid", help="Meta did take it: its wamid (from Meta's dashboard or the client).")
@click.option("--failed", is_flag=True, help="It did not go and should not: mark it failed.")
@click.option("--resend", is_flag=True, help="It did not go: send it (again); also queues again a message "
                                             "left queued with no task (`outbox list --status queued`).")
@click.option("--by", default=getpass.getuser, show_default="your user name")
def outbox_resolve(outbound_id, wamid, failed, resend, by) -> None:
    """Settle a message in doubt, by a person's decision (or queue an unsent one again)."""
    if sum(map(bool, (wamid, failed, resend))) != 1:
        raise click.UsageError("choose one of --accepted WAMID, --failed, --resend")
    with transaction() as conn:
        try:
            following = operator.resolve(conn, outbound_id, wamid=wamid, failed=failed, resend=resend, by=by)
        except operator.NotInDoubt as exc:
            raise click.ClickException(str(exc)) from None
    commands.enqueue(following)
    click.echo(f"outbound {outbound_id} settled by {by}")


def _template_parameters(settings, template: str, language: str) -> int | None:
    """The template's parameter count from Meta, or None without WHATSAPP_WABA_ID."""
    if not settings.waba_id:
        return None
    client = whatsapp.Client(settings.whatsapp_api_url, settings.access_token)
    try:
        return whatsapp.template_parameter_count(client, settings.waba_id, template, language)
    except whatsapp.TemplateNotFound as exc:
        raise broadcast.BroadcastError(str(exc)) from None
    except (requests.RequestException, ValueError) as exc:
        raise broadcast.BroadcastError(f"could not look the template up at {settings.whatsapp_api_url}: "
                                       f"{type(exc).__name__}") from None


def _status(conn, outbound_id: int) -> str:
    return conn.execute(sa.select(OutboundMessage.status).where(OutboundMessage.id == outbound_id)).scalar_one()


def _wait_settled(outbound_id: int, seconds: float):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with transaction() as conn:
            row = conn.execute(sa.select(OutboundMessage.__table__).where(OutboundMessage.id == outbound_id)).one()
        if row.status not in ("queued", "sending"):
            return row
        time.sleep(0.2)
    return None


def _describe(row) -> str:
    text = f"outbound {row.id} to {row.recipient}: {row.status}"
    if row.wamid:
        text += f" ({row.wamid})"
    if row.error_code is not None or row.error_title:
        text += f": #{row.error_code} {row.error_title or ''} {row.error_details or ''}".rstrip()
    return text


def _watch(broadcast_id: int) -> None:
    """A progress bar while the broadcast drains, then its summary. Ctrl-C stops watching, not sending."""
    with transaction() as conn:
        counts = broadcast.progress(conn, broadcast_id)
    total = sum(counts.values())
    unsettled = ("queued", "sending")
    try:
        with click.progressbar(length=total, label="sending", show_pos=True) as bar:
            done = 0
            while True:
                with transaction() as conn:
                    counts = broadcast.progress(conn, broadcast_id)
                now_done = total - sum(counts.get(s, 0) for s in unsettled)
                bar.update(now_done - done)
                done = now_done
                if done >= total:
                    break
                time.sleep(0.5)
    except KeyboardInterrupt:
        click.echo("\nstopped watching; the senders go on (run the same command again to watch)")
    with transaction() as conn:
        counts = broadcast.progress(conn, broadcast_id)
        failed = broadcast.failures(conn, broadcast_id)
    click.echo(f"accepted {counts.get('accepted', 0)}, failed {counts.get('failed', 0)}, "
               f"in doubt {counts.get('in_doubt', 0)}, cancelled {counts.get('cancelled', 0)}, "
               f"still queued {counts.get('queued', 0) + counts.get('sending', 0)}")
    for code, title, n in failed:
        click.echo(f"  failed #{code}: {n} ({title or 'no title'})")
