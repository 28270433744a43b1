"""The Meta simulator: a stand-in for Meta's WhatsApp Cloud API, for development, demos, tests, benchmarks.

It answers what waflow's sender and media stage call (``POST /<version>/<phone_number_id>/messages``,
template lists, media upload, look-up and download) as Meta documents it
(``../shared/reference/whatsapp-cloud-api.md`` §4-§7): the Bearer token, shape limits, templates,
the 24-hour window, per-number throughput and the per-recipient pair limit, with Meta's error
body and codes. It posts signed status webhooks (sent → delivered → read) for every accepted send
and, on request, signed inbound messages, to the gateway. Its webhooks and answers are held key by
key against real Meta payloads (``tests/test_simulator_shapes.py``) and parsed by pywa, an
independent client library (``tests/test_simulator_pywa.py``).

Who webhooks name: ``entry[].id`` is the configured ``WHATSAPP_WABA_ID``; ``contacts[]`` carries
the user's ``wa_id`` and a business-scoped ``user_id``, stable per number (``users``), in every
message and status webhook except a failed status (none, as Meta documents). ``--no-user-ids``,
``{"user_ids": false}`` on ``/_sim/config`` or ``"user_id": null`` on one injection gives
phone-only contacts.

Control endpoints under ``/_sim/`` take **no token**: they are for tests and demos on loopback
only, which is why the server binds 127.0.0.1 by default. Never expose the simulator's port.

- ``GET /_sim/sends``, ``/_sim/reads``, ``/_sim/stats``; ``POST /_sim/reset``; ``GET|POST
  /_sim/config`` (runtime options); ``POST /_sim/windows``; ``GET|POST /_sim/templates``.
- ``POST /_sim/inbound``: one client message now (``inbound``): text, a generated image, or
  ``"media": {"kind", "mime_type", "data_base64" | "size", "filename"?, "voice"?, "animated"?}``,
  whose webhook carries a media id the simulator serves (7 days, as Meta), or ``"media": {"kind",
  "id"}`` to send a media id it holds again.
- ``GET|POST|DELETE /_sim/faults``: forced outcomes of sends (``faults``): ``{"code": 131000}``,
  ``{"status": 502}``, ``{"drop": true}``, ``{"delay": 2.5}``, or ``{"fail": 131026, "details"?,
  "with_contact"?: true}`` (accepted, then one failed status webhook); ``to``, ``on`` ("send" or
  "read"), ``count``.
- ``GET|POST|DELETE /_sim/media/faults``: forced outcomes of media look-ups and downloads
  (``media_faults``), one object or ``{"faults": [...]}``, each with one of
  ``{"download_status": 401 | 404 | 5xx}``, ``{"sha256_mismatch": true}``, ``{"cut_after": BYTES}``,
  ``{"stream_bytes": BYTES}``, ``{"announce_size": BYTES}``, ``{"expired": true}``; optionally
  ``"media_id"`` and ``"count"`` (default 1) or ``"every": true``.

State lives in memory, in one process: run it with exactly one gunicorn worker
(``python -m waflow.simulator``, see ``__main__``). Records are capped (the last 200k sends by
default), and so is media (``--max-media-bytes``, 256 MiB by default); recorded times are
``time.time()`` at full precision.

Modules, each importing only those after it: ``app`` (the Flask app: assembles the blueprints),
``control`` (``/_sim/``), ``graph`` (messages, templates) and ``graph_media`` (media endpoints),
``httpkit`` (shared HTTP pieces), ``state`` (the ``Simulator`` object), then ``inbound``,
``webhooks``, ``ledger``, ``templates``, ``shapes``, ``media``, ``media_faults``, ``faults``,
``users``, ``errors``, ``options``.
"""
from __future__ import annotations

from waflow.simulator.app import create_simulator
from waflow.simulator.options import SimulatorOptions
from waflow.simulator.state import Simulator

__all__ = ["Simulator", "SimulatorOptions", "create_simulator"]
