"""The worker consumer that paces rate-limited tasks on the shared send limiter.

Installed for every worker with ``worker_consumer = "waflow.consumer:PacedConsumer"``. Tasks
without ``rate_limit`` are untouched. For a task with one (the send task's ``rate_limit="80/s"``)
the worker's token bucket is replaced, because stock Celery fails a sender twice over
(``../shared/reference/celery.md`` §1; ``tests/test_consumer.py`` shows both):

1. **Backlog collapse.** Each message added to a waiting bucket adds another timer entry, and
   kombu's Hub fires at most ten due timers per loop turn and then sleeps a whole second: with a
   backlog, a stock worker falls to about one task a second whatever the limit.
2. **Per-worker limit.** Each worker process keeps its own bucket: N workers allow N times the
   limit, where Meta allows one limit per number.

Here ``bucket_for_task`` returns a :class:`TaskPacer`: per business phone number (message header
``phone_number_id``) a :class:`NumberBucket` of waiting requests, paced by ``waflow.limiter``
(the slots of all workers on all hosts come from one store). The task's ``rate_limit`` is the
number's rate unless one is stored for the number (``limiter.Store.set_rate``). Requests wait
unacked in the worker's main process, as stock ones do, never in a pool slot:

- **One pending timer per bucket**, due exactly when the next slot is ``LEAD`` away. The Hub's
  one-second pause after ten due timers is switched off (:func:`_fire_due_timers_without_pause`).
- **Lanes.** Header ``lane``: ``"broadcast"`` waits behind every ``"reply"`` (the default), so a
  reply arriving behind a broadcast backlog goes with the next slot. FIFO within a lane.
- **Cancelled broadcasts** (header ``broadcast_id``) go to the pool at once without a slot.
- **The slot travels with the request.** A request goes to the pool up to ``LEAD`` before its slot,
  with ``waflow_slot`` in its header dict; the task calls ``limiter.wait_for_slot(self.request)``
  right before its POST.
- **Slots a task can reach.** A request goes to the pool only while a pool slot is free for it and
  fewer than ``MAX_WAITING`` of the worker's requests wait there for their slots, and no slot is taken
  sooner than half the lead (``CLAIM_ROOM``): a slot the task cannot reach in time passes unused. The
  pool's other threads carry sends under way, each waiting for Meta's answer.
- **No wait as the loop starts.** Celery's loop begins by reading the prefetched messages and then
  waiting 100 ms more for others, while no timer fires (:func:`_start_without_blocking_the_loop`).
- **Store down**: logged once per outage, re-checked every second; nothing leaves without a slot.
- **Connected**: once the broker connection is up, before mingle's second of waiting for other
  workers, the consumer sends :data:`connected` (``waflow.outbound.warmup`` warms a sender up meanwhile).
- On connection loss Celery calls ``clear_pending()`` (the broker redelivers what waited); ETA
  messages enter the bucket once their ETA passes, as stock.

Every rate-limited task on such a worker is paced per WhatsApp number: give a limit that is not
about WhatsApp sends its own worker without this consumer.
"""
from __future__ import annotations

import functools
import logging
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from celery.utils.dispatch import Signal
from celery.utils.time import rate
from celery.worker import loops
from celery.worker import state as worker_state
from celery.worker.consumer import Consumer
from kombu.asynchronous import Hub

from waflow import limiter

logger = logging.getLogger(__name__)

# Message headers the consumer reads (set by whoever publishes a send).
LANE_HEADER = "lane"
NUMBER_HEADER = "phone_number_id"
BROADCAST_HEADER = "broadcast_id"
REPLY, BROADCAST = "reply", "broadcast"
LANES = (REPLY, BROADCAST)

