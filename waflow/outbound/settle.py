"""Settling: record Meta's answer to a send and say what happens next.

By class of answer (``waflow.whatsapp``): accepted (with its row in ``messages``, where
status webhooks move it), failed with Meta's code, put back without spending a retry
(130429 pauses the number; 131056 waits 4^X s for that recipient; 131057 waits 60 s),
retried by the retry policy (transient), or left in doubt (no answer came back). A status
webhook that names one of our sends settles it too (``reconcile``).
"""
from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from waflow import compose, conversation_state
from waflow.contacts import upsert_contact, upsert_conversation
from waflow.db import execute_prepared, insert, prepared
from waflow.events import ContactInfo
from waflow.models import Message, MessageStatus, status_rank
from waflow.outbound.claim import Claimed
from waflow.outbound.commands import Queued
from waflow.outbound.outbox import (ANY, CALLBACK_PREFIX, MAINTENANCE_WAIT, PAIR_WAIT_CAP, ROW, THROUGHPUT_PAUSE,
                                  following, set_columns)
from waflow.whatsapp import Answer, Outcome

logger = logging.getLogger(__name__)


@dataclass
class Settled:
    status: str
    following: list[Queued] = field(default_factory=list)
    again_in: float | None = None  # put back, without spending a retry, after this many seconds
    pause_number: float | None = None  # no send for the number during this many seconds
    pair_wait: float | None = None  # no send to this recipient during this many seconds (131056)
    retry: bool = False  # a transient failure: the retry policy takes it from here


def settle(conn: sa.Connection, claimed: Claimed, answer: Answer, *, last_attempt: bool) -> Settled:
    """Record Meta's answer and say what happens next.

    Only while the message is still ``sending`` by this task: a status webhook can have settled it
    first (Meta accepted, the answer was lost, the "sent" webhook came back before the read
    timeout), and then Meta's late answer, or the lack of one, changes nothing."""
    row, task = claimed.row, claimed.task_id
    error = {"error_code": answer.code, "error_title": answer.title, "error_details": answer.details}
    outcome = answer.outcome
    if outcome is Outcome.ACCEPTED:
        if not accept(conn, row, answer.wamid, answer.wa_id, only_if_claimed_by=task):
            return Settled("settled meanwhile")
        return Settled("accepted", following(conn, row))
    if outcome is Outcome.UNKNOWN_OUTCOME:
        if not set_columns(conn, row.id, only_if_claimed_by=task, status="in_doubt", **error):
            return Settled("settled meanwhile")
        return Settled("in_doubt", following(conn, row))
    if outcome is Outcome.PERMANENT or (outcome is Outcome.TRANSIENT and last_attempt):
        if not set_columns(conn, row.id, only_if_claimed_by=task, status="failed", **error):
            return Settled("settled meanwhile")
        return Settled("failed", following(conn, row), retry=outcome is Outcome.TRANSIENT)
    counters = ("pair_attempts",) if outcome is Outcome.PAIR else ()
    if not set_columns(conn, row.id, *counters, only_if_claimed_by=task, status="queued", **error):
        return Settled("settled meanwhile")
    if outcome is Outcome.THROUGHPUT:
        return Settled("queued", again_in=0.0, pause_number=THROUGHPUT_PAUSE)
    if outcome is Outcome.MAINTENANCE:
        return Settled("queued", again_in=MAINTENANCE_WAIT, pause_number=MAINTENANCE_WAIT)
    if outcome is Outcome.PAIR:
        wait = min(PAIR_WAIT_CAP, 4.0 ** row.pair_attempts)
        return Settled("queued", again_in=wait, pair_wait=wait)
    return Settled("queued", retry=True)



def _recipient_contact(conn: sa.Connection, recipient: str, wa_id: str | None) -> int:
    if compose.is_user_id(recipient):
        return upsert_contact(conn, ContactInfo(user_id=recipient))
    return upsert_contact(conn, ContactInfo(wa_id=wa_id or recipient.lstrip("+")))


