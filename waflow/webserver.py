"""The web process's gunicorn worker: gthread, with a deadline on the arrival of each request.

gunicorn's gthread worker hands each connection to a thread, which waits up to 5 s for a first byte
(then gives a silent connection back to its poller) and from there blocks on the socket until the
request's headers are parsed and the app has read the body. Nothing bounds that second wait: a client
that sends headers and ``Content-Length: 100`` and then nothing, or a byte every few seconds, holds its
thread as long as it likes, and 32 of them starve the default 2 workers x 16 threads.

``DeadlineThreadWorker`` gives every request ``WAFLOW_BODY_TIMEOUT`` seconds from the moment the worker
takes it on (``enqueue_req``: a new connection accepted, or a kept-alive or waiting one readable again),
time spent queued for a thread included. A watchdog thread shuts down the read side
(``shutdown(SHUT_RD)``) of every connection still being served past its deadline: the blocked read
returns end of file, which gunicorn and the app already handle as a client that left. Headers cut short
end the connection without an answer; a body cut short is answered 400 by the gateway. Answering still
works, and the connection is then closed. Connections queued behind stalled ones are cut at their own
deadline too, instead of each getting the whole timeout once a thread frees up, so 64 stalled uploads
hold the threads for one timeout, not two or three. Nothing inside gunicorn is patched: the hooks are
the worker's ``enqueue_req``, ``handle`` and ``run``.

The log says how many connections were cut and the peers' addresses, never what they sent. A buffering
proxy in front (README.md, "Deploy") keeps slow clients off the threads altogether; this worker does not
depend on one.
"""
from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any

from gunicorn.workers.gthread import ThreadWorker

from waflow.config import settings

logger = logging.getLogger(__name__)

# How often the watchdog looks for requests past their deadline: a cut comes at most this late.
CHECK_INTERVAL = 0.25


class DeadlineThreadWorker(ThreadWorker):
    """gunicorn's gthread worker, whose requests must arrive within ``WAFLOW_BODY_TIMEOUT`` seconds."""

    body_timeout: float = settings.body_timeout

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Connection -> monotonic deadline, for every connection queued for a thread or being served.
        self._deadlines: dict[Any, float] = {}
        self._deadlines_lock = threading.Lock()

    def run(self) -> None:
        threading.Thread(target=self._watch_deadlines, name="waflow-request-deadline", daemon=True).start()
        super().run()

    def enqueue_req(self, conn: Any) -> None:
        # The main thread hands a connection to the pool: a new one, or a kept-alive one with a next request.
        with self._deadlines_lock:
            self._deadlines[conn] = time.monotonic() + self.body_timeout
        super().enqueue_req(conn)

    def handle(self, conn: Any) -> Any:
        try:
            return super().handle(conn)
        finally:
            # Before gunicorn closes or parks the socket (finish_request runs after this returns).
            with self._deadlines_lock:
                self._deadlines.pop(conn, None)

    def _watch_deadlines(self) -> None:
        while True:
            time.sleep(CHECK_INTERVAL)
            try:
                self._cut_overdue(time.monotonic())
            except Exception:  # the watchdog must outlive any surprise, or stalled clients win again
                logger.exception("web: the request deadline watchdog failed; it carries on")

    def _cut_overdue(self, now: float) -> None:
        # Cut under the lock: meanwhile handle() cannot return, so gunicorn cannot close or park the socket.
        with self._deadlines_lock:
            overdue = [conn for conn, deadline in self._deadlines.items() if deadline <= now]
            for conn in overdue:
                del self._deadlines[conn]
                _stop_reading(conn)
        if overdue:
            logger.warning("web: cut %d connection(s) still sending their request after %g s "
                           "(WAFLOW_BODY_TIMEOUT), from %s", len(overdue), self.body_timeout,
                           ", ".join(sorted({_peer(conn) for conn in overdue})))


def _stop_reading(conn: Any) -> None:
    """Make the thread's blocked read (or the next one) return end of file; answering still works."""
    try:
        # The plain socket's shutdown, even on a TLS socket (whose own shutdown would drop its TLS state).
        socket.socket.shutdown(conn.sock, socket.SHUT_RD)
    except OSError:
        pass  # closed meanwhile, or the client has gone already


def _peer(conn: Any) -> str:
    client = conn.client
    return str(client[0]) if isinstance(client, tuple) and client else "a unix socket"
