"""Outbound stage: consumes ``wa.outgoing.command`` (replies) and ``wa.outgoing.broadcast`` (bulk).

A command (``command()``) stores one message to send in ``outbound_messages``
under an idempotency key, then its send task is queued on its lane's queue.
The send task carries ``rate_limit="80/s"`` (the design card's); the worker's
consumer (``waflow.consumer``) turns that into one limit for the phone number
across every worker, shared through ``waflow.limiter``, replies ahead of
broadcasts. The task then:

1. **claims** the message: nothing to do if it is settled; ``in_doubt`` if it
   was found ``sending`` (a crash during a call: Meta takes no idempotency key,
   so it is never sent again automatically); parked behind an earlier message
   to the same recipient that is still on its way (that one's outcome sends it
   on, so a recipient's messages leave in the order they were commanded);
   refused outside the 24-hour customer-service window unless a template or a
   read receipt; put off while the recipient's pair pacing says wait;
   otherwise marked ``sending``;
2. sends at its slot (``POST /{phone_number_id}/messages``, with our id in
   ``biz_opaque_callback_data`` so status webhooks can settle a doubt);
3. **settles** Meta's answer by class (``waflow.whatsapp``): accepted (with its
   row in ``messages``, where status webhooks move it), failed with Meta's code,
   put back without spending a retry (130429 pauses the number; 131056 waits
   4^X s for that recipient; 131057 waits 60 s), retried by the retry policy
   (transient), or left in doubt (no answer came back).

Design: ``../shared/seed/event-bus-async-workflow.en.md`` section 3.2.
"""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from waflow import compose, dlq, limiter, queues, whatsapp
from waflow.config import settings
from waflow.db import POOL_SIZE, autocommit, execute_prepared, get_engine, insert, prepared, transaction
from waflow.events import ContactInfo
from waflow.models import Broadcast, Contact, Conversation, Message, MessageStatus, OutboundMessage, status_rank
from waflow.tasks import MAX_COUNTDOWN, TransientError, stage_task
from waflow.whatsapp import Answer, Client, Outcome

logger = logging.getLogger(__name__)

LANES = {"reply": queues.OUTGOING_COMMAND, "broadcast": queues.OUTGOING_BROADCAST}
OUTBOUND = OutboundMessage.__table__
# Status webhooks echo this with our id, so a send in doubt can be settled from them.
CALLBACK_PREFIX = "waflow:"
WINDOW = timedelta(hours=24)
# 130429: Meta counts in 1-s windows; one window's pause lets it clear.
THROUGHPUT_PAUSE = 1.0
# 131057: maintenance (e.g. a throughput upgrade) lasts up to a minute.
MAINTENANCE_WAIT = 60.0
# 131056: Meta's advice, 4^X seconds after the X-th refusal (1, 4, 16, 64 s), capped.
PAIR_WAIT_CAP = min(64.0, MAX_COUNTDOWN)
# A message that cannot go yet (pair pacing) is looked at again no sooner than this.
MIN_DEFER = 0.5
# A send ends within the longest wait for its slot (a 131057 pause) plus the client's timeouts; a
# message `sending` for longer than this was left by a sender that died mid-call.
CALL_LEASE = timedelta(seconds=MAINTENANCE_WAIT + whatsapp.CONNECT_TIMEOUT + whatsapp.READ_TIMEOUT + 10)


# --- commands --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Queued:
    """What the send task needs to be queued for one message."""

    id: int
    lane: str
    phone_number_id: str
    # The broadcast's token (``Broadcast.token``): the paced consumer skips the slot of a cancelled one.
    broadcast: str | None = None


