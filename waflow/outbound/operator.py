"""What a person does to a send: settle one in doubt, and reopen a dead-lettered one before its replay.

``resolve`` backs ``flask --app wsgi outbox resolve``; ``reopen`` is the send task's replay hook
(``stage_task(prepare_replay=...)``), run by ``flask --app wsgi dlq replay``.
"""
from __future__ import annotations

import logging
from typing import Any

import sqlalchemy as sa

from waflow.dlq.tooling import NotReplayable
from waflow.outbound.commands import LANES, Queued, headers
from waflow.outbound.outbox import ROW, broadcast_token, set_columns
from waflow.outbound.settle import accept

logger = logging.getLogger(__name__)


class NotInDoubt(ValueError):
    """Only a message in doubt is settled by hand; the message says where this one stands."""


def resolve(conn: sa.Connection, outbound_id: int, *, wamid: str | None = None, failed: bool = False,
            resend: bool = False, by: str) -> list[Queued]:
    """A person settles a send in doubt: Meta took it (its wamid), it failed, or send it again.
    Returns what to queue after the commit."""
    row = conn.execute(ROW, {"oid": outbound_id}).first()
    if row is not None and row.status == "queued" and resend:
        # Queued with no task to send it (its publish was lost): queue it again; a duplicate is harmless.
        return [Queued(row.id, row.lane, row.phone_number_id, broadcast_token(conn, row.broadcast_id))]
    if row is None or row.status != "in_doubt":
        raise NotInDoubt(f"outbound {outbound_id} is {row.status if row else 'unknown'}, not in doubt")
    logger.info("resolve: outbound %s settled by %s (%s)", outbound_id, by,
                "accepted" if wamid else "failed" if failed else "resend")
    if wamid:
        accept(conn, row, wamid, None)
        return []
    if failed:
        set_columns(conn, row.id, status="failed", error_title=f"marked failed by {by} after a send in doubt")
        return []
    set_columns(conn, row.id, status="queued", claimed_by=None, claimed_at=None)
    return [Queued(row.id, row.lane, row.phone_number_id, broadcast_token(conn, row.broadcast_id))]



def reopen(conn: sa.Connection, args: list[Any], _kwargs: dict[str, Any]) -> dict[str, Any]:
    """Before a dead-lettered send is replayed: only a message that failed is queued again (one Meta
    accepted meanwhile, or that a replay already sent, is refused); one left mid-call is put in doubt
    instead of replayed ("skip"). Returns how to publish it: its lane's queue, with the headers the
    paced consumer reads."""
    row = conn.execute(ROW, {"oid": int(args[0])}).first()
    if row is None:
        raise NotReplayable(f"outbound {args[0]} does not exist")
    if row.status == "sending":
        set_columns(conn, row.id, status="in_doubt", error_title="dead-lettered during its call to Meta")
        return {"skip": f"outbound {row.id} was mid-call when it failed: now in doubt, settle it with "
                        "`flask --app wsgi outbox resolve`"}
    if row.status != "failed":
        raise NotReplayable(f"outbound {row.id} is {row.status}: nothing to send again")
    set_columns(conn, row.id, status="queued", parked=False)
    queued = Queued(row.id, row.lane, row.phone_number_id, broadcast_token(conn, row.broadcast_id))
    return {"queue": LANES[queued.lane], "headers": headers(queued)}
