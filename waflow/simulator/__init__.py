"""The Meta simulator: a stand-in for Meta's WhatsApp Cloud API, for development, demos, tests, benchmarks.

It answers what waflow's sender and media stage call (``POST /<version>/<phone_number_id>/messages``,
template lists, media upload and download) as Meta documents it
(``../shared/reference/whatsapp-cloud-api.md`` §4-§7): the Bearer token, shape limits, templates,
the 24-hour window, per-number throughput and the per-recipient pair limit, with Meta's error
body and codes. It posts signed status webhooks (sent → delivered → read) for every accepted send
and, on request, signed inbound messages, to the gateway.

Control endpoints under ``/_sim/`` (records, stats, reset, runtime options, faults, templates,
inbound injection) take **no token**: they are for tests and demos on loopback only, which is why
the server binds 127.0.0.1 by default. Never expose the simulator's port.

State lives in memory, in one process: run it with exactly one gunicorn worker
(``python -m waflow.simulator``, see ``__main__``). Records are capped (the last 200k sends by
default); recorded times are ``time.time()`` at full precision.

Modules: ``options`` (the options dataclass), ``app`` (the ``Simulator`` and ``create_simulator``),
``graph`` (Meta's endpoints), ``control`` (``/_sim/``), ``shapes`` (payload checks), ``ledger``
(limits and records), ``templates``, ``faults``, ``media``, ``webhooks``, ``errors``.
"""
from __future__ import annotations

from waflow.simulator.app import create_simulator
from waflow.simulator.options import SimulatorOptions
from waflow.simulator.state import Simulator

__all__ = ["Simulator", "SimulatorOptions", "create_simulator"]