# A request goes to the pool this long before its slot, so the task's database work (claiming the
# message) overlaps the wait; it then sleeps the rest in wait_for_slot. Long enough for a task to
# reach the pool and claim its message on a busy host (a warm pool starts a task within a few ms,
# but a busy 2-core machine delays threads by tens); short enough that a pool slot idles at most
# 50 ms and a reply waits at most 50 ms behind the slots already reserved (four at 80/s).
LEAD = 0.050
# One call to the store takes the slots within LEAD and those up to this fraction of LEAD after it,
# as many as the bucket holds and up to half of the requests that may wait for slots
# (Pacing.max_batch): at 400/s, 4 slots a call instead of one. The consumers of all senders wake
# when the next slot comes within LEAD, and all but one are told to wait: taking a batch makes such
# rounds rarer.
BATCH_SPAN = 0.5
# No slot is taken sooner than this fraction of LEAD: a task needs that long to reach the pool and
# claim its message, and a slot it cannot reach passes unused (the task then takes a fresh one).
# It matters when the number was idle (the next free slot is "now") or the consumers fell behind;
# otherwise the next slot lies LEAD away.
CLAIM_ROOM = 0.5
# A request is handed to the pool only while a pool slot is free for it: one queued behind busy
# slots would start after its send slot, and the slot would pass unused.
# While every pool slot is taken, or MAX_WAITING requests wait for their slots, the consumer looks
# again this often (without asking the store).
POOL_FULL_RECHECK = 0.005
# At most this many requests of one worker wait in the pool for their slots; its other threads carry
# the sends under way. Meta takes a quarter of a second or more to answer, during which the send
# holds its thread, so a sender needs many threads (docs/benchmarks.md, "Send"); but requests that
# all claim their messages at the same moment on a busy host reach their slots late, so only a few
# may wait at once. Only where the task runs in the consumer's process does its mark reach the
# consumer: a forking pool keeps the bound of its pool alone.
MAX_WAITING = 8
# A store that cannot be reached is asked again this often.
RECHECK_WHEN_DOWN = 1.0
# A bucket looks again at least this often, even during a long pause (Meta's 130429): a
# broadcast cancelled meanwhile must not wait for the pause to end.
MAX_RECHECK = 1.0
# Never schedule a re-check sooner than this: a zero wait would spin the timer.
MIN_RECHECK = 0.001
# The interpreter's thread switch interval in a worker (see PacedConsumer.__init__).
SWITCH_INTERVAL = 0.001

#: Sent by :class:`PacedConsumer` each time it has connected to the broker, before mingle's second
#: of waiting for other workers and the other consumer steps: a worker may start work of its own
#: meanwhile (``waflow.outbound.warmup`` warms up a sender). A receiver that raises is logged, not fatal.
connected = Signal(name="waflow_consumer_connected")


def _fire_due_timers_without_pause(hub: Hub) -> None:
    """Make the Hub poll at once, not after a second, when it stopped firing timers at its cap.

    ``Hub.fire_timers`` fires at most ten due entries per loop turn and then answers "sleep
    ``min_delay``" (1 s) even though more are due: retries sharing a countdown would hold a
    bucket's timer back by whole seconds. With ``min_delay=0`` the loop polls without
    blocking and fires the rest; an empty timer still sleeps its second (``create_loop``).
    """
    hub.fire_timers = functools.partial(type(hub).fire_timers, hub, min_delay=0)


def _start_without_blocking_the_loop(hub: Hub) -> None:
    """Make the event loop's first turn read what the broker has already sent without then waiting.

    As it starts, Celery's loop queues ``loops._quick_drain``, which reads the prefetched messages
    with ``drain_events(timeout=0.1)``: after the last of them it blocks the loop a whole 100 ms
    more. No pacing timer fires meanwhile, so the slots of a sender's first 100 ms would go unused.
    With a zero timeout py-amqp reads
    what is there and stops (it keeps a partly read frame for the next read).
    """
    call_soon = hub.call_soon

    def call_soon_without_waiting(callback: Any, *args: Any) -> Any:
        if callback is loops._quick_drain:
            callback = functools.partial(loops._quick_drain, timeout=0)
        return call_soon(callback, *args)

    hub.call_soon = call_soon_without_waiting


class _Outage:
    """Logs a store outage once when it starts and once when it ends."""

    def __init__(self) -> None:
        self.since: float | None = None

    def failed(self, exc: Exception, now: float) -> None:
        if self.since is None:
            self.since = now
            logger.error("send limiter store unavailable (%s): rate-limited tasks wait, re-checking every %.0f s",
                         exc, RECHECK_WHEN_DOWN)

    def recovered(self, now: float) -> None:
        if self.since is not None:
            logger.warning("send limiter store back after %.1f s", now - self.since)
            self.since = None


