"""The simulator's options: one dataclass, built from ``waflow.config`` settings or by a test."""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from waflow.config import DEV_WABA_ID, Settings

# Options /_sim/config may change while the simulator runs; /_sim/reset restores them.
RUNTIME_FIELDS = ("rate", "pair_limit", "pair_burst", "pair_interval", "open_windows", "status_webhooks",
                  "status_delay", "late", "reorder", "duplicate", "user_ids")


@dataclass
class SimulatorOptions:
    """How one simulator behaves. ``repr`` never shows the token or the app secret."""

    access_token: str = field(repr=False)
    app_secret: str = field(repr=False)
    # Where signed webhooks (statuses, inbound messages) go: the gateway by default.
    webhook_url: str
    # The business number inbound webhooks name; sends are accepted from any number id in the URL.
    phone_number_id: str = "100000000000001"
    display_phone_number: str = "15550000000"
    # Every webhook's entry[].id: a client configured with the WABA id drops updates naming another.
    waba_id: str = DEV_WABA_ID
    # The simulator's own address: every media URL it hands out (webhooks, GET /{media-id}) is
    # built on it, never on a request's Host header (a client rewriting URLs keeps Meta's).
    base_url: str = "http://127.0.0.1:5900/"
    # Meta's default throughput per business number (§7.1); numbers are upgraded up to 1000/s.
    rate: int = 80
    # Meta allows about one message per 6 s per user with bursts (§7.1): a token bucket.
    pair_limit: bool = True
    pair_burst: int = 10
    pair_interval: float = 6.0
    # True: every 24-hour customer service window counts as open.
    open_windows: bool = False
    status_webhooks: bool = True
    status_delay: float = 0.5  # seconds between sent, delivered and read
    late: float = 0.0  # extra seconds before the first status
    reorder: bool = False  # deliver a message's statuses in a shuffled order
    duplicate: bool = False  # post each status webhook twice
    # Contacts in webhooks carry each user's business-scoped id (user_id), as Meta's do since April
    # 2026; False sends phone-only contacts, as before.
    user_ids: bool = True
    # Meta retries a non-200 answer with backoff; a few attempts show the behaviour.
    webhook_attempts: int = 4
    webhook_backoff: float = 1.0  # seconds before the 2nd attempt, doubling after
    webhook_timeout: float = 10.0
    webhook_workers: int = 16
    demo_traffic: float = 0.0  # inbound messages a minute from made-up clients
    # Memory bound: the last 200k accepted sends (and read receipts) are kept, about 0.6 KB each for a
    # short text (the raw body is stored, compact): some 115 MB when full. Older ones are forgotten.
    max_records: int = 200_000
    # Media kept in memory (uploads, injected files); the oldest is forgotten past it. A benchmark
    # of large downloads raises it (--max-media-bytes).
    max_media_bytes: int = 256 * 1024 * 1024
    # Every recorded time comes from this clock: time.time() at full precision by default, so
    # benchmarks can compare the simulator's record with their own wall-clock times.
    clock: Callable[[], float] = field(default=time.time, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> "SimulatorOptions":
        """Options from waflow's settings; keyword arguments (the command line's) override them."""
        base = cls(access_token=settings.access_token, app_secret=settings.app_secret,
                   webhook_url=settings.simulator_webhook_url, phone_number_id=settings.phone_number_id,
                   waba_id=settings.waba_id or DEV_WABA_ID, base_url=f"http://127.0.0.1:{settings.simulator_port}/")
        return replace(base, **overrides)

    def runtime(self) -> dict[str, Any]:
        """The options /_sim/config shows and may change (no secrets)."""
        return {name: getattr(self, name) for name in RUNTIME_FIELDS}
