"""The limiter's store interface, its constants and answers (the stores are ``redis_store`` and
``file_store``)."""
from __future__ import annotations

import logging
import math
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

KEY_PREFIX = "waflow:limiter:"
MIN_RATE, MAX_RATE = 1, 1000

# Meta counts messages in one-second windows, and the moment Meta receives a send jitters around
# the moment we reserved for it. So we pace 2% below the configured rate: at 80/s the interval
# is that of 78.4/s, 1000 sends span 999·T ≈ 12.74 s, and any window of length L holds at most
# floor(L·78.4) + 1 sends, which stays ≤ 80 while L < 80/78.4 ≈ 1.0204 s. A window of 1 s at
# Meta's end can hold sends whose slots lie up to 1 s + the spread of their delays apart, so the
# limit holds as long as that spread stays under ~20 ms (±10 ms of jitter). The ratio is the
# same at every rate: 1000/s paces at 980/s with the same 20 ms of room. SLOT_TOLERANCE takes
# a fifth of it for our own lateness (a waking sender thread is rarely more than a millisecond
# late); the network and Meta's own timekeeping get the rest.
SAFETY_MARGIN = 0.02

# A task may send up to this long after its slot; later, it takes a fresh slot (wait_for_slot),
# at most FRESH_SLOTS times in a row (a host so loaded that every sleep overruns still sends).
SLOT_TOLERANCE = 0.004
# A late send reserves its fresh slot at most this far ahead, and sleeps until it. Further than the
# consumer's lead (waflow.consumer.LEAD), so that it takes the next free slot at once instead of
# racing the consumers (which reserve 50 ms ahead) and losing again and again while it holds a pool
# slot; not much further, because a pause after Meta's 130429 (which only holds back new
# reservations) passes over the sends that had reserved beyond it.
FRESH_SLOT_LEAD = 0.250
FRESH_SLOTS = 3

# Meta counts inbound messages within its one-second windows: inbound beyond a second's worth
# cannot cost outbound more than that second, so a debit never pushes the next slot further.
DEBIT_HORIZON = 1.0

# Meta's pair limit: about one message every 6 s to one user, bursts allowed but borrowed from
# later (up to 45 in 6 s is tolerated); we allow 5 back to back, then one per 6 s.
PAIR_INTERVAL = 6.0
PAIR_BURST = 5

# The consumer asks about cancellation for every broadcast message; the set is read at most
# this often per process.
CANCELLED_REFRESH = 1.0
# Cancelled broadcast ids are forgotten this long after the cancellation: their messages are
# long gone from the queues by then.
CANCELLED_RETENTION = 7 * 24 * 3600.0

# What the consumer stores in a request's header dict; the task reads it as
# ``self.request.waflow_slot`` (a dict: due, phone_number_id, rate).
SLOT_KEY = "waflow_slot"
# Set in that dict as its send goes (the consumer then lets another request wait for a slot).
SLOT_USED = "used"


class LimiterUnavailable(RuntimeError):
    """The shared store cannot be reached (or read); nothing was reserved."""


@dataclass(frozen=True)
class Reservation:
    """``count`` slots are yours: the first ``delay`` seconds from now, the others ``interval`` apart."""

    delay: float
    count: int = 1
    interval: float = 0.0

    def delays(self) -> list[float]:
        return [self.delay + i * self.interval for i in range(self.count)]


@dataclass(frozen=True)
class Wait:
    """No slot within the lead: ask again in ``seconds``. Nothing was reserved."""

    seconds: float


def _check_rate(rate: float) -> float:
    if not MIN_RATE <= rate <= MAX_RATE:
        raise ValueError(f"send rate must be between {MIN_RATE} and {MAX_RATE} per second, got {rate}")
    return float(rate)


