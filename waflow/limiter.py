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

import fcntl
import json
import logging
import math
import os
import threading
import time
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

if TYPE_CHECKING:
    import redis

    from waflow.config import Settings

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
# a fifth of it for our own lateness; the network and Meta's own timekeeping get the rest (against
# the simulator on a loaded 2-core machine, a 10-ms share left a single 130429 in about one run of
# three; a waking sender thread is rarely more than a millisecond late).
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
        """Whether the broadcast was cancelled, from a copy of the set at most a second old.

        If the store cannot be read the last copy answers: a cancellation is never undone, so a
        stale "cancelled" is still true, and a stale "not cancelled" only means the message waits
        for a slot, which a down store refuses loudly anyway."""
        with self._cancelled_lock:
            now = time.monotonic()
            if now - self._cancelled_read_at >= CANCELLED_REFRESH:
                self._cancelled_read_at = now
                try:
                    self._cancelled = self._read_cancelled()
                except LimiterUnavailable as exc:
                    logger.debug("limiter: cancelled broadcasts not refreshed: %s", exc)
            return broadcast_id in self._cancelled

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


# --- Redis ---------------------------------------------------------------------------------
# Times inside the scripts are microseconds since the epoch (exact in a double until 2255).
# Replies are integers (Redis truncates Lua numbers), so waits round up and delays down.
# The last ARGV is a fixed "now" for tests, or "" to use Redis TIME.

_LUA_NOW = """
local function now_us(arg)
  if arg ~= '' then return tonumber(arg) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local function interval_us(rate_key, default_rate, margin)
  local rate = tonumber(redis.call('GET', rate_key) or default_rate)
  return 1000000 / (rate * (1 - tonumber(margin)))
end
local function set_tat(key, tat, now)
  redis.call('SET', key, string.format('%.3f', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
end
"""

# KEYS: tat, rate. ARGV: default rate, margin, lead (µs), count, span (µs), not before (µs), now.
# Reply: {0, wait} or {granted, delay of the first, interval} (µs; the interval as a string, exact).
_LUA_RESERVE = _LUA_NOW + """
local now = now_us(ARGV[7])
local interval = interval_us(KEYS[2], ARGV[1], ARGV[2])
local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or 0), now + tonumber(ARGV[6]))
local ahead = tat - now
local lead = tonumber(ARGV[3])
if ahead > lead then
  return {0, math.ceil(ahead - lead)}
end
local granted = math.max(1, math.min(tonumber(ARGV[4]), math.floor((lead + tonumber(ARGV[5]) - ahead) / interval) + 1))
set_tat(KEYS[1], tat + granted * interval, now)
return {granted, math.floor(ahead), string.format('%.3f', interval)}
"""

# KEYS: tat, rate. ARGV: default rate, margin, n, horizon (µs), now.
_LUA_DEBIT = _LUA_NOW + """
local now = now_us(ARGV[5])
local interval = interval_us(KEYS[2], ARGV[1], ARGV[2])
local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or 0), now)
local pushed = math.min(tat + tonumber(ARGV[3]) * interval, now + tonumber(ARGV[4]))
if pushed > tat then set_tat(KEYS[1], pushed, now) end
return 1
"""

# KEYS: tat, paused. ARGV: seconds (µs), now.
_LUA_PAUSE = _LUA_NOW + """
local now = now_us(ARGV[2])
local until_ = now + tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1]) or 0)
if until_ > tat then set_tat(KEYS[1], until_, now) end
local paused = tonumber(redis.call('GET', KEYS[2]) or 0)
if until_ > paused then set_tat(KEYS[2], until_, now) end
return 1
"""

# KEYS: pair. ARGV: interval (µs), tolerance (µs), now.
_LUA_PAIR_RESERVE = _LUA_NOW + """
local now = now_us(ARGV[3])
local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or 0), now)
local early = tat - now - tonumber(ARGV[2])
if early > 0 then return math.ceil(early) end
set_tat(KEYS[1], tat + tonumber(ARGV[1]), now)
return 0
"""

# KEYS: pair. ARGV: seconds (µs), tolerance (µs), now.
_LUA_PAIR_PENALIZE = _LUA_NOW + """
local now = now_us(ARGV[3])
local blocked = now + tonumber(ARGV[1]) + tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or 0)
if blocked > tat then set_tat(KEYS[1], blocked, now) end
return 1
"""

