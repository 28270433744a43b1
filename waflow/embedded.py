"""The embedded broker: kombu's filesystem transport, made safe for several processes.

Stock ``filesystem://`` writes a message file in place, and a consumer polling
the folder can pick the file up before it is complete: it reads a truncated
message and the worker stops with "Unrecoverable error: JSONDecodeError" (seen in
waflow's end-to-end test). This transport writes each message to a staging
folder, flushes it to disk, then renames it into the queue folder, which is
atomic on one filesystem: a consumer sees a whole message or none.

Registered as the ``embedded://`` scheme, waflow's default broker URL.
"""
from __future__ import annotations

import os
import uuid
from time import monotonic

from kombu.exceptions import ChannelError
from kombu.transport import TRANSPORT_ALIASES, filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps

SCHEME = "embedded"


class Channel(filesystem.Channel):
    def _put(self, queue, payload, **kwargs):
        """Put ``payload`` on ``queue`` whole: write, flush, then rename into place."""
        name = f"{int(round(monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        staging = self.transport_options["staging_folder"]
        temporary = os.path.join(staging, name)
        try:
            with open(temporary, "wb") as f:
                f.write(str_to_bytes(dumps(payload)))
                f.flush()
                os.fsync(f.fileno())
            os.rename(temporary, os.path.join(self.data_folder_out, name))
        except OSError as exc:
            raise ChannelError(f"Cannot add message to queue {queue!r}: {exc}") from exc


class Transport(filesystem.Transport):
    Channel = Channel
    global_state = filesystem.virtual.BrokerState()
    driver_type = driver_name = SCHEME


TRANSPORT_ALIASES[SCHEME] = "waflow.embedded:Transport"
