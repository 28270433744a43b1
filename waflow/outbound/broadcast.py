"""Broadcasts: one template to every recipient of a CSV file, on the broadcast lane.

``flask --app wsgi broadcast TEMPLATE RECIPIENTS.csv`` (``waflow.cli.sending``)
reads the file (no header; the first column is the recipient: a phone number in
international form, one written with a leading 0 being given the default country
code, or a business-scoped user id, which goes to Meta as ``recipient``; further
columns fill the template's body parameters), checks every row before anything is queued, stores one send
command per recipient under the key ``broadcast:<name>:<recipient>`` and queues
it on ``wa.outgoing.broadcast``. Running it again under the same name creates
and queues only what is missing, so an interrupted broadcast resumes without
sending to anyone twice. ``cancel`` stops whatever has not been sent.

Broadcast sends share the number's budget with replies, which go first
(``waflow.consumer``).
"""
from __future__ import annotations

import csv
import io
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import sqlalchemy as sa

from waflow import compose, limiter
from waflow.outbound import commands
from waflow.db import insert
from waflow.models import Broadcast, OutboundMessage

# Queue in batches: one transaction and one mark per batch, so a crash re-queues at most one batch.
BATCH = 500


class BroadcastError(ValueError):
    """The broadcast cannot start as asked; the message says what to fix."""


@dataclass(frozen=True)
class Recipient:
    line: int
    to: str
    parameters: tuple[str, ...]
    # The first column as written, when ``to`` differs from it (a national number given its country code).
    given: str | None = None


def read_recipients(path: Path, country_code: int) -> list[Recipient]:
    """The recipients of a header-less CSV file, each checked and normalised (``compose.normalize_recipient``)
    before anything is queued. Blank lines are skipped; a malformed or repeated recipient is refused with its
    line number (a malformed one is not quoted: it may be a name typed in the wrong column)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise BroadcastError(f"cannot read {path}: {exc}") from None
    found: list[Recipient] = []
    seen: dict[str, int] = {}
    problems: list[str] = []
    for line, cells in enumerate(csv.reader(io.StringIO(text)), start=1):
        cells = [c.strip() for c in cells]
        if not any(cells):
            continue
        given = cells[0]
        if not given:
            problems.append(f"line {line}: no recipient in the first column")
            continue
        try:
            to = compose.normalize_recipient(given, country_code)
        except compose.InvalidCommand as exc:
            header = " (a header row? the file has none)" if not found and not problems else ""
            problems.append(f"line {line}: {exc}{header}")
            continue
        if to in seen:
            problems.append(f"line {line}: {to} is already on line {seen[to]}")
        else:
            seen[to] = line
            found.append(Recipient(line, to, tuple(cells[1:]), given if given != to else None))
    if problems:
        raise BroadcastError("; ".join(problems[:20]) + (f" (and {len(problems) - 20} more)" if len(problems) > 20
                                                          else ""))
    if not found:
        raise BroadcastError(f"{path} names no recipient")
    return found


def check_parameters(recipients: list[Recipient], expected: int | None) -> int:
    """Every row must give the template's number of body parameters; return that number."""
    counts = Counter(len(r.parameters) for r in recipients)
    want = expected if expected is not None else counts.most_common(1)[0][0]
    wrong = [r for r in recipients if len(r.parameters) != want]
    if wrong:
        lines = ", ".join(str(r.line) for r in wrong[:20]) + (" ..." if len(wrong) > 20 else "")
        source = "the template takes" if expected is not None else "most rows give"
        raise BroadcastError(f"{source} {want} parameter(s); {len(wrong)} row(s) differ (lines {lines})")
    for r in recipients:
        try:
            compose.parse({"kind": "template", "name": "check", "parameters": list(r.parameters)})
        except compose.InvalidCommand as exc:
            raise BroadcastError(f"line {r.line}: {exc}") from None
    return want