# KEYS: tat, rate, paused. ARGV: now. Reply: now, stored rate or false, tat or false, paused or false.
_LUA_STATUS = _LUA_NOW + """
local now = now_us(ARGV[1])
return {string.format('%.0f', now), redis.call('GET', KEYS[2]), redis.call('GET', KEYS[1]),
        redis.call('GET', KEYS[3])}
"""

# KEYS: cancelled. ARGV: id, retention (µs), now.
_LUA_CANCEL = _LUA_NOW + """
local now = now_us(ARGV[3])
redis.call('ZADD', KEYS[1], string.format('%.0f', now), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now - tonumber(ARGV[2])))
return 1
"""

_US = 1_000_000


def _number_key(phone_number_id: str, what: str) -> str:
    # The hash tag keeps a number's keys in one slot, so a script may touch them all on a cluster.
    return f"{KEY_PREFIX}{{{phone_number_id}}}:{what}"


def _pair_key(phone_number_id: str, recipient: str) -> str:
    return f"{KEY_PREFIX}{{{phone_number_id}}}:pair:{recipient}"


CANCELLED_KEY = f"{KEY_PREFIX}cancelled"


class RedisStore(Store):
    """The store for every deployment with Redis: one clock (Redis TIME), atomic scripts."""

    def __init__(self, client: "redis.Redis", default_rate: float, margin: float = SAFETY_MARGIN,
                 clock: Callable[[], float] | None = None) -> None:
        super().__init__(default_rate, margin)
        self.client = client
        # Tests pin "now"; in service Redis TIME is the only clock.
        self._clock = clock
        self._scripts = {name: client.register_script(source) for name, source in (
            ("reserve", _LUA_RESERVE), ("debit", _LUA_DEBIT), ("pause", _LUA_PAUSE),
            ("pair_reserve", _LUA_PAIR_RESERVE), ("pair_penalize", _LUA_PAIR_PENALIZE),
            ("status", _LUA_STATUS), ("cancel", _LUA_CANCEL))}

    @classmethod
    def from_url(cls, url: str, default_rate: float, margin: float = SAFETY_MARGIN) -> "RedisStore":
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        # The consumer asks from its event loop: fail within a fraction of a second, retrying
        # once at once (a connection the server closed while idle), never with backoff.
        client = redis.Redis.from_url(url, socket_timeout=0.25, socket_connect_timeout=0.25,
                                      retry=Retry(NoBackoff(), 1), health_check_interval=30)
        return cls(client, default_rate, margin)

    def warm_up(self, connections: int) -> None:
        """Load the scripts (a first EVALSHA would fail and load them) and open a connection for each
        of ``connections`` threads (redis-py opens one when a call finds every pooled one busy)."""
        pool = self.client.connection_pool
        opened = []
        try:
            for _ in range(max(1, connections)):
                connection = pool.get_connection()
                opened.append(connection)
                connection.connect()
            for script in self._scripts.values():
                self._call(self.client.script_load, script.script)
        finally:
            for connection in opened:
                pool.release(connection)

    def _now(self) -> str:
        return "" if self._clock is None else f"{self._clock() * _US:.3f}"

    def _run(self, script: str, keys: list[str], args: list[Any]) -> Any:
        import redis

        registered = self._scripts[script]
        try:
            # EVALSHA straight through execute_command: redis-py's Script call adds layers that cost
            # a tenth of a sender's CPU at 400 sends a second (py-spy). A server that lost the
            # script (a restart, SCRIPT FLUSH) gets it again.
            try:
                return self.client.execute_command("EVALSHA", registered.sha, len(keys), *keys, *args, self._now())
            except redis.exceptions.NoScriptError:
                return registered(keys=keys, args=[*args, self._now()])
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise LimiterUnavailable(f"Redis unreachable: {exc}") from exc

    def reserve(self, phone_number_id: str, lead: float = 0.0, default_rate: float | None = None,
                count: int = 1, span: float = 0.0, not_before: float = 0.0) -> Reservation | Wait:
        granted, micros, *interval = self._run(
            "reserve", [_number_key(phone_number_id, "tat"), _number_key(phone_number_id, "rate")],
            [default_rate or self.default_rate, self.margin, f"{lead * _US:.3f}", max(1, count), f"{span * _US:.3f}",
             f"{min(not_before, lead) * _US:.3f}"])
        if not granted:
            return Wait(micros / _US)
        return Reservation(micros / _US, granted, float(interval[0]) / _US)

    def debit(self, phone_number_id: str, n: int = 1) -> None:
        self._run("debit", [_number_key(phone_number_id, "tat"), _number_key(phone_number_id, "rate")],
                  [self.default_rate, self.margin, n, DEBIT_HORIZON * _US])

    def pause(self, phone_number_id: str, seconds: float) -> None:
        self._run("pause", [_number_key(phone_number_id, "tat"), _number_key(phone_number_id, "paused")],
                  [f"{seconds * _US:.3f}"])

    def set_rate(self, phone_number_id: str, rate: float) -> None:
        self._call(self.client.set, _number_key(phone_number_id, "rate"), repr(_check_rate(rate)))

    def clear_rate(self, phone_number_id: str) -> None:
        self._call(self.client.delete, _number_key(phone_number_id, "rate"))

    def get_rate(self, phone_number_id: str) -> float | None:
        raw = self._call(self.client.get, _number_key(phone_number_id, "rate"))
        return None if raw is None else float(raw)

    def pair_reserve(self, phone_number_id: str, recipient: str) -> float:
        micros = self._run("pair_reserve", [_pair_key(phone_number_id, recipient)],
                           [PAIR_INTERVAL * _US, (PAIR_BURST - 1) * PAIR_INTERVAL * _US])
        return micros / _US

    def pair_penalize(self, phone_number_id: str, recipient: str, seconds: float) -> None:
        self._run("pair_penalize", [_pair_key(phone_number_id, recipient)],
                  [f"{seconds * _US:.3f}", (PAIR_BURST - 1) * PAIR_INTERVAL * _US])

    def cancel_broadcast(self, broadcast_id: str) -> None:
        self._run("cancel", [CANCELLED_KEY], [broadcast_id, CANCELLED_RETENTION * _US])
        self._remember_cancelled(broadcast_id)

    def _read_cancelled(self) -> frozenset[str]:
        return frozenset(m.decode() for m in self._call(self.client.zrange, CANCELLED_KEY, 0, -1))

    def _read_status(self, phone_number_id: str) -> tuple[float | None, float, float | None]:
        now, rate, tat, paused = self._run("status", [_number_key(phone_number_id, w)
                                                      for w in ("tat", "rate", "paused")], [])
        now = float(now)
        paused_until = float(paused) / _US if paused and float(paused) > now else None
        return (None if rate is None else float(rate), max(0.0, float(tat or 0) - now) / _US, paused_until)

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        import redis

        try:
            return fn(*args)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise LimiterUnavailable(f"Redis unreachable: {exc}") from exc


