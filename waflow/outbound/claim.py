"""Claiming: decide whether a queued message goes now, and mark it ``sending`` if so.

Nothing to do if it is settled; ``in_doubt`` if it was found ``sending`` (a crash during a
call: Meta takes no idempotency key, so it is never sent again automatically); parked
behind an earlier message to the same recipient that is still on its way (that one's
outcome sends it on, so a recipient's messages leave in the order they were commanded);
refused outside the 24-hour customer-service window unless a template or a read receipt;
put off while the recipient's pair pacing says wait; a file not yet uploaded to Meta is uploaded
first (``Upload``), before the message is marked ``sending``; refused if it carries out a lawyer's
approval and its words are not exactly the approved ones (nothing is sent without approval).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import sqlalchemy as sa

from waflow import compose, limiter
from waflow.db import execute_prepared, prepared
from waflow.models import Contact, Conversation
from waflow.outbound.commands import Queued
from waflow.outbound.outbox import CALL_LEASE, CALLBACK_PREFIX, MIN_DEFER, OUTBOUND, ROW, C, following, set_columns

logger = logging.getLogger(__name__)

WINDOW = timedelta(hours=24)


@dataclass
class Claimed:
    row: Any  # the message as claim() read it
    body: dict[str, Any]
    task_id: str | None = None  # the task run that holds it `sending`

    @property
    def id(self) -> int:
        return self.row.id

    @property
    def phone_number_id(self) -> str:
        return self.row.phone_number_id


@dataclass
class Skip:
    reason: str
    following: list[Queued] = field(default_factory=list)


@dataclass
class Defer:
    seconds: float


@dataclass
class Upload:
    """The message sends a file of ours that Meta does not have yet: upload it (``attach``), then claim again."""

    row: Any


_EARLIER = (sa.select(C.id)
            .where(C.phone_number_id == sa.bindparam("number"), C.recipient == sa.bindparam("to"),
                   C.id < sa.bindparam("before"), C.status.in_(("queued", "sending")))
            .order_by(C.id).limit(1).with_for_update(read=True))


def window_open(conn: sa.Connection, phone_number_id: str, recipient: str, now: datetime) -> bool:
    """True if the recipient wrote to this number in the last 24 hours."""
    who = Contact.user_id == recipient if compose.is_user_id(recipient) else Contact.wa_id == recipient.lstrip("+")
    last = conn.execute(sa.select(sa.func.max(Conversation.last_inbound_at)).join(
        Contact, Contact.id == Conversation.contact_id).where(who, Conversation.phone_number_id == phone_number_id)
    ).scalar()
    if last is None:
        return False
    if last.tzinfo is None:  # SQLite hands back naive UTC
        last = last.replace(tzinfo=timezone.utc)
    return now - last < WINDOW


def _claimed_at(row: Any) -> datetime | None:
    at = row.claimed_at
    return at.replace(tzinfo=timezone.utc) if at is not None and at.tzinfo is None else at


def claim(conn: sa.Connection, outbound_id: int, store: limiter.Store,
          task_id: str | None = None) -> Claimed | Skip | Defer | Upload:
    """Decide whether this message goes now; mark it ``sending`` (by ``task_id``) if so."""
    row = conn.execute(ROW, {"oid": outbound_id}).first()
    if row is None:
        return Skip("no such message")
    now = datetime.now(timezone.utc)
    claimed_at = _claimed_at(row)
    if (row.status == "sending" and row.claimed_by != task_id and claimed_at is not None
            and now - claimed_at < CALL_LEASE):
        return Skip(f"being sent by task {row.claimed_by}")  # a second copy of the task: leave it be
    if row.status == "sending":
        # The last attempt died during its call to Meta (or before it): the outcome is unknown.
        set_columns(conn, row.id, status="in_doubt", error_title="the sender stopped during its call to Meta")
        logger.warning("send_message: outbound %s was mid-call when its worker stopped: in doubt", row.id)
        return Skip("in doubt", following(conn, row))
    if row.status != "queued":
        return Skip(f"already {row.status}", following(conn, row))
    if row.broadcast_status == "cancelled":
        # Put back after the cancel (a 130429, a retry), or never queued before it: not sent.
        set_columns(conn, row.id, status="cancelled")
        return Skip("broadcast cancelled", following(conn, row))
    if row.kind != "read":
        # Locks the earlier message (FOR SHARE) so its outcome cannot slip past unseen: it either
        # settled before this read, or its settling waits for this transaction and then sees `parked`.
        earlier = conn.execute(_EARLIER, {"number": row.phone_number_id, "to": row.recipient,
                                          "before": row.id}).scalar()
        if earlier is not None:
            set_columns(conn, row.id, parked=True)
            return Skip(f"waiting for outbound {earlier} to the same recipient")
    unapproved = _unapproved(row)
    if unapproved:
        set_columns(conn, row.id, status="failed", error_code=None, error_title="refused before sending",
                    error_details=unapproved)
        logger.error("send_message: outbound %s refused: %s", row.id, unapproved)
        return Skip(unapproved, following(conn, row))
    if row.kind not in ("template", "read") and not window_open(conn, row.phone_number_id, row.recipient, now):
        set_columns(conn, row.id, status="failed", error_code=131047,
             error_title="Re-engagement message: refused before sending",
             error_details="the recipient's last message is older than 24 hours (or there is none); "
                           "only a template can open the conversation")
        return Skip("outside the 24-hour window", following(conn, row))
    if row.media_file_id is not None and row.media_id is None:
        # Uploaded before the pair slot is reserved: an upload can take longer than the slot waits.
        return Upload(row)
    if row.kind != "read":
        wait = store.pair_reserve(row.phone_number_id, row.recipient)
        if wait > 0:
            return Defer(max(MIN_DEFER, wait))
    body = dict(row.payload)
    posted = {"posted_sha256": compose.digest(compose.approved_text(body) or "")} if row.approval_id else {}
    set_columns(conn, row.id, "attempts", status="sending", parked=False, claimed_by=task_id, claimed_at=now,
                **posted)
    if row.kind != "read":
        body["biz_opaque_callback_data"] = f"{CALLBACK_PREFIX}{row.id}"
    return Claimed(row, body, task_id)


def _unapproved(row: Any) -> str | None:
    """Why a send carrying out an approval must not go: its words are not exactly what was approved."""
    if row.approval_id is None:
        return None
    words = compose.approved_text(row.payload)
    if words is None or row.approved_sha256 is None or compose.digest(words) != row.approved_sha256:
        return f"its words are not the ones approval {row.approval_id} approved"
    return None


# The common claim in one statement, on PostgreSQL: a template (a broadcast's kind) or a read receipt,
# not carrying out a lawyer's approval (claim() checks those words),
# queued, with no earlier message to its recipient still on its way and its broadcast not cancelled, is
# marked `sending` at once. Run in autocommit, the statement is the transaction: one round trip instead
# of five, which at hundreds of sends a second keeps each claim well inside the consumer's lead. Any
# other case (a text needing the 24-hour check, a message to park, one found mid-call) matches nothing
# and goes the way of claim(), whose locks it needs.
# Prepared once per connection (db.prepared): the server plans it once, not on every send.
CLAIM_AT_ONCE = prepared("waflow_claim", "(bigint, text, timestamptz)", """
UPDATE outbound_messages AS o
SET status = 'sending', attempts = o.attempts + 1, parked = false, claimed_by = $2, claimed_at = $3,
    updated_at = $3