def command(conn: sa.Connection, *, key: str, recipient: str, message: Any, lane: str = "reply",
            phone_number_id: str | None = None, broadcast_id: int | None = None,
            broadcast_token: str | None = None) -> tuple[Queued, bool]:
    """Store a message to send under ``key``; return it and whether it is new (False: the same
    key was commanded before, and nothing changes). Queue it with ``enqueue`` after the commit."""
    if lane not in LANES:
        raise ValueError(f"lane must be one of {', '.join(LANES)}")
    if isinstance(message, dict):
        message = compose.parse(message)
    number = phone_number_id or settings.phone_number_id
    now = datetime.now(timezone.utc)
    new_id = conn.execute(insert(conn.dialect.name, OutboundMessage).values(
        idempotency_key=key, phone_number_id=number, recipient=recipient, lane=lane, kind=message.kind,
        payload=compose.request_body(message, recipient), text=message.text, broadcast_id=broadcast_id,
        status="queued",
        created_at=now, updated_at=now,
    ).on_conflict_do_nothing(index_elements=["idempotency_key"]).returning(OutboundMessage.id)).scalar()
    if new_id is not None:
        return Queued(new_id, lane, number, broadcast_token), True
    row = conn.execute(sa.select(OutboundMessage.id, OutboundMessage.lane, OutboundMessage.phone_number_id)
                       .where(OutboundMessage.idempotency_key == key)).one()
    return Queued(row.id, row.lane, row.phone_number_id, broadcast_token), False


def _headers(m: Queued) -> dict[str, str]:
    """What the paced consumer reads of a send message (``waflow.consumer``)."""
    headers = {"lane": m.lane, "phone_number_id": m.phone_number_id}
    if m.broadcast is not None:
        headers["broadcast_id"] = m.broadcast
    return headers


def enqueue(messages: list[Queued], countdown: float | None = None, retries: int = 0) -> None:
    """Queue the send task of each message on its lane, with what the paced consumer reads."""
    for m in messages:
        send_message.apply_async((m.id,), queue=LANES[m.lane], headers=_headers(m), countdown=countdown,
                                 retries=retries)


# --- claiming --------------------------------------------------------------------------------------------------


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


# The send path's statements, on the Core table, built once: at hundreds of sends a second, building
# ORM-level statements per call cost more CPU than running them (measured with py-spy).
_C = OUTBOUND.c
_NEXT = (sa.select(_C.id, _C.lane, _C.parked, Broadcast.token)
         .outerjoin(Broadcast, Broadcast.id == _C.broadcast_id)
         .where(_C.phone_number_id == sa.bindparam("number"), _C.recipient == sa.bindparam("to"),
                _C.id > sa.bindparam("after"), _C.status == "queued")
         .order_by(_C.id).limit(1))
_EARLIER = (sa.select(_C.id)
            .where(_C.phone_number_id == sa.bindparam("number"), _C.recipient == sa.bindparam("to"),
                   _C.id < sa.bindparam("before"), _C.status.in_(("queued", "sending")))
            .order_by(_C.id).limit(1).with_for_update(read=True))
_ROW = (sa.select(OUTBOUND, Broadcast.status.label("broadcast_status"))
        .outerjoin(Broadcast, Broadcast.id == _C.broadcast_id)
        .where(_C.id == sa.bindparam("oid")).with_for_update(of=OUTBOUND))
_INCREMENT = {"attempts": _C.attempts + 1, "pair_attempts": _C.pair_attempts + 1}


@functools.cache
def _update(columns: frozenset[str], claimed: bool = False) -> Any:
    """UPDATE outbound_messages SET <columns> (and updated_at) WHERE id = :oid, and with ``claimed``
    only while it is still ``sending`` by the task :task."""
    values = {c: _INCREMENT[c] if c in _INCREMENT else sa.bindparam(f"v_{c}") for c in columns | {"updated_at"}}
    where = [_C.id == sa.bindparam("oid")]
    if claimed:
        where += [_C.status == "sending", _C.claimed_by.is_not_distinct_from(sa.bindparam("task"))]
    return sa.update(OUTBOUND).where(*where).values(values)


_ANY = object()


def _set(conn: sa.Connection, outbound_id: int, *increments: str, only_if_claimed_by: Any = _ANY,
         **values: Any) -> bool:
    """Set columns of one message; ``increments`` names counters to add one to. With
    ``only_if_claimed_by`` (a task id, or None), only while the message is still ``sending`` by that
    task. Returns whether it was set."""
    values["updated_at"] = datetime.now(timezone.utc)
    guarded = only_if_claimed_by is not _ANY
    params = {"oid": outbound_id, **{f"v_{k}": v for k, v in values.items()}}
    if guarded:
        params["task"] = only_if_claimed_by
    return conn.execute(_update(frozenset(values) | frozenset(increments), guarded), params).rowcount == 1


