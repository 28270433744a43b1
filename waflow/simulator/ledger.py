"""What the simulator remembers about sends: limits, windows, the record of accepted sends, counters.

One lock guards it all. A send is admitted in one critical section that reads the clock, checks
the 24-hour window, the throughput window and the pair bucket, and records the send with that
same time, so the record and the limiter can never disagree and records stay in time order.
The section is a few dictionary and deque operations: cheap enough for 1000 sends a second.

Throughput window: a send at time ``now`` is refused (130429) when the number already has
``rate`` accepted sends in ``(now - 1, now]``. ``stats()`` computes the busiest such window over
the recorded times with the same definition, so under a constant rate it never exceeds ``rate``.
"""
from __future__ import annotations

import json
import threading
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any, Callable

from waflow.simulator.errors import MetaError
from waflow.simulator.options import SimulatorOptions

WINDOW_SECONDS = 24 * 3600
# Pair buckets of recipients not written to for a while are forgotten past this many, to bound memory.
MAX_PAIR_BUCKETS = 100_000


@dataclass(slots=True)
class Send:
    """One accepted send; ``body`` is the request's raw bytes (compact, decoded only when read back)."""

    seq: int
    wamid: str
    phone_number_id: str
    to: str | None
    recipient: str | None
    type: str
    body: bytes
    biz_opaque_callback_data: str | None
    context: dict[str, Any] | None
    accepted_at: float

    def as_json(self, brief: bool = False) -> dict[str, Any]:
        doc = {"seq": self.seq, "wamid": self.wamid, "phone_number_id": self.phone_number_id, "to": self.to,
               "recipient": self.recipient, "type": self.type, "accepted_at": self.accepted_at,
               "biz_opaque_callback_data": self.biz_opaque_callback_data, "context": self.context}
        if not brief:
            doc["body"] = json.loads(self.body)
        return doc


