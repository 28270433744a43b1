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


# Exit statuses of ``send`` and ``broadcast`` (their --help says the same). Click itself exits 1 on an error
# before anything is queued and 2 on a usage error.
EXIT_NOT_SENT = 1
EXIT_IN_DOUBT = 3
EXIT_NO_ANSWER = 4

_RECIPIENTS = ("a phone number in international form (+62 812…, 62812…), one written with a leading 0 (0812…: "
               "it gets the country code WAFLOW_DEFAULT_COUNTRY_CODE), or a business-scoped user id "
               "(US.13491208655302741918)")
_SEND_HELP = f"""Send one message to TO as a reply: TEXT, or --template NAME.

TO is {_RECIPIENTS}.

\b
Exit status:
  0  Meta accepted it (with --wait 0: it is queued)
  1  not sent: refused by Meta, or by waflow before it was queued
  3  in doubt: sent or not, only Meta's status webhook or a person can
     tell (`outbox list`, `outbox resolve`)
  4  no outcome within --wait: still queued or sending
"""
_BROADCAST_HELP = f"""Send TEMPLATE to every recipient in RECIPIENTS.csv.

The file has no header: the recipient first, then the template's body parameters. A recipient is
{_RECIPIENTS}. Every row is checked before anything is queued.

\b
Exit status:
  0  Meta accepted every message (with --no-wait: all are queued)
  1  Meta refused at least one, or waflow refused the file (nothing queued)
  3  none refused, but at least one in doubt (`outbox list`)
  4  watching stopped (Ctrl-C) before every message had an outcome
"""


@click.command("send", help=_SEND_HELP)
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
    if caption and not file_path:
        raise click.UsageError("--caption goes with --file")
    if sum(map(bool, (text, template, file_path))) != 1:
        raise click.UsageError("give TEXT, or --template NAME (with --param for its parameters), or --file PATH")
    if params and not template:
        raise click.UsageError("--param fills a template's parameters; a text message has none "
                               "(send --template NAME --param ...)")
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
            row = _row(conn, queued.id)
    except (compose.InvalidCommand, commands.KeyReused, outgoing.Unsendable) as exc:
        raise click.ClickException(f"not sent: {exc}") from None
    if row.status == "queued":
        # New, or commanded before and still unsent (its publish may have been lost): queue it.
        # A second task for one message is harmless: only one claims it.
        commands.enqueue([queued])
    to_whom = f" to {row.recipient}" if row.recipient != to else ""
    click.echo(f"outbound {queued.id}{to_whom} "
               + ("queued" if new else f"was already commanded under that key ({row.status})"))
    if row.status in ("queued", "sending"):  # no outcome yet (one commanded before may have one already)
        if wait_seconds <= 0:
            return
        row = _wait_settled(queued.id, wait_seconds)
        if row is None:
            click.echo(f"still queued after {wait_seconds:.0f}s: are the senders running?", err=True)
            raise SystemExit(EXIT_NO_ANSWER)
    click.echo(_describe(row))
    if row.status == "in_doubt":
        raise SystemExit(EXIT_IN_DOUBT)
    if row.status != "accepted":
        raise SystemExit(EXIT_NOT_SENT)


@click.command("broadcast", help=_BROADCAST_HELP)
@with_appcontext
@click.argument("template")
@click.argument("recipients", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--language", default="en_US", show_default=True, help="The template's language code.")
@click.option("--name", help="The broadcast's name (default: TEMPLATE-FILE); run again under it to resume.")
@click.option("--dry-run", is_flag=True, help="Check everything and say what would be queued; queue nothing.")
@click.option("--requeue", is_flag=True, help="Queue every unsent message again (after queues were purged).")
@click.option("--no-wait", is_flag=True, help="Queue and return, without the progress bar.")
def broadcast_command(template, recipients, language, name, dry_run, requeue, no_wait) -> None:
    settings = current_app.config["WAFLOW_SETTINGS"]
    name = name or f"{template}-{recipients.stem}"
    try:
        rows = broadcast.read_recipients(recipients, settings.default_country_code)
        expected = _template_parameters(settings, template, language)
        count = broadcast.check_parameters(rows, expected)
    except broadcast.BroadcastError as exc:
        raise click.ClickException(f"nothing queued: {exc}") from None
    checked = ("checked with Meta" if expected is not None
               else "not checked with Meta (set WHATSAPP_WABA_ID): every row gives the same number")
    click.echo(f"broadcast {name!r}: {template} ({language}), {len(rows)} recipient(s), "
               f"{count} parameter(s) each, {checked}")
    if dry_run:
        normalised = [r for r in rows if r.given is not None]
        if normalised:
            click.echo(f"{len(normalised)} number(s) rewritten for Meta (separators dropped; a leading 0 is "
                       f"country code +{settings.default_country_code}):")
            for r in normalised[:10]:
                click.echo(f"  line {r.line}: {r.given} -> {r.to}")
            if len(normalised) > 10:
                click.echo(f"  ... and {len(normalised) - 10} more")
        for r in rows[:3]:
            click.echo(f"  would send to {r.to}: {list(r.parameters)}")
        click.echo("dry run: nothing queued")
        return
    try:
        with transaction() as conn:
            broadcast_id = broadcast.start(conn, name=name, template=template, language=language,
                                           phone_number_id=settings.phone_number_id, recipients=rows)
    except broadcast.BroadcastError as exc:
        raise click.ClickException(str(exc)) from None
    queued = broadcast.queue_unqueued(transaction, broadcast_id, requeue=requeue)
    click.echo(f"queued {queued} send(s) on the broadcast lane")
    if not no_wait:
        counts = _watch(broadcast_id)
        if counts.get("failed"):
            raise SystemExit(EXIT_NOT_SENT)
        if counts.get("in_doubt"):
            raise SystemExit(EXIT_IN_DOUBT)
        if counts.get("queued") or counts.get("sending"):
            raise SystemExit(EXIT_NO_ANSWER)


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


def _row(conn, outbound_id: int):
    return conn.execute(sa.select(OutboundMessage.__table__).where(OutboundMessage.id == outbound_id)).one()


def _wait_settled(outbound_id: int, seconds: float):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with transaction() as conn:
            row = conn.execute(sa.select(OutboundMessage.__table__).where(OutboundMessage.id == outbound_id)).one()
        if row.status not in ("queued", "sending"):
            return row
        time.sleep(0.2)
    return None


def _title(code: int | None, title: str | None) -> str | None:
    """Meta's title without the "(#<code>) " it often begins with: the code is shown once, beside it."""
    prefix = f"(#{code}) "
    return title[len(prefix):] if code is not None and title and title.startswith(prefix) else title


def _reason(code: int | None, title: str | None, details: str | None = None) -> str:
    """Why a message failed or is in doubt: Meta's code (when there is one), title and details."""
    return " ".join(part for part in (f"#{code}" if code is not None else None, _title(code, title), details)
                    if part)


def _describe(row) -> str:
    text = f"outbound {row.id} to {row.recipient}: {row.status}"
    if row.wamid:
        text += f" ({row.wamid})"
    reason = _reason(row.error_code, row.error_title, row.error_details)
    return f"{text}: {reason}" if reason else text


def _watch(broadcast_id: int) -> dict[str, int]:
    """A progress bar while the broadcast drains, then its summary; returns the final counts by status.
    Ctrl-C stops watching, not sending."""
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
        click.echo(f"  failed {f'#{code}' if code is not None else 'without a code'}: {n} "
                   f"({_title(code, title) or 'no title'})")
    return counts
