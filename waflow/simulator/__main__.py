"""``python -m waflow.simulator``: serve the Meta simulator with gunicorn.

Exactly one worker process: the simulator's state (records, windows, limits) lives in memory, and
a second process would hold a second, disagreeing copy. Threads (gthread) serve concurrent
requests; a delay fault holds one thread, not the server. Options default to waflow's settings
(``SIMULATOR_PORT``, ``SIMULATOR_WEBHOOK_URL``, ``WHATSAPP_ACCESS_TOKEN``, ``WHATSAPP_APP_SECRET``,
``WHATSAPP_PHONE_NUMBER_ID``); the token and the app secret are never taken on the command line,
where ``ps`` would show them.
"""
from __future__ import annotations

import argparse
import logging
from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication

from waflow import config
from waflow.simulator.app import create_simulator
from waflow.simulator.options import SimulatorOptions
from waflow.simulator.state import EXTENSION


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    s = config.settings
    parser = argparse.ArgumentParser(prog="python -m waflow.simulator", description=__doc__.split("\n")[0])
    add = parser.add_argument
    add("--host", default="127.0.0.1",
        help="loopback address to bind (default: %(default)s; /_sim/ has no auth, so nothing else is allowed)")
    add("--port", type=int, default=s.simulator_port, help="port (default: SIMULATOR_PORT, %(default)s)")
    add("--webhook-url", default=s.simulator_webhook_url, help="where webhooks go (default: %(default)s)")
    add("--phone-number-id", default=s.phone_number_id, help="business number of inbound webhooks")
    add("--rate", type=int, default=80, help="accepted sends per second per number (default: %(default)s)")
    add("--pair-burst", type=int, default=10, help="pair-limit bucket size (default: %(default)s)")
    add("--pair-interval", type=float, default=6.0, help="seconds per pair-limit token (default: %(default)s)")
    add("--no-pair-limit", action="store_true", help="turn the per-recipient pair limit (131056) off")
    add("--open-windows", action="store_true", help="treat every 24-hour customer window as open")
    add("--no-status-webhooks", action="store_true", help="post no status webhooks (benchmarks)")
    add("--status-delay", type=float, default=0.5, help="seconds between sent, delivered, read (default: %(default)s)")
    add("--late", type=float, default=0.0, help="extra seconds before the first status")
    add("--reorder", action="store_true", help="deliver each message's statuses in a shuffled order")
    add("--duplicate", action="store_true", help="post every status webhook twice")
    add("--demo-traffic", type=float, default=0.0, metavar="PER_MINUTE",
        help="inject this many inbound messages a minute from made-up clients")
    add("--max-records", type=int, default=200_000, help="accepted sends kept in memory (default: %(default)s)")
    add("--max-media-bytes", type=int, default=SimulatorOptions.max_media_bytes, metavar="BYTES",
        help="media kept in memory, oldest forgotten first (default: %(default)s; raise it for large files)")
    add("--no-user-ids", action="store_true",
        help="phone-only contacts in webhooks (no business-scoped user_id), as before April 2026")
    # gunicorn's gthread gives each new connection a thread until its first request arrives (up to
    # 5 s), and each sender process opens one connection per thread before its first send: with 32
    # threads here, 4 senders of 32 threads held them all with idle connections, and sends stalled.
    add("--threads", type=int, default=256, help="gunicorn threads (default: %(default)s)")
    add("--log-level", default=s.log_level, help="log level (default: WAFLOW_LOG_LEVEL, %(default)s)")
    args = parser.parse_args(argv)
    if not 1 <= args.rate <= 100_000:
        parser.error("--rate must be 1 to 100000")
    if args.max_media_bytes < 2**20:
        parser.error("--max-media-bytes must be at least 1048576 (1 MiB)")
    if not config.is_local_host(args.host):
        # /_sim/inbound signs whatever it is given with the app secret: reachable from elsewhere, it
        # would let anyone forge a client's message.
        parser.error(f"--host must be a loopback address (127.0.0.1, ::1, localhost): the simulator "
                     f"has no authentication, got {args.host}")
    return args


def options_from(args: argparse.Namespace) -> SimulatorOptions:
    host = f"[{args.host}]" if ":" in args.host else args.host
    return SimulatorOptions.from_settings(
        config.settings, webhook_url=args.webhook_url, phone_number_id=args.phone_number_id,
        base_url=f"http://{host}:{args.port}/", rate=args.rate, pair_limit=not args.no_pair_limit,
        pair_burst=args.pair_burst, pair_interval=args.pair_interval, open_windows=args.open_windows,
        status_webhooks=not args.no_status_webhooks, status_delay=args.status_delay, late=args.late,
        reorder=args.reorder, duplicate=args.duplicate, demo_traffic=args.demo_traffic,
        max_records=args.max_records, max_media_bytes=args.max_media_bytes, user_ids=not args.no_user_ids)


class SimulatorServer(BaseApplication):
    """gunicorn serving ``create_simulator(options)``, built in the worker (no preload) so its threads live there."""

    def __init__(self, options: SimulatorOptions, bind: str, threads: int, log_level: str) -> None:
        self.options = options
        self.settings = {
            "bind": bind,
            "workers": 1,  # state is in memory: one process, see the module docstring
            "worker_class": "gthread",
            "threads": threads,
            "timeout": 60,
            "graceful_timeout": 5,
            "keepalive": 5,
            "accesslog": None,
            "errorlog": "-",
            "loglevel": log_level.lower(),
            "proc_name": "waflow-simulator",
            # As gunicorn.conf.py: gunicorn 27's control socket path is per user, shared by every gunicorn.
            "control_socket_disable": True,
            "worker_exit": _close_simulator,
        }
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.settings.items():
            self.cfg.set(key, value)

    def load(self) -> Flask:
        return create_simulator(self.options)


def _close_simulator(server: Any, worker: Any) -> None:
    app = getattr(worker, "wsgi", None)
    if app is not None:
        app.extensions[EXTENSION].close()


def main(argv: list[str] | None = None) -> None:
    if config.settings.production:
        # It would sign made-up webhooks with the production app secret.
        raise SystemExit("waflow refuses to start: the Meta simulator never runs with WAFLOW_ENV=production")
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    options = options_from(args)
    logging.getLogger("waflow.simulator").info(
        "simulator: http://%s:%d, webhooks to %s, %d msg/s per number", args.host, args.port, options.webhook_url,
        options.rate)
    SimulatorServer(options, f"{args.host}:{args.port}", args.threads, args.log_level).run()


if __name__ == "__main__":
    main()