def start(conn: sa.Connection, *, name: str, template: str, language: str, phone_number_id: str,
          recipients: list[Recipient]) -> int:
    """Create the broadcast (or find it, to resume) and its commands; return its id."""
    b = conn.execute(sa.select(Broadcast.__table__).where(Broadcast.name == name)).first()
    if b is not None:
        if (b.template, b.language) != (template, language):
            raise BroadcastError(f"broadcast {name!r} exists for template {b.template} ({b.language}); "
                                 "choose another --name")
        if b.status == "cancelled":
            raise BroadcastError(f"broadcast {name!r} was cancelled; choose another --name to send again")
        broadcast_id, token = b.id, b.token
    else:
        token = uuid.uuid4().hex
        broadcast_id = conn.execute(insert(conn.dialect.name, Broadcast).values(
            name=name, token=token, template=template, language=language, phone_number_id=phone_number_id,
            total=0, status="running", created_at=datetime.now(timezone.utc)).returning(Broadcast.id)).scalar_one()
    for r in recipients:
        try:
            commands.command(conn, key=f"broadcast:{name}:{r.to}", recipient=r.to, lane="broadcast",
                             phone_number_id=phone_number_id, broadcast_id=broadcast_id, broadcast_token=token,
                             message=compose.Template(name=template, language=language,
                                                      parameters=list(r.parameters)))
        except commands.KeyReused:
            raise BroadcastError(f"line {r.line}: broadcast {name!r} already holds a different message for "
                                 f"{r.to} (other parameters); run it with the file it started with, or choose "
                                 "another --name") from None
    total = conn.execute(sa.select(sa.func.count()).where(OutboundMessage.broadcast_id == broadcast_id)).scalar_one()
    conn.execute(sa.update(Broadcast).where(Broadcast.id == broadcast_id).values(total=total))
    return broadcast_id


def queue_unqueued(transaction, broadcast_id: int, requeue: bool = False) -> int:
    """Queue the send task of every unsent message of the broadcast that was not queued before
    (``requeue``: of every unsent one, e.g. after the queues were purged). Returns how many."""
    queued, last_id = 0, 0
    with transaction() as conn:
        token = conn.execute(sa.select(Broadcast.token).where(Broadcast.id == broadcast_id)).scalar_one()
    while True:
        with transaction() as conn:
            query = (sa.select(OutboundMessage.id, OutboundMessage.phone_number_id)
                     .where(OutboundMessage.broadcast_id == broadcast_id, OutboundMessage.status == "queued",
                            OutboundMessage.id > last_id)
                     .order_by(OutboundMessage.id).limit(BATCH))
            if not requeue:
                query = query.where(OutboundMessage.enqueued_at.is_(None))
            rows = conn.execute(query).all()
            if not rows:
                return queued
            commands.enqueue([commands.Queued(r.id, "broadcast", r.phone_number_id, token) for r in rows])
            conn.execute(sa.update(OutboundMessage).where(OutboundMessage.id.in_([r.id for r in rows]))
                         .values(enqueued_at=datetime.now(timezone.utc)))
            queued, last_id = queued + len(rows), rows[-1].id


def progress(conn: sa.Connection, broadcast_id: int) -> dict[str, int]:
    """How many of the broadcast's messages are in each state."""
    rows = conn.execute(sa.select(OutboundMessage.status, sa.func.count()).where(
        OutboundMessage.broadcast_id == broadcast_id).group_by(OutboundMessage.status)).all()
    return {status: n for status, n in rows}


def failures(conn: sa.Connection, broadcast_id: int) -> list[tuple[int | None, str | None, int]]:
    """Failed messages grouped by Meta's code: (code, a title, how many)."""
    rows = conn.execute(sa.select(OutboundMessage.error_code, sa.func.min(OutboundMessage.error_title),
                                  sa.func.count()).where(OutboundMessage.broadcast_id == broadcast_id,
                                                         OutboundMessage.status == "failed")
                        .group_by(OutboundMessage.error_code).order_by(sa.func.count().desc())).all()
    return [(code, title, n) for code, title, n in rows]


def cancel(conn: sa.Connection, name: str, store: limiter.Store | None = None) -> tuple[int, list[commands.Queued]]:
    """Stop a broadcast: its unsent messages are cancelled (their queued tasks then skip them without
    spending the number's budget, and one put back after this is cancelled when it comes round).
    Returns how many were cancelled, and the messages to queue after the commit: any reply that was
    parked behind one of them."""
    found = conn.execute(sa.select(Broadcast.id, Broadcast.token).where(Broadcast.name == name)).first()
    if found is None:
        raise BroadcastError(f"no broadcast named {name!r}")
    b, token = found
    now = datetime.now(timezone.utc)
    conn.execute(sa.update(Broadcast).where(Broadcast.id == b).values(status="cancelled", cancelled_at=now))
    cancelled = conn.execute(sa.update(OutboundMessage).where(OutboundMessage.broadcast_id == b,
                                                              OutboundMessage.status == "queued")
                             .values(status="cancelled", updated_at=now)
                             .returning(OutboundMessage.phone_number_id, OutboundMessage.recipient)).all()
    (store or limiter.default_store()).cancel_broadcast(token)
    waiting = []
    for number, recipient in set(cancelled):
        parked = conn.execute(sa.select(OutboundMessage.id, OutboundMessage.lane).where(
            OutboundMessage.phone_number_id == number, OutboundMessage.recipient == recipient,
            OutboundMessage.status == "queued", OutboundMessage.parked.is_(True))).all()
        waiting += [commands.Queued(p.id, p.lane, number) for p in parked]
    return len(cancelled), waiting