WHERE o.id = $1 AND o.status = 'queued'
  AND (o.kind = 'read' OR (o.kind = 'template' AND NOT EXISTS (
        SELECT 1 FROM outbound_messages AS earlier
        WHERE earlier.phone_number_id = o.phone_number_id AND earlier.recipient = o.recipient
          AND earlier.id < o.id AND earlier.status IN ('queued', 'sending'))))
  AND NOT EXISTS (SELECT 1 FROM broadcasts AS b WHERE b.id = o.broadcast_id AND b.status = 'cancelled')
  AND o.approval_id IS NULL
RETURNING o.*""")
_UNCLAIM = (sa.update(OUTBOUND)
            .where(C.id == sa.bindparam("oid"), C.status == "sending",
                   C.claimed_by.is_not_distinct_from(sa.bindparam("task")))
            .values(status="queued", attempts=C.attempts - 1, claimed_by=None, claimed_at=None,
                    updated_at=sa.bindparam("now")))


def claim_at_once(conn: sa.Connection, outbound_id: int, store: limiter.Store,
                  task_id: str | None = None) -> Claimed | Defer | None:
    """claim() in one statement for the common case (PostgreSQL, ``conn`` in autocommit); None when
    it does not apply, and then claim() decides. Put off like claim() when the recipient's pair pacing
    says wait: the mark is taken back, and the message was never near Meta."""
    if conn.dialect.name != "postgresql":
        return None
    rows = execute_prepared(conn, CLAIM_AT_ONCE, outbound_id, task_id, datetime.now(timezone.utc))
    if not rows:
        return None
    row = rows[0]
    def take_back() -> None:
        conn.execute(_UNCLAIM, {"oid": outbound_id, "task": task_id, "now": datetime.now(timezone.utc)})

    try:
        wait = 0.0 if row.kind == "read" else store.pair_reserve(row.phone_number_id, row.recipient)
    except BaseException:
        take_back()
        raise
    if wait > 0:
        take_back()
        return Defer(max(MIN_DEFER, wait))
    body = dict(row.payload)
    if row.kind != "read":
        body["biz_opaque_callback_data"] = f"{CALLBACK_PREFIX}{row.id}"
    return Claimed(row, body, task_id)



def unclaim(conn: sa.Connection, claimed: Claimed) -> None:
    """The task failed before its call to Meta (the limiter unreachable): queued again, not in doubt."""
    set_columns(conn, claimed.id, only_if_claimed_by=claimed.task_id, status="queued")