@dataclass
class Pacing:
    """What every bucket of one consumer shares."""

    store: limiter.Store
    timer: Any
    # Hands a request to the pool (Consumer._limit_move_to_pool).
    move_to_pool: Callable[[Any], None]
    default_phone_number_id: str
    lead: float = LEAD
    # No slot sooner than lead × claim_room (CLAIM_ROOM).
    claim_room: float = CLAIM_ROOM
    # The most slots one call reserves: half of what may wait (max_waiting, else the pool), so that
    # the next batch goes to the pool while the last one still waits.
    max_batch: int = 1
    # The pool's size, and how many requests it holds now (handed over, not finished): a request
    # for which no pool slot is free would start after its slot has passed.
    capacity: int | None = None
    in_pool: Callable[[], int] = lambda: 0
    # The most requests handed over that have not yet used their slots (MAX_WAITING); None: the
    # pool's capacity alone. Whether the pool still holds a request (Celery's reserved requests).
    max_waiting: int | None = None
    holds: Callable[[Any], bool] = lambda request: True
    # The requests handed over with a slot, and their slots: limiter.wait_for_slot marks a slot used
    # as its send goes (on the threads pool the task sees the very dict handed over; in a child
    # process it does not, and the request counts until it is finished).
    handed: list[tuple[Any, dict[str, Any]]] = field(default_factory=list)
    clock: Callable[[], float] = time.time
    # The Hub runs timers and message handlers on one thread; timer2 (transports without an event
    # loop) runs timers on its own.
    lock: threading.RLock = field(default_factory=threading.RLock)
    outage: _Outage = field(default_factory=_Outage)

    def waiting(self) -> int:
        """How many requests handed to the pool have not yet used their slots."""
        self.handed[:] = [(request, slot) for request, slot in self.handed
                          if not slot.get(limiter.SLOT_USED) and self.holds(request)]
        return len(self.handed)

    def room(self) -> int:
        """How many more requests may go to the pool now."""
        free = self.max_batch if self.capacity is None else self.capacity - self.in_pool()
        if self.max_waiting is not None:
            free = min(free, self.max_waiting - self.waiting())
        return free


class NumberBucket:
    """Requests of one task for one phone number, waiting for slots, in two FIFO lanes."""

    def __init__(self, phone_number_id: str) -> None:
        self.phone_number_id = phone_number_id
        self.lanes: dict[str, deque] = {lane: deque() for lane in LANES}
        self.timer_entry: Any = None
        # The set of cancelled broadcasts the broadcast lane was last checked against.
        self.checked_against: frozenset[str] | None = None

    def pending(self) -> int:
        return sum(len(lane) for lane in self.lanes.values())

    def popleft(self) -> Any:
        """The next request: the reply lane's head before any broadcast."""
        for lane in LANES:
            if self.lanes[lane]:
                return self.lanes[lane].popleft()
        raise IndexError("bucket is empty")


def _header(request: Any, name: str) -> Any:
    return request.request_dict.get(name)


