"""The sweep: draft-pipeline work whose publish was lost, found in the database and queued again.

Every hand-over in the pipeline is published after its commit, so a crash in between leaves state
with no message on its way. The sweep finds each kind:

- a request still ``waiting`` well past its due time (its drafting task never came);
- a request ``drafting`` past the claim's lease (its drafter died and no redelivery came back);
- a draft ``ready`` or ``failed`` that was never announced (``wa.ai.draft.created`` lost);
- an approval never handed to the sender (``wa.ai.draft.approved`` lost).

It runs on a timer in every drafter worker (``Timer``). Several at once are harmless: each consumer
decides with a conditional update, and the same id published twice is done once.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import sqlalchemy as sa

from waflow.db import transaction
from waflow.drafts import publish
from waflow.models import Draft, DraftApproval, DraftRequest

logger = logging.getLogger(__name__)

# How often each drafter worker sweeps. A lost publish is made good within GRACE + INTERVAL.
INTERVAL = 10.0
# How long work may sit before it counts as lost: well over a publish's round trip after its commit.
GRACE = timedelta(seconds=10)
# The same item is published again by one sweeper no more often than this, so a stage that is down
# does not find its queue filling with copies.
REPUBLISH_AFTER = 120.0
LIMIT = 500


@dataclass
class Lost:
    requests: list[int] = field(default_factory=list)
    announce: list[int] = field(default_factory=list)
    approvals: list[int] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.requests or self.announce or self.approvals)


def find_lost(conn: sa.Connection, *, lease: timedelta, now: datetime | None = None) -> Lost:
    """Everything the pipeline left without a message on its way (see the module docstring)."""
    now = now or datetime.now(timezone.utc)
    waiting = sa.and_(DraftRequest.status == "waiting", DraftRequest.due_at < now - GRACE)
    stuck = sa.and_(DraftRequest.status == "drafting", DraftRequest.claimed_at < now - lease)
    requests = conn.execute(sa.select(DraftRequest.id).where(sa.or_(waiting, stuck))
                            .order_by(DraftRequest.id).limit(LIMIT)).scalars()
    unannounced = conn.execute(sa.select(Draft.id).where(Draft.status.in_(("ready", "failed")),
                                                         Draft.announced_at.is_(None),
                                                         Draft.finished_at < now - GRACE)
                               .order_by(Draft.id).limit(LIMIT)).scalars()
    unhanded = conn.execute(sa.select(DraftApproval.id).where(DraftApproval.handed_at.is_(None),
                                                              DraftApproval.created_at < now - GRACE)
                            .order_by(DraftApproval.id).limit(LIMIT)).scalars()
    return Lost(list(requests), list(unannounced), list(unhanded))


class Timer:
    """Sweeps every ``interval`` seconds in a daemon thread until stopped."""

    def __init__(self, lease: timedelta, interval: float = INTERVAL, database_url: str | None = None) -> None:
        self.lease, self.interval, self.database_url = lease, interval, database_url
        self._stop = threading.Event()
        self._published: dict[tuple[str, int], float] = {}
        self._thread = threading.Thread(target=self._run, name="draft-sweep", daemon=True)

    def start(self) -> "Timer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sweep()
            except Exception as exc:  # noqa: BLE001 - a sweep that failed (database or broker away) tries again
                logger.warning("draft sweep failed (%s); next in %.0f s", type(exc).__name__, self.interval)

    def sweep(self, now: datetime | None = None) -> Lost:
        """One sweep: find what was lost and publish it again (each at most once per REPUBLISH_AFTER)."""
        with transaction(self.database_url) as conn:
            lost = find_lost(conn, lease=self.lease, now=now)
        now = time.monotonic()
        self._published = {k: t for k, t in self._published.items() if now - t < REPUBLISH_AFTER}
        for kind, ids, send in (("request", lost.requests, publish.draft_at),
                                ("announce", lost.announce, publish.created),
                                ("approval", lost.approvals, publish.approved)):
            for item in ids:
                if (kind, item) not in self._published:
                    send(item)
                    self._published[(kind, item)] = now
        if lost:
            logger.warning("draft sweep: queued again %d request(s), %d announcement(s), %d approval(s) whose "
                           "publish was lost", len(lost.requests), len(lost.announce), len(lost.approvals))
        return lost
