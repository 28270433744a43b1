"""The send limiter: pacing state shared by every worker process and host, per business phone number.

Meta caps each business number at 80 messages a second by default (up to 1000 after automatic
upgrades), counting inbound and outbound alike, and answers 130429 above it
(``../shared/reference/whatsapp-cloud-api.md`` §7.1). Celery's own ``rate_limit`` is per worker
process and collapses under a backlog (``../shared/reference/celery.md`` §1), so the limit lives
here, in one store every process asks:

- **Redis** (``settings.redis_url``): atomic Lua scripts; Redis ``TIME`` is the one clock of every
  host, and every answer is a *delay from now*, so no two hosts' clocks are ever compared.
- **A file** under ``settings.var_dir`` for the embedded, no-server default only: ``fcntl.flock``
  serializes the processes of one host, ``time.time()`` is their clock.

There is never a per-process fall-back: a configured store that is down raises
:class:`LimiterUnavailable`, and callers wait.

Pacing is GCRA (the generic cell rate algorithm): each number keeps a theoretical arrival time
TAT, and every send moves it on by the emission interval ``T = 1 / effective rate``. There is no
burst capacity: after idling or a restart the first send goes at once and the rest are spaced T
apart; a process that dies holding a reservation leaves a gap, never a burst.

``waflow.consumer`` reserves the slots; the task calls :func:`wait_for_slot` right before its POST.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

# The limiter's names, in one place for its callers.
from waflow.limiter.base import (CANCELLED_REFRESH, CANCELLED_RETENTION, DEBIT_HORIZON, FRESH_SLOT_LEAD,  # noqa: F401
                                 FRESH_SLOTS, KEY_PREFIX, MAX_RATE, MIN_RATE, PAIR_BURST, PAIR_INTERVAL,
                                 SAFETY_MARGIN, SLOT_KEY, SLOT_TOLERANCE, SLOT_USED, LimiterUnavailable,
                                 Reservation, Store, Wait)
from waflow.limiter.file_store import FileStore
from waflow.limiter.redis_store import CANCELLED_KEY, RedisStore  # noqa: F401

if TYPE_CHECKING:
    from waflow.config import Settings

logger = logging.getLogger(__name__)


def store_for(settings: "Settings") -> Store:
    """Redis when ``settings.redis_url`` is set, else the file store under ``settings.var_dir``."""
    if settings.redis_url:
        return RedisStore.from_url(settings.redis_url, settings.send_rate)
    return FileStore(settings.var_dir / "limiter", settings.send_rate)


_default_store: Store | None = None
_default_store_lock = threading.Lock()


def default_store() -> Store:
    """This process's store for ``waflow.config.settings``, made on first use."""
    global _default_store
    with _default_store_lock:
        if _default_store is None:
            from waflow.config import settings

            _default_store = store_for(settings)
        return _default_store


def wait_for_slot(request: Any, *, store: Store | None = None, clock: Callable[[], float] = time.time,
                  sleep: Callable[[float], None] = time.sleep) -> float:
    """Sleep until the send slot the consumer reserved for this task; return the seconds slept.

    Call it right before the HTTP POST, with ``self.request``. A request without a slot (a task
    run directly, a cancelled broadcast) returns at once. The slot is used up: a second call, or a
    retry of the task, does not see it again; as the send goes, the slot's dict is marked
    ``SLOT_USED`` (the consumer counts the requests still waiting for their slots).

    A send more than ``SLOT_TOLERANCE`` past its slot, because the task reached the pool late
    (every pool slot busy) or its sleep overran (a loaded host), could bunch with the sends of
    later slots inside one of Meta's windows: it takes a fresh slot instead, at most
    ``FRESH_SLOTS`` times, and then goes anyway.
    """
    slot = getattr(request, SLOT_KEY, None)
    if not slot:
        return 0.0
    setattr(request, SLOT_KEY, None)
    if isinstance(getattr(request, "headers", None), dict):
        request.headers.pop(SLOT_KEY, None)
    # No due time: the consumer let it through without a slot (a cancelled broadcast), yet it sends.
    due, waited, fresh = (slot["due"] if slot.get("due") is not None else -math.inf), 0.0, 0
    slept = False
    while True:
        now = clock()
        if now < due:
            sleep(due - now)
            waited += due - now
            slept = True
            continue
        if now - due <= SLOT_TOLERANCE or fresh == FRESH_SLOTS:
            slot[SLOT_USED] = True
            return waited
        logger.info("limiter: task %s is %s its slot (%s); it takes a fresh one", getattr(request, "id", "?"),
                    "without" if due == -math.inf else f"{(now - due) * 1000:.0f} ms past",
                    "its sleep overran" if slept else "it came late")
        slept = False
        fresh += 1
        outcome = (store or default_store()).reserve(slot["phone_number_id"], lead=FRESH_SLOT_LEAD,
                                                     default_rate=slot.get("rate"))
        while isinstance(outcome, Wait):  # the number is busy or paused: ask again when a slot is near
            sleep(outcome.seconds)
            waited += outcome.seconds
            outcome = (store or default_store()).reserve(slot["phone_number_id"], lead=FRESH_SLOT_LEAD,
                                                         default_rate=slot.get("rate"))
        due = clock() + outcome.delay