class TaskPacer:
    """What Celery holds as one task's token bucket: the task's buckets, one per phone number.

    Always true (Celery tests ``if bucket:``), unlike a container.
    """

    def __init__(self, pacing: Pacing, task_name: str, default_rate: float) -> None:
        self.pacing = pacing
        self.task_name = task_name
        # The task's rate_limit, per second: the number's rate unless one is stored for it.
        self.default_rate = default_rate
        self.buckets: dict[str, NumberBucket] = {}

    def __bool__(self) -> bool:
        return True

    def __repr__(self) -> str:
        return f"<TaskPacer {self.task_name} {self.default_rate:g}/s, {self.pending()} waiting>"

    def pending(self) -> int:
        return sum(bucket.pending() for bucket in self.buckets.values())

    def add(self, request: Any) -> None:
        """Queue a request in its number's bucket and lane; release what the limiter allows now."""
        number = str(_header(request, NUMBER_HEADER) or self.pacing.default_phone_number_id)
        lane = BROADCAST if _header(request, LANE_HEADER) == BROADCAST else REPLY
        with self.pacing.lock:
            if self._cancelled(request):
                self._release(request, self._unpaced(number))
                return
            bucket = self.buckets.get(number)
            if bucket is None:
                bucket = self.buckets[number] = NumberBucket(number)
            bucket.lanes[lane].append(request)
            # A pending timer already re-checks at the next slot, and then the reply lane goes first.
            if bucket.timer_entry is None:
                self._drain(bucket)

    def clear_pending(self) -> None:
        """Forget every waiting request (the connection is gone; the broker redelivers them)."""
        with self.pacing.lock:
            for bucket in self.buckets.values():
                self._cancel_timer(bucket)
                for lane in bucket.lanes.values():
                    lane.clear()

    def release_all(self) -> None:
        """Hand every waiting request to the pool without a slot (the task's rate limit was removed)."""
        with self.pacing.lock:
            for bucket in self.buckets.values():
                self._cancel_timer(bucket)
                while bucket.pending():
                    self._release(bucket.popleft(), None)

    def _on_timer(self, bucket: NumberBucket) -> None:
        with self.pacing.lock:
            bucket.timer_entry = None
            self._drain(bucket)

    def _drain(self, bucket: NumberBucket) -> None:
        """Release requests while the limiter grants slots within the lead; then set one timer."""
        self._release_cancelled(bucket)
        pacing = self.pacing
        while bucket.pending():
            free = pacing.room()
            if free <= 0:
                self._schedule(bucket, POOL_FULL_RECHECK)
                return
            asked = min(bucket.pending(), pacing.max_batch, free)
            try:
                outcome = pacing.store.reserve(
                    bucket.phone_number_id, pacing.lead, self.default_rate, count=asked,
                    span=pacing.lead * BATCH_SPAN, not_before=pacing.lead * pacing.claim_room)
            except Exception as exc:  # noqa: BLE001 - a bucket must never be left without its timer
                pacing.outage.failed(exc, pacing.clock())
                self._schedule(bucket, RECHECK_WHEN_DOWN)
                return
            pacing.outage.recovered(pacing.clock())
            if isinstance(outcome, limiter.Wait):
                self._schedule(bucket, outcome.seconds)
                return
            now = pacing.clock()
            for delay in outcome.delays():
                request, slot = bucket.popleft(), {
                    "due": now + delay,
                    "phone_number_id": bucket.phone_number_id,
                    "rate": self.default_rate,
                }
                if pacing.max_waiting is not None:
                    pacing.handed.append((request, slot))
                self._release(request, slot)
            if outcome.count < asked and outcome.interval > 0:
                # The window ended the batch: the next slot comes within the lead this much later
                # (unless another worker takes it first). Asking now would only be told to wait.
                self._schedule(bucket, outcome.delay + outcome.count * outcome.interval - pacing.lead)
                return

    def _cancelled(self, request: Any) -> bool:
        broadcast_id = _header(request, BROADCAST_HEADER)
        return bool(broadcast_id) and self.pacing.store.is_cancelled(str(broadcast_id))

    def _release_cancelled(self, bucket: NumberBucket) -> None:
        """Hand over the broadcast lane's requests whose broadcast was cancelled since they came.

        Each request was checked as it was added (``add``) against the set then current, so while
        the store hands back the very set the lane was last checked against, nothing in the lane
        can have been cancelled since: the lane (up to the worker's prefetch) is scanned only when
        the set changes, not on every drain."""
        cancelled = self.pacing.store.cancelled()
        if cancelled is bucket.checked_against:
            return
        bucket.checked_against = cancelled
        lane = bucket.lanes[BROADCAST]
        if not cancelled or not lane:
            return
        kept: deque = deque()
        for request in lane:
            broadcast_id = _header(request, BROADCAST_HEADER)
            if broadcast_id and str(broadcast_id) in cancelled:
                self._release(request, self._unpaced(bucket.phone_number_id))
            else:
                kept.append(request)
        bucket.lanes[BROADCAST] = kept

    def _unpaced(self, number: str) -> dict[str, Any]:
        """The slot of a request let through without one (its broadcast is cancelled): the task is
        expected to skip it, and if it sends after all (the message was not cancelled),
        ``limiter.wait_for_slot`` takes a real slot first. Nothing leaves unpaced."""
        return {"due": None, "phone_number_id": number, "rate": self.default_rate}

    def _release(self, request: Any, slot: dict[str, Any] | None) -> None:
        # Always set: a redelivered or retried message may carry a stale slot in its headers.
        request.request_dict[limiter.SLOT_KEY] = slot
        self.pacing.move_to_pool(request)

    def _schedule(self, bucket: NumberBucket, seconds: float) -> None:
        bucket.timer_entry = self.pacing.timer.call_after(min(max(seconds, MIN_RECHECK), MAX_RECHECK),
                                                            self._on_timer, (bucket,))

    def _cancel_timer(self, bucket: NumberBucket) -> None:
        if bucket.timer_entry is not None:
            self.pacing.timer.cancel(bucket.timer_entry)
            bucket.timer_entry = None