# --- A file, for the embedded default ------------------------------------------------------

class FileStore(Store):
    """The store of the embedded, no-server default: JSON files under one folder, one host.

    Each file is read and rewritten under an exclusive ``flock`` on its own lock file, and
    replaced atomically, so a process killed mid-write leaves the previous state. The arithmetic
    is the Redis scripts', in seconds.
    """

    def __init__(self, folder: Path, default_rate: float, margin: float = SAFETY_MARGIN,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(default_rate, margin)
        self.folder = Path(folder)
        self._clock = clock

    @contextmanager
    def _state(self, name: str, write: bool = True) -> Iterator[dict[str, Any]]:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with open(self.folder / f"{name}.lock", "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX if write else fcntl.LOCK_SH)
                path = self.folder / f"{name}.json"
                try:
                    state = json.loads(path.read_text() or "{}")
                except FileNotFoundError:
                    state = {}
                yield state
                if write:
                    tmp = path.with_suffix(f".{os.getpid()}.tmp")
                    tmp.write_text(json.dumps(state, separators=(",", ":")))
                    os.replace(tmp, path)
        except (OSError, ValueError) as exc:
            raise LimiterUnavailable(f"limiter file {self.folder / name}.json: {exc}") from exc

    def _interval(self, number: dict[str, Any], default_rate: float | None) -> float:
        rate = number.get("rate") or default_rate or self.default_rate
        return 1.0 / (rate * (1 - self.margin))

    def reserve(self, phone_number_id: str, lead: float = 0.0, default_rate: float | None = None,
                count: int = 1, span: float = 0.0, not_before: float = 0.0) -> Reservation | Wait:
        with self._state("numbers") as numbers:
            now = self._clock()
            number = numbers.setdefault(phone_number_id, {})
            tat = max(number.get("tat", 0.0), now + min(not_before, lead))
            if tat - now > lead:
                return Wait(tat - now - lead)
            interval = self._interval(number, default_rate)
            granted = max(1, min(count, math.floor((lead + span - (tat - now)) / interval) + 1))
            number["tat"] = tat + granted * interval
            return Reservation(tat - now, granted, interval)

    def debit(self, phone_number_id: str, n: int = 1) -> None:
        with self._state("numbers") as numbers:
            now = self._clock()
            number = numbers.setdefault(phone_number_id, {})
            tat = max(number.get("tat", 0.0), now)
            number["tat"] = max(tat, min(tat + n * self._interval(number, None), now + DEBIT_HORIZON))

    def pause(self, phone_number_id: str, seconds: float) -> None:
        with self._state("numbers") as numbers:
            until = self._clock() + seconds
            number = numbers.setdefault(phone_number_id, {})
            number["tat"] = max(number.get("tat", 0.0), until)
            number["paused"] = max(number.get("paused", 0.0), until)

    def set_rate(self, phone_number_id: str, rate: float) -> None:
        rate = _check_rate(rate)
        with self._state("numbers") as numbers:
            numbers.setdefault(phone_number_id, {})["rate"] = rate

    def clear_rate(self, phone_number_id: str) -> None:
        with self._state("numbers") as numbers:
            numbers.setdefault(phone_number_id, {}).pop("rate", None)

    def get_rate(self, phone_number_id: str) -> float | None:
        with self._state("numbers", write=False) as numbers:
            return numbers.get(phone_number_id, {}).get("rate")

    def pair_reserve(self, phone_number_id: str, recipient: str) -> float:
        with self._state("pairs") as pairs:
            now = self._clock()
            self._forget_idle_pairs(pairs, now)
            key = f"{phone_number_id} {recipient}"
            tat = max(pairs.get(key, 0.0), now)
            early = tat - now - (PAIR_BURST - 1) * PAIR_INTERVAL
            if early > 0:
                return early
            pairs[key] = tat + PAIR_INTERVAL
            return 0.0

    def pair_penalize(self, phone_number_id: str, recipient: str, seconds: float) -> None:
        with self._state("pairs") as pairs:
            key = f"{phone_number_id} {recipient}"
            blocked = self._clock() + seconds + (PAIR_BURST - 1) * PAIR_INTERVAL
            pairs[key] = max(pairs.get(key, 0.0), blocked)

    @staticmethod
    def _forget_idle_pairs(pairs: dict[str, float], now: float) -> None:
        # A pair whose TAT has passed is the same as a pair never seen: drop it (Redis: PEXPIRE).
        for key in [k for k, tat in pairs.items() if tat <= now]:
            del pairs[key]

    def cancel_broadcast(self, broadcast_id: str) -> None:
        with self._state("cancelled") as cancelled:
            now = self._clock()
            cancelled[broadcast_id] = now
            for key in [k for k, at in cancelled.items() if at < now - CANCELLED_RETENTION]:
                del cancelled[key]
        self._remember_cancelled(broadcast_id)

    def _read_cancelled(self) -> frozenset[str]:
        with self._state("cancelled", write=False) as cancelled:
            return frozenset(cancelled)

    def _read_status(self, phone_number_id: str) -> tuple[float | None, float, float | None]:
        with self._state("numbers", write=False) as numbers:
            now = self._clock()
            number = numbers.get(phone_number_id, {})
            paused = number.get("paused", 0.0)
            return number.get("rate"), max(0.0, number.get("tat", 0.0) - now), paused if paused > now else None


# --- Choosing the store, and the task's side -----------------------------------------------

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
