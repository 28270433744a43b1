"""Operator commands, run as ``flask --app wsgi <command>``.

Commands are module-level click commands, one module per concern, added to the app in
``create_app`` (``COMMANDS``): ``sample-webhook`` is here; the dead-letter commands
(``dlq ...``) are in ``waflow.cli.dead_letters``, the sending commands (``send``,
``broadcast``, ``broadcast-cancel``, ``send-rate``, ``outbox``) in ``waflow.cli.sending``, the media
commands (``media ...``) in ``waflow.cli.media``, the draft commands (``drafts ...``) in
``waflow.cli.drafts`` and the user commands (``users ...``) in ``waflow.cli.users``.
"""
from __future__ import annotations

import json
import time
import uuid

import click
import requests
import sqlalchemy as sa
from flask import current_app
from flask.cli import with_appcontext

from waflow.cli import changes, dead_letters, drafts, media, sending, users
from waflow.db import get_engine
from waflow.gateway import SIGNATURE_HEADER, signature_for
from waflow.models import Message


def sample_body(text: str, wa_id: str, phone_number_id: str) -> tuple[bytes, str]:
    """A one-message text webhook shaped like Meta's, with a fresh wamid."""
    wamid = f"wamid.sample-{uuid.uuid4().hex}"
    doc = {"object": "whatsapp_business_account", "entry": [{"id": "sample-waba", "changes": [{
        "field": "messages",
        "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550000000", "phone_number_id": phone_number_id},
            "contacts": [{"profile": {"name": "Sample Client"}, "wa_id": wa_id}],
            "messages": [{"from": wa_id, "id": wamid, "timestamp": str(int(time.time())), "type": "text",
                          "text": {"body": text}}],
        }}]}]}
    return json.dumps(doc, separators=(",", ":")).encode(), wamid


@click.command("sample-webhook")
@with_appcontext
@click.argument("text", default="Hello, I need advice about a contract.")
@click.option("--url", default=None, help="Webhook URL (default: this machine's web process on $PORT).")
@click.option("--wa-id", default="15551234567", show_default=True, help="The sender's WhatsApp id.")
@click.option("--phone-number-id", default="100000000000001", show_default=True)
@click.option("--wait", default=15.0, show_default=True, help="Seconds to wait for the row.")
def sample_webhook(text: str, url: str | None, wa_id: str, phone_number_id: str, wait: float) -> None:
    """POST a signed sample text webhook and wait until its message row is in the database."""
    settings = current_app.config["WAFLOW_SETTINGS"]
    url = url or f"http://127.0.0.1:{settings.port}/webhooks/whatsapp"
    body, wamid = sample_body(text, wa_id, phone_number_id)
    signature = signature_for(settings.app_secret, body)
    try:
        response = requests.post(url, data=body, timeout=10,
                                 headers={"Content-Type": "application/json", SIGNATURE_HEADER: signature})
    except requests.ConnectionError:
        raise click.ClickException(f"nothing answers at {url}: is the stack running (bin/run)?") from None
    click.echo(f"POST {url} -> {response.status_code} {response.text.strip()}")
    if response.status_code != 200:
        raise SystemExit(1)
    deadline = time.monotonic() + wait
    with get_engine().connect() as conn:
        while time.monotonic() < deadline:
            row = conn.execute(sa.select(Message.id, Message.conversation_id, Message.body)
                               .where(Message.wamid == wamid)).first()
            if row is not None:
                click.echo(f"stored: messages.id={row.id} conversation_id={row.conversation_id} "
                           f"wamid={wamid} body={row.body!r}")
                return
            conn.rollback()
            time.sleep(0.2)
    click.echo(f"not in the database after {wait:.0f}s: are the workers running? (bin/run)", err=True)
    raise SystemExit(1)


def commands() -> list[click.Command]:
    """Every command ``flask --app wsgi`` offers."""
    return [sample_webhook, dead_letters.dlq_group, sending.send, sending.broadcast_command, sending.broadcast_cancel,
            sending.send_rate, sending.outbox, media.media_group, drafts.drafts_group, users.users_group,
            changes.changes_group]