def _following(conn: sa.Connection, row: Any) -> list[Queued]:
    """The next message to the same recipient, if its task parked waiting for this one: send it on.

    ``parked`` stays set until that message is claimed, so whoever sees this message settled
    again (a redelivered task, a repeated status webhook) sends it on again: a wake-up lost between
    a commit and its publish is made good, and a second one is harmless."""
    nxt = conn.execute(_NEXT, {"number": row.phone_number_id, "to": row.recipient, "after": row.id}).first()
    if nxt is None or not nxt.parked:
        return []
    return [Queued(nxt.id, nxt.lane, row.phone_number_id, nxt.token)]


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
          task_id: str | None = None) -> Claimed | Skip | Defer:
    """Decide whether this message goes now; mark it ``sending`` (by ``task_id``) if so."""
    row = conn.execute(_ROW, {"oid": outbound_id}).first()
    if row is None:
        return Skip("no such message")
    now = datetime.now(timezone.utc)
    claimed_at = _claimed_at(row)
    if (row.status == "sending" and row.claimed_by != task_id and claimed_at is not None
            and now - claimed_at < CALL_LEASE):
        return Skip(f"being sent by task {row.claimed_by}")  # a second copy of the task: leave it be
    if row.status == "sending":
        # The last attempt died during its call to Meta (or before it): the outcome is unknown.
        _set(conn, row.id, status="in_doubt", error_title="the sender stopped during its call to Meta")
        logger.warning("send_message: outbound %s was mid-call when its worker stopped: in doubt", row.id)
        return Skip("in doubt", _following(conn, row))
    if row.status != "queued":
        return Skip(f"already {row.status}", _following(conn, row))
    if row.broadcast_status == "cancelled":
        # Put back after the cancel (a 130429, a retry), or never queued before it: not sent.
        _set(conn, row.id, status="cancelled")
        return Skip("broadcast cancelled", _following(conn, row))
    if row.kind != "read":
        # Locks the earlier message (FOR SHARE) so its outcome cannot slip past unseen: it either
        # settled before this read, or its settling waits for this transaction and then sees `parked`.
        earlier = conn.execute(_EARLIER, {"number": row.phone_number_id, "to": row.recipient,
                                          "before": row.id}).scalar()
        if earlier is not None:
            _set(conn, row.id, parked=True)
            return Skip(f"waiting for outbound {earlier} to the same recipient")
    if row.kind not in ("template", "read") and not window_open(conn, row.phone_number_id, row.recipient, now):
        _set(conn, row.id, status="failed", error_code=131047,
             error_title="Re-engagement message: refused before sending",
             error_details="the recipient's last message is older than 24 hours (or there is none); "
                           "only a template can open the conversation")
        return Skip("outside the 24-hour window", _following(conn, row))
    if row.kind != "read":
        wait = store.pair_reserve(row.phone_number_id, row.recipient)
        if wait > 0:
            return Defer(max(MIN_DEFER, wait))
    _set(conn, row.id, "attempts", status="sending", parked=False, claimed_by=task_id, claimed_at=now)
    body = dict(row.payload)
    if row.kind != "read":
        body["biz_opaque_callback_data"] = f"{CALLBACK_PREFIX}{row.id}"
    return Claimed(row, body, task_id)


# The common claim in one statement, on PostgreSQL: a template (a broadcast's kind) or a read receipt,
# queued, with no earlier message to its recipient still on its way and its broadcast not cancelled, is
# marked `sending` at once. Run in autocommit, the statement is the transaction: one round trip instead
# of five, which at hundreds of sends a second keeps each claim well inside the consumer's lead. Any
# other case (a text needing the 24-hour check, a message to park, one found mid-call) matches nothing
# and goes the way of claim(), whose locks it needs.
# Prepared once per connection (db.prepared): the server plans it once, not on every send.
_CLAIM_AT_ONCE = prepared("waflow_claim", "(bigint, text, timestamptz)", """
UPDATE outbound_messages AS o
SET status = 'sending', attempts = o.attempts + 1, parked = false, claimed_by = $2, claimed_at = $3,
    updated_at = $3
WHERE o.id = $1 AND o.status = 'queued'
  AND (o.kind = 'read' OR (o.kind = 'template' AND NOT EXISTS (
        SELECT 1 FROM outbound_messages AS earlier
        WHERE earlier.phone_number_id = o.phone_number_id AND earlier.recipient = o.recipient
          AND earlier.id < o.id AND earlier.status IN ('queued', 'sending'))))
  AND NOT EXISTS (SELECT 1 FROM broadcasts AS b WHERE b.id = o.broadcast_id AND b.status = 'cancelled')
RETURNING o.*""")
_UNCLAIM = (sa.update(OUTBOUND)
            .where(_C.id == sa.bindparam("oid"), _C.status == "sending",
                   _C.claimed_by.is_not_distinct_from(sa.bindparam("task")))
            .values(status="queued", attempts=_C.attempts - 1, claimed_by=None, claimed_at=None,
                    updated_at=sa.bindparam("now")))