def accept(conn: sa.Connection, row: Any, wamid: str | None, wa_id: str | None, *,
           only_if_claimed_by: Any = ANY) -> bool:
    """Mark an outbound message accepted (with ``only_if_claimed_by``: while still sending by that task);
    give it its row in ``messages`` with the furthest status already received for it (status
    webhooks can arrive before the send is recorded). Returns whether it was marked."""
    now = datetime.now(timezone.utc)
    if not set_columns(conn, row.id, only_if_claimed_by=only_if_claimed_by, status="accepted", wamid=wamid, accepted_at=now,
                error_code=None, error_title=None, error_details=None):
        return False
    if not wamid:  # a read receipt: nothing to show in the conversation
        return True
    contact_id = _recipient_contact(conn, row.recipient, wa_id)
    conversation_id = upsert_conversation(conn, contact_id, row.phone_number_id, None, None)
    kind = row.payload.get("type", row.kind)
    message_id = conn.execute(_insert_message(conn.dialect.name), {
        "wamid": wamid, "status_wamid": wamid, "conversation_id": conversation_id, "contact_id": contact_id,
        "phone_number_id": row.phone_number_id, "direction": "outbound", "type": kind,
        "body": row.text, "sent_at": now, "content": {"outbound_id": row.id, "request": row.payload},
        "context_wamid": (row.payload.get("context") or {}).get("message_id"),
    }).scalar()
    conversation_state.outbound(conn, conversation_id, message_id, sent_at=now, type=kind, body=row.text,
                                ends=conversation_state.ends_wait(row.lane, row.kind, row.approval_id),
                                commanded_at=row.created_at)
    return True


def _rank_sql(column: str) -> str:
    """``models.status_rank`` as PostgreSQL text, for the one statement below."""
    return str(status_rank(sa.literal_column(column)).compile(dialect=postgresql.dialect(),
                                                              compile_kwargs={"literal_binds": True}))


# accept() in one statement, on PostgreSQL, for a send to a phone number that Meta accepted with a wamid:
# the message marked accepted (while still `sending` by this task), its contact and conversation found
# or made (with what the inbox shows of it: conversation_state.outbound, $11 whether the reply ends the
# client's wait, $12 when it was commanded), its row in `messages` with the furthest status already kept
# for the wamid, and `message.new` in the change log. Run in autocommit it is one atomic transaction and
# one round trip, where accept() takes ten.
_NEWER = "(conversations.last_message_at IS NULL OR excluded.last_message_at >= conversations.last_message_at)"
ACCEPT_AT_ONCE = prepared("waflow_accept", "(bigint, text, text, timestamptz, text, text, text, text, jsonb, text, "
                          "boolean, timestamptz)", f"""
WITH settled AS (
  UPDATE outbound_messages
  SET status = 'accepted', wamid = $3, accepted_at = $4, error_code = NULL, error_title = NULL,
      error_details = NULL, updated_at = $4
  WHERE id = $1 AND status = 'sending' AND claimed_by IS NOT DISTINCT FROM $2
  RETURNING id
), contact AS (
  INSERT INTO contacts (wa_id, created_at, updated_at) SELECT $5, $4, $4 FROM settled
  ON CONFLICT (wa_id) DO UPDATE SET wa_id = excluded.wa_id
  RETURNING id
), conversation AS (
  INSERT INTO conversations (contact_id, phone_number_id, created_at, last_message_at, last_message_direction,
                             last_message_type, last_message_preview)
  SELECT id, $6, $4, $4, 'outbound', $7,
         left(regexp_replace($8, '\\s+', ' ', 'g'), {conversation_state.PREVIEW_LENGTH}) FROM contact
  ON CONFLICT (contact_id, phone_number_id) DO UPDATE SET
    last_message_at = CASE WHEN {_NEWER} THEN excluded.last_message_at ELSE conversations.last_message_at END,
    last_message_direction = CASE WHEN {_NEWER} THEN 'outbound' ELSE conversations.last_message_direction END,
    last_message_type = CASE WHEN {_NEWER} THEN excluded.last_message_type ELSE conversations.last_message_type END,
    last_message_preview = CASE WHEN {_NEWER} THEN excluded.last_message_preview
                           ELSE conversations.last_message_preview END,
    waiting_since = CASE WHEN $11 AND conversations.waiting_since IS NOT NULL
                    THEN {conversation_state.still_waiting_sql("conversations.id", "$12")}
                    ELSE conversations.waiting_since END,
    urgent = CASE WHEN $11 THEN FALSE ELSE conversations.urgent END
  RETURNING id, contact_id
), furthest AS (
  SELECT status, timestamp FROM message_statuses
  WHERE wamid = $3 AND {_rank_sql("status")} > 0 ORDER BY {_rank_sql("status")} DESC LIMIT 1
), message AS (
  INSERT INTO messages (wamid, conversation_id, contact_id, phone_number_id, direction, type, body, sent_at,
                        content, context_wamid, status, status_at, created_at)
  SELECT $3, c.id, c.contact_id, $6, 'outbound', $7, $8, $4, $9,
         $10, (SELECT status FROM furthest), (SELECT timestamp FROM furthest), $4
  FROM conversation AS c
  ON CONFLICT (wamid) DO NOTHING
  RETURNING id, conversation_id
), logged AS (
  INSERT INTO changes (kind, conversation_id, message_id, key, created_at)
  SELECT 'message.new', conversation_id, id, 'message:' || id || ':new', $4 FROM message
  ON CONFLICT (key) DO NOTHING
)
SELECT (SELECT count(*) FROM settled) AS settled
""")