class Ledger:
    """Throughput windows, pair buckets, 24-hour windows and the record of sends, under one lock."""

    def __init__(self, options: SimulatorOptions) -> None:
        self.options = options  # the runtime copy: /_sim/config changes it under this lock
        self.clock: Callable[[], float] = options.clock
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.rates: dict[str, int] = {}  # per-number overrides of options.rate
            self._recent: dict[str, deque[float]] = {}
            self._buckets: dict[tuple[str, str], tuple[float, float]] = {}  # (tokens, at)
            self._last_inbound: dict[str, float] = {}
            self._forced_open: set[str] = set()
            self.sends: deque[Send] = deque(maxlen=self.options.max_records)
            self.reads: deque[dict[str, Any]] = deque(maxlen=self.options.max_records)
            self.accepted = 0
            self.refused: Counter[int] = Counter()
            self._seq = 0

    # -- the hot path -------------------------------------------------------------------------

    def admit(self, phone_number_id: str, key: str, kind: str, make: Callable[[int, float], Send]) -> Send:
        """Admit one shape-checked send or raise 131047 / 130429 / 131056; record it if admitted."""
        with self.lock:
            now = self.clock()
            if kind != "template" and not self._window_open(key, now):
                raise MetaError(131047, "Message failed to send because more than 24 hours have passed since "
                                        "the customer last replied to this number.")
            recent = self._recent.setdefault(phone_number_id, deque())
            cutoff = now - 1.0
            while recent and recent[0] <= cutoff:
                recent.popleft()
            rate = self.rates.get(phone_number_id, self.options.rate)
            if len(recent) >= rate:
                raise MetaError(130429, f"Cloud API message throughput ({rate}/s) has been reached.")
            tokens = self._pair_tokens((phone_number_id, key), now)
            if tokens is not None and tokens < 1.0:
                raise MetaError(131056, "Message failed to send because there were too many messages sent "
                                        "from this phone number to the same phone number in a short period of time.")
            recent.append(now)
            if tokens is not None:
                self._buckets[(phone_number_id, key)] = (tokens - 1.0, now)
            self._seq += 1
            send = make(self._seq, now)
            self.sends.append(send)
            self.accepted += 1
            return send

    def _window_open(self, key: str, now: float) -> bool:
        if self.options.open_windows or key in self._forced_open:
            return True
        last = self._last_inbound.get(key)
        return last is not None and now - last < WINDOW_SECONDS

    def _pair_tokens(self, pair: tuple[str, str], now: float) -> float | None:
        """Tokens in the pair's bucket at ``now`` (None when the pair limit is off)."""
        if not self.options.pair_limit:
            return None
        burst, interval = float(self.options.pair_burst), self.options.pair_interval
        if len(self._buckets) > MAX_PAIR_BUCKETS:
            # A bucket that has refilled completely holds nothing worth remembering.
            self._buckets = {p: (t, at) for p, (t, at) in self._buckets.items() if t + (now - at) / interval < burst}
        tokens, at = self._buckets.get(pair, (burst, now))
        return min(burst, tokens + (now - at) / interval)

    def refuse(self, code: int) -> None:
        with self.lock:
            self.refused[code] += 1

    # -- windows and read receipts --------------------------------------------------------------

    def customer_wrote(self, key: str) -> None:
        """An inbound message from ``key``: its 24-hour window opens now."""
        with self.lock:
            self._last_inbound[key] = self.clock()

    def force_window(self, key: str, open_: bool) -> None:
        with self.lock:
            if open_:
                self._forced_open.add(key)
            else:
                self._forced_open.discard(key)
                self._last_inbound.pop(key, None)

    def record_read(self, phone_number_id: str, message_id: str, typing: bool) -> None:
        with self.lock:
            self.reads.append({"phone_number_id": phone_number_id, "message_id": message_id,
                               "typing_indicator": typing, "at": self.clock()})

    # -- reading back -----------------------------------------------------------------------------

    def select(self, *, after: int = 0, since: float | None = None, key: str | None = None,
               phone_number_id: str | None = None, limit: int = 1000) -> list[Send]:
        """Recorded sends in acceptance order, filtered; at most ``limit``."""
        with self.lock:
            sends = list(self.sends)
        found = []
        for send in sends:
            if send.seq <= after or (since is not None and send.accepted_at <= since):
                continue
            if key is not None and key not in (send.recipient, _digits(send.to)):
                continue
            if phone_number_id is not None and send.phone_number_id != phone_number_id:
                continue
            found.append(send)
            if len(found) >= limit:
                break
        return found

    def stats(self, brief: bool = False) -> dict[str, Any]:
        """Counts; unless ``brief``, also the busiest 1-s window per number, which walks every record
        (a poller should ask for ``brief``: the walk holds the GIL that admitting sends needs)."""
        with self.lock:
            sends = list(self.sends) if not brief else []
            counts = {"accepted": self.accepted, "recorded": len(self.sends), "reads": len(self.reads),
                      "refused": {str(code): n for code, n in sorted(self.refused.items())},
                      "refused_total": sum(self.refused.values())}
        if brief:
            return counts
        times: dict[str, list[float]] = {}
        for send in sends:
            times.setdefault(send.phone_number_id, []).append(send.accepted_at)
        busiest = {number: busiest_second(ts) for number, ts in times.items()}
        counts["max_in_any_second"] = {number: b[0] for number, b in busiest.items()}
        counts["busiest_second"] = {number: {"first": b[1], "last": b[2]} for number, b in busiest.items()}
        return counts


def busiest_second(times: list[float]) -> tuple[int, float, float]:
    """The most times in any window ``(t - 1, t]``, with that window's first and last time."""
    ordered = sorted(times)
    best, first, last, start = 0, 0.0, 0.0, 0
    for end, t in enumerate(ordered):
        while ordered[start] <= t - 1.0:
            start += 1
        if end - start + 1 > best:
            best, first, last = end - start + 1, ordered[start], t
    return best, first, last


def _digits(value: str | None) -> str | None:
    return "".join(c for c in value if c.isdigit()) if value is not None else None