def claim_at_once(conn: sa.Connection, outbound_id: int, store: limiter.Store,
                  task_id: str | None = None) -> Claimed | Defer | None:
    """claim() in one statement for the common case (PostgreSQL, ``conn`` in autocommit); None when
    it does not apply, and then claim() decides. Put off like claim() when the recipient's pair pacing
    says wait: the mark is taken back, and the message was never near Meta."""
    if conn.dialect.name != "postgresql":
        return None
    row = execute_prepared(conn, _CLAIM_AT_ONCE, outbound_id, task_id, datetime.now(timezone.utc)).first()
    if row is None:
        return None
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


# --- settling --------------------------------------------------------------------------------------------------


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
        return Settled("accepted", _following(conn, row))
    if outcome is Outcome.UNKNOWN_OUTCOME:
        if not _set(conn, row.id, only_if_claimed_by=task, status="in_doubt", **error):
            return Settled("settled meanwhile")
        return Settled("in_doubt", _following(conn, row))
    if outcome is Outcome.PERMANENT or (outcome is Outcome.TRANSIENT and last_attempt):
        if not _set(conn, row.id, only_if_claimed_by=task, status="failed", **error):
            return Settled("settled meanwhile")
        return Settled("failed", _following(conn, row), retry=outcome is Outcome.TRANSIENT)
    counters = ("pair_attempts",) if outcome is Outcome.PAIR else ()
    if not _set(conn, row.id, *counters, only_if_claimed_by=task, status="queued", **error):
        return Settled("settled meanwhile")
    if outcome is Outcome.THROUGHPUT:
        return Settled("queued", again_in=0.0, pause_number=THROUGHPUT_PAUSE)
    if outcome is Outcome.MAINTENANCE:
        return Settled("queued", again_in=MAINTENANCE_WAIT, pause_number=MAINTENANCE_WAIT)
    if outcome is Outcome.PAIR:
        wait = min(PAIR_WAIT_CAP, 4.0 ** row.pair_attempts)
        return Settled("queued", again_in=wait, pair_wait=wait)
    return Settled("queued", retry=True)


def unclaim(conn: sa.Connection, claimed: Claimed) -> None:
    """The task failed before its call to Meta (the limiter unreachable): queued again, not in doubt."""
    _set(conn, claimed.id, only_if_claimed_by=claimed.task_id, status="queued")


def _recipient_contact(conn: sa.Connection, recipient: str, wa_id: str | None) -> int:
    from waflow.core import upsert_contact

    if compose.is_user_id(recipient):
        return upsert_contact(conn, ContactInfo(user_id=recipient))
    return upsert_contact(conn, ContactInfo(wa_id=wa_id or recipient.lstrip("+")))


def accept(conn: sa.Connection, row: Any, wamid: str | None, wa_id: str | None, *,
           only_if_claimed_by: Any = _ANY) -> bool:
    """Mark an outbound message accepted (with ``only_if_claimed_by``: while still sending by that task);
    give it its row in ``messages`` with the furthest status already received for it (status
    webhooks can arrive before the send is recorded). Returns whether it was marked."""
    from waflow.core import upsert_conversation

    now = datetime.now(timezone.utc)
    if not _set(conn, row.id, only_if_claimed_by=only_if_claimed_by, status="accepted", wamid=wamid, accepted_at=now,
                error_code=None, error_title=None, error_details=None):
        return False
    if not wamid:  # a read receipt: nothing to show in the conversation
        return True
    contact_id = _recipient_contact(conn, row.recipient, wa_id)
    conversation_id = upsert_conversation(conn, contact_id, row.phone_number_id, None, None)
    conn.execute(_insert_message(conn.dialect.name), {
        "wamid": wamid, "status_wamid": wamid, "conversation_id": conversation_id, "contact_id": contact_id,
        "phone_number_id": row.phone_number_id, "direction": "outbound", "type": row.payload.get("type", row.kind),
        "body": row.text, "sent_at": now, "content": {"outbound_id": row.id, "request": row.payload},
        "context_wamid": (row.payload.get("context") or {}).get("message_id"),
    })
    return True


