"""Forced outcomes for the next matching sends, queued by ``POST /_sim/faults`` and used FIFO.

A fault is one of: an error ``code`` (Meta's body, with the code's HTTP status or an explicit
``status``), a body-less HTTP ``status`` (e.g. a proxy's 502), ``drop`` (close the connection
without an answer), ``fail`` (accept the send, then post one ``failed`` status webhook carrying
this error code and ``details`` instead of sent → delivered → read: Meta's asynchronous failure,
e.g. 131026 for a number not on WhatsApp), or only a ``delay`` (answer normally, late: the send is
accepted and recorded, which is what makes a client's read timeout ambiguous). ``delay`` also
combines with the others. A failed status has no ``contacts``, as Meta documents (reference §4.3);
``"with_contact": true`` adds a phone-only contact, the shape seen in live traffic in 2026 (a
failed status with ``contacts: [{"wa_id"}]``, reported to pywa as issue #227) and the only one
pywa 4.5.0 can parse.
A fault applies to message sends (``"on": "send"``, the default) or to mark-as-read requests
(``"on": "read"``), optionally only for one recipient (``to``), ``count`` times.
"""
from __future__ import annotations

import re
import threading
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class Fault:
    code: int | None = None
    status: int | None = None
    details: str | None = None
    delay: float = 0.0
    drop: bool = False
    fail: int | None = None
    with_contact: bool = False
    to: str | None = None
    on: str = "send"
    count: int = 1

    @classmethod
    def parse(cls, doc: Any) -> "Fault":
        """A fault from its JSON; ValueError says what is wrong."""
        if not isinstance(doc, dict):
            raise ValueError("a fault must be a JSON object")
        unknown = set(doc) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown fault fields: {', '.join(sorted(unknown))}")
        fault = cls(**doc)
        fault._validate()
        if fault.to is not None:
            fault.to = fault.to if "." in fault.to else re.sub(r"[^0-9]", "", fault.to)
        return fault

    def _validate(self) -> None:
        if self.code is None and self.status is None and not self.drop and not self.delay and self.fail is None:
            raise ValueError("a fault needs a code, a status, drop, fail or a delay")
        for name in ("code", "fail"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                raise ValueError(f"{name} must be a whole number")
        if self.fail is not None and (self.code is not None or self.status is not None or self.drop
                                      or self.on != "send"):
            raise ValueError("fail accepts the send: it goes with no code, status or drop, on sends only")
        if not isinstance(self.with_contact, bool) or (self.with_contact and self.fail is None):
            raise ValueError("with_contact (true or false) goes with fail")
        if self.status is not None and not (isinstance(self.status, int) and 200 <= self.status <= 599):
            raise ValueError("status must be an HTTP status (200-599)")
        if not isinstance(self.delay, (int, float)) or not 0 <= self.delay <= 300:
            raise ValueError("delay must be 0 to 300 seconds")
        if not isinstance(self.count, int) or not 1 <= self.count <= 100_000:
            raise ValueError("count must be 1 to 100000")
        if self.on not in ("send", "read"):
            raise ValueError('on must be "send" or "read"')
        if self.to is not None and not isinstance(self.to, str):
            raise ValueError("to must be a string")

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


class FaultQueue:
    """Pending faults in arrival order; ``take`` uses the first one matching a request.

    A fault matches when its ``on`` is the request's and its target (the attribute ``target``
    names: a recipient for sends, a media id for media) is unset or the request's. It is used up
    after ``count`` matches, unless it has ``every`` set."""

    def __init__(self, target: str = "to") -> None:
        self._target = target
        self._lock = threading.Lock()
        self._faults: list[Any] = []
        self.used = 0

    def add(self, faults: list[Any]) -> None:
        with self._lock:
            self._faults.extend(faults)

    def take(self, key: str | None, on: str) -> Any | None:
        if not self._faults:  # the common case, without the lock: a benchmark queues none
            return None
        with self._lock:
            for i, fault in enumerate(self._faults):
                if fault.on == on and getattr(fault, self._target) in (None, key):
                    if not getattr(fault, "every", False):
                        fault.count -= 1
                        if fault.count == 0:
                            del self._faults[i]
                    self.used += 1
                    return fault
        return None

    def pending(self) -> list[Any]:
        with self._lock:
            return list(self._faults)

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()
            self.used = 0