class Store(ABC):
    """Pacing state per business phone number id; every method is atomic across processes."""

    def __init__(self, default_rate: float, margin: float = SAFETY_MARGIN) -> None:
        self.default_rate = float(default_rate)
        self.margin = margin
        self._cancelled: frozenset[str] = frozenset()
        self._cancelled_read_at = -math.inf
        self._cancelled_lock = threading.Lock()

    @abstractmethod
    def reserve(self, phone_number_id: str, lead: float = 0.0, default_rate: float | None = None,
                count: int = 1, span: float = 0.0, not_before: float = 0.0) -> Reservation | Wait:
        """Reserve the next slot if it is at most ``lead`` seconds away; else say how long to wait.

        With ``count`` above 1, also the slots after it that lie within ``lead + span``, up to
        ``count`` in all (one call for a batch of sends). ``default_rate`` stands in for the
        settings' rate when no rate is stored for the number (the consumer passes the task's
        ``rate_limit``). No slot is granted sooner than ``not_before`` seconds from now (at most
        ``lead``): a number that has been idle gives its first slot that far ahead, not at once."""

    @abstractmethod
    def debit(self, phone_number_id: str, n: int = 1) -> None:
        """Count ``n`` inbound messages against the number's budget (the next slot moves on by n·T)."""

    @abstractmethod
    def pause(self, phone_number_id: str, seconds: float) -> None:
        """Give out no slot for the number for ``seconds`` (Meta answered 130429 or 131057)."""

    @abstractmethod
    def set_rate(self, phone_number_id: str, rate: float) -> None:
        """Store the number's rate (1 to 1000 a second); every process uses it from its next reservation."""

    @abstractmethod
    def clear_rate(self, phone_number_id: str) -> None:
        """Forget the stored rate: the number goes back to the default."""

    @abstractmethod
    def get_rate(self, phone_number_id: str) -> float | None:
        """The rate stored for the number, or None when it runs at the default."""

    @abstractmethod
    def pair_reserve(self, phone_number_id: str, recipient: str) -> float:
        """Take a slot for one message to ``recipient`` and return 0, or return the seconds to wait."""

    @abstractmethod
    def pair_penalize(self, phone_number_id: str, recipient: str, seconds: float) -> None:
        """Give out no pair slot to ``recipient`` for ``seconds`` (Meta answered 131056)."""

    @abstractmethod
    def cancel_broadcast(self, broadcast_id: str) -> None:
        """Mark a broadcast cancelled: its waiting messages go to the task without a slot."""

    @abstractmethod
    def _read_cancelled(self) -> frozenset[str]:
        """Every cancelled broadcast id, read from the store."""

    @abstractmethod
    def _read_status(self, phone_number_id: str) -> tuple[float | None, float, float | None]:
        """The stored rate, seconds until the next free slot, and the pause's end (store clock)."""

    def warm_up(self, connections: int) -> None:
        """Open what the first calls of ``connections`` threads at once would open late."""

    def is_cancelled(self, broadcast_id: str) -> bool:
        """Whether the broadcast was cancelled, from a copy of the set at most a second old."""
        return broadcast_id in self.cancelled()

    def cancelled(self) -> frozenset[str]:
        """Every cancelled broadcast id, from a copy at most a second old. The copy is replaced, never
        changed: while the same object comes back, nothing has been cancelled since.

        If the store cannot be read the last copy answers: a cancellation is never undone, so a
        stale "cancelled" is still true, and a stale "not cancelled" only means the message waits
        for a slot, which a down store refuses loudly anyway."""
        with self._cancelled_lock:
            now = time.monotonic()
            if now - self._cancelled_read_at >= CANCELLED_REFRESH:
                self._cancelled_read_at = now
                try:
                    fresh = self._read_cancelled()
                except LimiterUnavailable as exc:
                    logger.debug("limiter: cancelled broadcasts not refreshed: %s", exc)
                else:
                    if fresh != self._cancelled:
                        self._cancelled = fresh
            return self._cancelled

    def _remember_cancelled(self, broadcast_id: str) -> None:
        with self._cancelled_lock:
            self._cancelled = self._cancelled | {broadcast_id}

    def status(self, phone_number_id: str) -> dict[str, Any]:
        """What an operator needs to see about one number's pacing."""
        stored, next_slot_in, paused_until = self._read_status(phone_number_id)
        rate = stored if stored is not None else self.default_rate
        return {
            "phone_number_id": phone_number_id,
            "rate": rate,
            "rate_source": "stored" if stored is not None else "default",
            "effective_rate": rate * (1 - self.margin),
            "next_slot_in": next_slot_in,
            "paused_until": paused_until,
        }