def _rank_sql(column: str) -> str:
    """``models.status_rank`` as PostgreSQL text, for the one statement below."""
    return str(status_rank(sa.literal_column(column)).compile(dialect=postgresql.dialect(),
                                                              compile_kwargs={"literal_binds": True}))


# accept() in one statement, on PostgreSQL, for a send to a phone number that Meta accepted with a wamid:
# the message marked accepted (while still `sending` by this task), its contact and conversation found
# or made, and its row in `messages` with the furthest status already kept for the wamid. Run in
# autocommit it is one atomic transaction and one round trip, where accept() takes eight.
_ACCEPT_AT_ONCE = prepared("waflow_accept", "(bigint, text, text, timestamptz, text, text, text, text, jsonb, text)", f"""
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
  INSERT INTO conversations (contact_id, phone_number_id, created_at) SELECT id, $6, $4 FROM contact
  ON CONFLICT (contact_id, phone_number_id) DO UPDATE SET phone_number_id = excluded.phone_number_id
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
  RETURNING id
)
SELECT (SELECT count(*) FROM settled) AS settled
""")


# _following()'s lookup, prepared, for accept_at_once (after its commit, as settle() looks after its update).
_NEXT_AT_ONCE = prepared("waflow_next", "(text, text, bigint)", """
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
        conn, _ACCEPT_AT_ONCE, row.id, claimed.task_id, answer.wamid, datetime.now(timezone.utc),
        answer.wa_id or row.recipient.lstrip("+"), row.phone_number_id, row.payload.get("type", row.kind),
        row.text, json.dumps({"outbound_id": row.id, "request": row.payload}),
        (row.payload.get("context") or {}).get("message_id"), relaxed=True,  # see _relaxed_commit
    ).scalar_one()
    if not settled:
        return Settled("settled meanwhile")
    nxt = execute_prepared(conn, _NEXT_AT_ONCE, row.phone_number_id, row.recipient, row.id).first()
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
    ).on_conflict_do_nothing(index_elements=["wamid"])


def reconcile(conn: sa.Connection, callback_data: str | None, wamid: str) -> list[Queued]:
    """A status webhook names one of our sends: Meta did accept it, whatever waflow recorded (in
    doubt, not yet recorded, a retry pending). Returns the messages this sends on."""
    if not callback_data or not callback_data.startswith(CALLBACK_PREFIX):
        return []
    try:
        outbound_id = int(callback_data[len(CALLBACK_PREFIX):])
    except ValueError:
        return []
    row = conn.execute(_ROW, {"oid": outbound_id}).first()
    if row is None:
        return []
    if row.status not in ("accepted", "cancelled") and not row.wamid:
        # Sending, in doubt, or even queued for a retry or failed after an answer that hid an
        # acceptance (a 5xx): Meta has it. A pending retry of it then finds it accepted.
        logger.info("reconcile: outbound %s (%s) settled as accepted by a status webhook", row.id, row.status)
        accept(conn, row, wamid, None)
    # Every status of a settled send wakes what waits behind it again: a lost wake-up is made good.
    return _following(conn, row)


class NotInDoubt(ValueError):
    """Only a message in doubt is settled by hand; the message says where this one stands."""


def resolve(conn: sa.Connection, outbound_id: int, *, wamid: str | None = None, failed: bool = False,
            resend: bool = False, by: str) -> list[Queued]:
    """A person settles a send in doubt: Meta took it (its wamid), it failed, or send it again.
    Returns what to queue after the commit."""
    row = conn.execute(_ROW, {"oid": outbound_id}).first()
    if row is not None and row.status == "queued" and resend:
        # Queued with no task to send it (its publish was lost): queue it again; a duplicate is harmless.
        return [Queued(row.id, row.lane, row.phone_number_id, _token(conn, row.broadcast_id))]
    if row is None or row.status != "in_doubt":
        raise NotInDoubt(f"outbound {outbound_id} is {row.status if row else 'unknown'}, not in doubt")
    logger.info("resolve: outbound %s settled by %s (%s)", outbound_id, by,
                "accepted" if wamid else "failed" if failed else "resend")
    if wamid:
        accept(conn, row, wamid, None)
        return []
    if failed:
        _set(conn, row.id, status="failed", error_title=f"marked failed by {by} after a send in doubt")
        return []
    _set(conn, row.id, status="queued", claimed_by=None, claimed_at=None)
    return [Queued(row.id, row.lane, row.phone_number_id, _token(conn, row.broadcast_id))]


def _token(conn: sa.Connection, broadcast_id: int | None) -> str | None:
    if broadcast_id is None:
        return None
    return conn.execute(sa.select(Broadcast.token).where(Broadcast.id == broadcast_id)).scalar()


def reopen(conn: sa.Connection, args: list[Any], _kwargs: dict[str, Any]) -> dict[str, Any]:
    """Before a dead-lettered send is replayed: only a message that failed is queued again (one Meta
    accepted meanwhile, or that a replay already sent, is refused); one left mid-call is put in doubt
    instead of replayed ("skip"). Returns how to publish it: its lane's queue, with the headers the
    paced consumer reads."""
    row = conn.execute(_ROW, {"oid": int(args[0])}).first()
    if row is None:
        raise dlq.NotReplayable(f"outbound {args[0]} does not exist")
    if row.status == "sending":
        _set(conn, row.id, status="in_doubt", error_title="dead-lettered during its call to Meta")
        return {"skip": f"outbound {row.id} was mid-call when it failed: now in doubt, settle it with "
                        "`flask --app wsgi outbox resolve`"}
    if row.status != "failed":
        raise dlq.NotReplayable(f"outbound {row.id} is {row.status}: nothing to send again")
    _set(conn, row.id, status="queued", parked=False)
    queued = Queued(row.id, row.lane, row.phone_number_id, _token(conn, row.broadcast_id))
    return {"queue": LANES[queued.lane], "headers": _headers(queued)}


dlq.REPLAY_HOOKS["waflow.outbound.send_message"] = reopen


# --- warming up ---


def warm_up(threads: int) -> None:
    """Open, before the first send, what the first sends would otherwise open while their slots pass:
    database connections (with SQLAlchemy's first-connect queries), the send path's statements run
    once on each of them, the limiter's store and connections to Meta. Measured with bench/send.py at 400/s: without it,
    the first half second of a sender's sends came 100-300 ms past their slots."""
    postgresql = get_engine().dialect.name == "postgresql"
    # The send path's statements run on the autocommit engine; the other engine serves the rare
    # cases (a message to park, an error to record) and opens one connection.
    send_path = get_engine(autocommit=True) if postgresql else None
    engines = {send_path: threads, get_engine(): 1} if postgresql else {get_engine(): threads}
    now = datetime.now(timezone.utc)
    with contextlib.ExitStack() as stack:
        for engine, count in engines.items():
            for conn in [stack.enter_context(engine.connect()) for _ in range(max(1, min(count, POOL_SIZE)))]:
                if engine is send_path:
                    # Statements that match nothing, on every connection: nothing changes, but the
                    # server process behind each one plans them and opens their tables and indexes.
                    execute_prepared(conn, _CLAIM_AT_ONCE, -1, None, now)
                    execute_prepared(conn, _ACCEPT_AT_ONCE, -1, None, "", now, "", "", "", None, "{}", None)
                    execute_prepared(conn, _NEXT_AT_ONCE, "", "", -1)
                else:
                    conn.execute(sa.text("SELECT 1"))
                    conn.rollback()
    limiter.default_store().warm_up(threads + 1)  # and the consumer's own thread, which reserves the slots
    client().preconnect(threads)


def is_sender(consumed: set[str]) -> bool:
    """Whether a worker consuming these queues sends to Meta (it consumes a send lane's queue)."""
    return bool(consumed & set(LANES.values()))


def warm_up_sender(consumed: set[str], concurrency: int) -> None:
    """A worker that consumes a send queue warms up (warm_up) before it takes its first message
    (waflow.tasks calls this in a thread while the worker connects, or as it becomes ready). A failure
    is only logged."""
    if not is_sender(consumed):
        return
    started = time.monotonic()
    try:
        warm_up(concurrency)
        logger.info("sender warmed up in %.0f ms", (time.monotonic() - started) * 1000)
    except Exception as exc:  # noqa: BLE001 - a database or Redis still starting: the first sends open them
        logger.warning("sender warm-up skipped: %s", type(exc).__name__)


# --- the task --------------------------------------------------------------------------------------------------

_client: Client | None = None


def client() -> Client:
    global _client
    if _client is None:
        _client = Client(settings.whatsapp_api_url, settings.access_token)
    return _client


def deliver(outbound_id: int, request: Any, retries: int, max_retries: int) -> str:
    """Claim, send at the slot, settle: one attempt at one message. Returns where it stands."""
    store = limiter.default_store()
    task_id = getattr(request, "id", None)
    one_statement = get_engine().dialect.name == "postgresql"
    step = None
    if one_statement:
        with autocommit() as conn:
            step = claim_at_once(conn, outbound_id, store, task_id)
    if step is None:
        with transaction() as conn:
            step = claim(conn, outbound_id, store, task_id)
    if isinstance(step, Defer):
        _again(request, outbound_id, step.seconds, retries)
        return "deferred"
    if isinstance(step, Skip):
        enqueue(step.following)
        return step.reason
    try:
        # The wait for the slot runs last, once the request is ready to write.
        answer = client().send(step.phone_number_id, step.body, before=lambda: limiter.wait_for_slot(request))
    except limiter.LimiterUnavailable as exc:
        # Nothing went to Meta: hand the message back rather than leave it `sending` (in doubt).
        with transaction() as conn:
            unclaim(conn, step)
        raise TransientError(f"outbound {outbound_id}: no send slot ({exc})") from exc
    settled = None
    if one_statement:
        with autocommit() as conn:
            settled = accept_at_once(conn, step, answer)
    if settled is None:
        with transaction() as conn:
            _relaxed_commit(conn)
            settled = settle(conn, step, answer, last_attempt=retries >= max_retries)
    if settled.pause_number:
        store.pause(step.phone_number_id, settled.pause_number)
    if settled.pair_wait:
        store.pair_penalize(step.phone_number_id, step.row.recipient, settled.pair_wait)
    if settled.again_in is not None:
        _again(request, outbound_id, settled.again_in, retries)
    enqueue(settled.following)
    if settled.retry:
        raise TransientError(f"outbound {outbound_id}: {answer.reason}")
    logger.log(logging.WARNING if settled.status != "accepted" else logging.DEBUG,
               "send_message: outbound %s %s (%s)", outbound_id, settled.status, answer.reason)
    return settled.status


def _relaxed_commit(conn: sa.Connection) -> None:
    """Let this transaction's commit return before its WAL record is flushed (PostgreSQL only).

    Only for recording Meta's answer: the mark that matters for "never twice", ``sending``, was
    committed durably before the call. Should PostgreSQL crash in the few milliseconds before the
    flush, the message is found ``sending`` and left in doubt (settled by its status webhook), never
    sent again. In exchange a sender's commits stop queueing behind the WAL flushes of the inbound
    stages' commits on the same server (one fsync per send instead of two)."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SET LOCAL synchronous_commit TO OFF"))


def _again(request: Any, outbound_id: int, seconds: float, retries: int) -> None:
    """Put the message back on its lane after ``seconds``, keeping its retry count."""
    headers = dict(request.headers or {}) if request is not None else {}
    lane = headers.get("lane", "reply")
    queued = Queued(outbound_id, lane if lane in LANES else "reply",
                    headers.get("phone_number_id") or settings.phone_number_id,
                    headers.get("broadcast_id"))
    enqueue([queued], countdown=min(MAX_COUNTDOWN, seconds) or None, retries=retries)


# The design card's rate_limit="80/s" (WHATSAPP_SEND_RATE's default): the paced consumer makes it the
# number's limit across every worker, and a rate stored with `flask --app wsgi send-rate` overrides it.
@stage_task(name="waflow.outbound.send_message", queue=queues.OUTGOING_COMMAND, rate_limit=f"{settings.send_rate}/s")
def send_message(outbound_id: int) -> str:
    """Send one outbound message to Meta, at most once."""
    request = send_message.request
    return deliver(outbound_id, request, request.retries or 0, send_message.max_retries)