class PacedConsumer(Consumer):
    """Celery's consumer, with rate-limited tasks paced per phone number on the shared limiter."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        from waflow.config import settings

        # Consumer.__init__ already asks bucket_for_task for every task: the pacers share this,
        # and get the timer once Consumer.__init__ has set it.
        self.pacing = Pacing(store=limiter.default_store(), timer=None, move_to_pool=self._limit_move_to_pool,
                             default_phone_number_id=settings.phone_number_id)
        super().__init__(*args, **kwargs)
        self.pacing.timer = self.timer
        concurrency = getattr(self.pool, "num_processes", None) or getattr(self.controller, "concurrency", 1)
        self.pacing.capacity = max(1, int(concurrency or 1))
        # A task in a child process marks a copy of its slot: there the pool's size alone bounds it.
        forks = type(self.pool).__module__.startswith("celery.concurrency.prefork")
        self.pacing.max_waiting = None if forks else min(self.pacing.capacity, MAX_WAITING)
        self.pacing.max_batch = max(1, (self.pacing.max_waiting or self.pacing.capacity) // 2)
        self.pacing.in_pool = functools.partial(len, worker_state.reserved_requests)
        self.pacing.holds = worker_state.reserved_requests.__contains__
        if self.hub is not None:
            _fire_due_timers_without_pause(self.hub)
            _start_without_blocking_the_loop(self.hub)
        # A send due at its slot waits for the GIL when it wakes: up to the switch interval (5 ms by
        # default) while other threads of the pool build SQL. Meta counts in 1-s windows and the
        # margin allows about 20 ms of spread in all, so the threads pool takes turns each 1 ms.
        sys.setswitchinterval(SWITCH_INTERVAL)

    def connect(self) -> Any:
        connection = super().connect()
        connected.send(sender=self)
        return connection

    def bucket_for_task(self, type: Any) -> TaskPacer | None:  # noqa: A002 - Celery's name
        limit = rate(getattr(type, "rate_limit", None))
        return TaskPacer(self.pacing, type.name, limit) if limit else None

    def reset_rate_limits(self) -> None:
        """Apply the tasks' current rate limits (Celery's remote ``rate_limit`` command calls this).

        A pacer survives with its waiting requests and takes the new rate; a task whose limit was
        removed releases what waited.
        """
        for name, task in self.app.tasks.items():
            current = self.task_buckets.get(name)
            limit = rate(getattr(task, "rate_limit", None))
            if isinstance(current, TaskPacer) and limit:
                current.default_rate = limit
                continue
            if isinstance(current, TaskPacer):
                current.release_all()
            self.task_buckets[name] = self.bucket_for_task(task)

    def _limit_task(self, request: Any, bucket: Any, tokens: int) -> Any:
        if not isinstance(bucket, TaskPacer):
            return super()._limit_task(request, bucket, tokens)
        bucket.add(request)

    def _limit_post_eta(self, request: Any, bucket: Any, tokens: int) -> Any:
        if not isinstance(bucket, TaskPacer):
            return super()._limit_post_eta(request, bucket, tokens)
        # As stock: the ETA raised the prefetch count while the request waited in the timer.
        self.qos.decrement_eventually()
        bucket.add(request)