# following()'s lookup, prepared, for accept_at_once (after its commit, as settle() looks after its update).
NEXT_AT_ONCE = prepared("waflow_next", "(text, text, bigint)", """
SELECT o.id, o.lane, o.parked, b.token FROM outbound_messages AS o LEFT JOIN broadcasts AS b ON b.id = o.broadcast_id
WHERE o.phone_number_id = $1 AND o.recipient = $2 AND o.id > $3 AND o.status = 'queued'
ORDER BY o.id LIMIT 1""")


def accept_at_once(conn: sa.Connection, claimed: Claimed, answer: Answer) -> Settled | None:
    """settle() for Meta's acceptance in one statement (PostgreSQL, ``conn`` in autocommit); None
    when it does not apply (no wamid, a business-scoped user id, SQLite), and then settle() decides.
    The next message to the recipient is looked up after the commit, as settle() does after its update."""
    row = claimed.row
    if (conn.dialect.name != "postgresql" or answer.outcome is not Outcome.ACCEPTED or not answer.wamid
            or compose.is_user_id(row.recipient)):
        return None
    settled = execute_prepared(
        conn, ACCEPT_AT_ONCE, row.id, claimed.task_id, answer.wamid, datetime.now(timezone.utc),
        answer.wa_id or row.recipient.lstrip("+"), row.phone_number_id, row.payload.get("type", row.kind),
        row.text, json.dumps({"outbound_id": row.id, "request": row.payload}),
        (row.payload.get("context") or {}).get("message_id"),
        conversation_state.ends_wait(row.lane, row.kind, row.approval_id), row.created_at,
        relaxed=True,  # see _relaxed_commit
    )[0].settled
    if not settled:
        return Settled("settled meanwhile")
    following_rows = execute_prepared(conn, NEXT_AT_ONCE, row.phone_number_id, row.recipient, row.id)
    nxt = following_rows[0] if following_rows else None
    return Settled("accepted", [] if nxt is None or not nxt.parked else
                   [Queued(nxt.id, nxt.lane, row.phone_number_id, nxt.token)])


@functools.cache
def _insert_message(dialect: str) -> Any:
    """The outbound message's row, built once per dialect, with the furthest status already kept for its
    wamid folded in (status webhooks can arrive before the send is recorded)."""
    def furthest(column: Any) -> Any:
        return (sa.select(column).where(MessageStatus.wamid == sa.bindparam("status_wamid"),
                                        status_rank(MessageStatus.status) > 0)
                .order_by(status_rank(MessageStatus.status).desc()).limit(1).scalar_subquery())

    return insert(dialect, Message).values(
        status=furthest(MessageStatus.status), status_at=furthest(MessageStatus.timestamp),
    ).on_conflict_do_nothing(index_elements=["wamid"]).returning(Message.id)


def reconcile(conn: sa.Connection, callback_data: str | None, wamid: str) -> list[Queued]:
    """A status webhook names one of our sends: Meta did accept it, whatever waflow recorded (in
    doubt, not yet recorded, a retry pending). Returns the messages this sends on."""
    if not callback_data or not callback_data.startswith(CALLBACK_PREFIX):
        return []
    try:
        outbound_id = int(callback_data[len(CALLBACK_PREFIX):])
    except ValueError:
        return []
    row = conn.execute(ROW, {"oid": outbound_id}).first()
    if row is None:
        return []
    if row.status not in ("accepted", "cancelled") and not row.wamid:
        # Sending, in doubt, or even queued for a retry or failed after an answer that hid an
        # acceptance (a 5xx): Meta has it. A pending retry of it then finds it accepted.
        logger.info("reconcile: outbound %s (%s) settled as accepted by a status webhook", row.id, row.status)
        accept(conn, row, wamid, None)
    # Every status of a settled send wakes what waits behind it again: a lost wake-up is made good.
    return following(conn, row)


