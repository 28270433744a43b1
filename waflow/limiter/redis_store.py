"""The limiter's store on Redis, for every deployment with Redis: one clock (Redis ``TIME``), atomic
Lua scripts, and every answer a delay from now, so no two hosts' clocks are ever compared."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable

from waflow.limiter.base import (CANCELLED_RETENTION, DEBIT_HORIZON, KEY_PREFIX, PAIR_BURST, PAIR_INTERVAL,
                                 SAFETY_MARGIN, LimiterUnavailable, Reservation, Store, Wait, _check_rate)

if TYPE_CHECKING:
    import redis

logger = logging.getLogger(__name__)

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
            # a tenth of a sender's CPU at 400 sends a second. A server that lost the
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
