"""The limiter's store in a file under ``WAFLOW_VAR_DIR``, for the embedded, no-server default only:
``fcntl.flock`` serializes the processes of one host, ``time.time()`` is their clock."""
from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from waflow.limiter.base import (CANCELLED_RETENTION, DEBIT_HORIZON, PAIR_BURST, PAIR_INTERVAL, SAFETY_MARGIN,
                                 LimiterUnavailable, Reservation, Store, Wait, _check_rate)

logger = logging.getLogger(__name__)

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
