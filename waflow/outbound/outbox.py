"""The outbox table (``outbound_messages``): the statements claiming, settling and the operator's
actions share, and the waits Meta's answers impose.

The send path's statements are built once on the Core table: at hundreds of sends a second,
building ORM statements per call costs more CPU than running them.
"""
from __future__ import annotations

import functools
from datetime import datetime, timedelta, timezone
from typing import Any

import sqlalchemy as sa

from waflow import whatsapp
from waflow.models import Broadcast, DraftApproval, OutboundMessage
from waflow.outbound.commands import Queued
from waflow.tasks import MAX_COUNTDOWN

OUTBOUND = OutboundMessage.__table__
# Status webhooks echo this with our id, so a send in doubt can be settled from them.
CALLBACK_PREFIX = "waflow:"
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

C = OUTBOUND.c
NEXT = (sa.select(C.id, C.lane, C.parked, Broadcast.token)
        .outerjoin(Broadcast, Broadcast.id == C.broadcast_id)
        .where(C.phone_number_id == sa.bindparam("number"), C.recipient == sa.bindparam("to"),
               C.id > sa.bindparam("after"), C.status == "queued")
        .order_by(C.id).limit(1))
# The message, its broadcast's state and, for a lawyer's approved reply, the digest of the approved words.
ROW = (sa.select(OUTBOUND, Broadcast.status.label("broadcast_status"), DraftApproval.sha256.label("approved_sha256"))
       .outerjoin(Broadcast, Broadcast.id == C.broadcast_id)
       .outerjoin(DraftApproval, DraftApproval.id == C.approval_id)
       .where(C.id == sa.bindparam("oid")).with_for_update(of=OUTBOUND))
_INCREMENT = {"attempts": C.attempts + 1, "pair_attempts": C.pair_attempts + 1}


@functools.cache
def _update(columns: frozenset[str], claimed: bool = False) -> Any:
    """UPDATE outbound_messages SET <columns> (and updated_at) WHERE id = :oid, and with ``claimed``
    only while it is still ``sending`` by the task :task."""
    values = {c: _INCREMENT[c] if c in _INCREMENT else sa.bindparam(f"v_{c}") for c in columns | {"updated_at"}}
    where = [C.id == sa.bindparam("oid")]
    if claimed:
        where += [C.status == "sending", C.claimed_by.is_not_distinct_from(sa.bindparam("task"))]
    return sa.update(OUTBOUND).where(*where).values(values)


ANY = object()


def set_columns(conn: sa.Connection, outbound_id: int, *increments: str, only_if_claimed_by: Any = ANY,
                **values: Any) -> bool:
    """Set columns of one message; ``increments`` names counters to add one to. With
    ``only_if_claimed_by`` (a task id, or None), only while the message is still ``sending`` by that
    task. Returns whether it was set."""
    values["updated_at"] = datetime.now(timezone.utc)
    guarded = only_if_claimed_by is not ANY
    params = {"oid": outbound_id, **{f"v_{k}": v for k, v in values.items()}}
    if guarded:
        params["task"] = only_if_claimed_by
    return conn.execute(_update(frozenset(values) | frozenset(increments), guarded), params).rowcount == 1


def following(conn: sa.Connection, row: Any) -> list[Queued]:
    """The next message to the same recipient, if its task parked waiting for this one: send it on.

    ``parked`` stays set until that message is claimed, so whoever sees this message settled
    again (a redelivered task, a repeated status webhook) sends it on again: a wake-up lost between
    a commit and its publish is made good, and a second one is harmless."""
    nxt = conn.execute(NEXT, {"number": row.phone_number_id, "to": row.recipient, "after": row.id}).first()
    if nxt is None or not nxt.parked:
        return []
    return [Queued(nxt.id, nxt.lane, row.phone_number_id, nxt.token)]


def broadcast_token(conn: sa.Connection, broadcast_id: int | None) -> str | None:
    """The broadcast's token (the paced consumer's key for a cancelled broadcast), or None."""
    if broadcast_id is None:
        return None
    return conn.execute(sa.select(Broadcast.token).where(Broadcast.id == broadcast_id)).scalar()
