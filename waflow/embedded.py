"""The embedded broker: kombu's filesystem transport, made safe for several processes.

Registered as the ``embedded://`` scheme, waflow's default broker URL. It changes
stock ``filesystem://`` where several processes sharing one folder meet:

- **Messages are written whole.** Stock writes a message file in place, and a
  consumer polling the folder can pick it up before it is complete (a worker then
  stops with "Unrecoverable error: JSONDecodeError"). Here each message is written
  to a staging folder, flushed, then renamed into the queue folder.
- **Exchange tables are replaced whole.** Stock rewrites ``<exchange>.exchange`` in
  place, and creates it by truncating before it locks: a reader could load half a
  table, and two processes binding at once could each lose the other's binding.
  Here a table is changed under a lock file and written by rename; a reader sees
  the old table or the new one, never a mix. And a binding is written before kombu
  records it in the state the process's channels share (stock records it first, so
  another thread could publish by it before the table held it: a lost message).
- **A queue is first in, first out.** Stock names a message file by the millisecond it
  was written and a random id, and hands out the lowest name: messages one process
  writes within a millisecond came out in random order, and a name gaining a digit
  (every power of ten of milliseconds since boot) sorted before the shorter ones.
  Here a name holds the nanosecond and a per-process counter, zero-padded, and files
  are handed out by that number, stock names read as their millisecond.
- **A message is claimed by rename inside the broker folder.** Stock moves it to
  the system temporary folder, which is a copy (not atomic, and client text in a
  shared folder) wherever /tmp is another filesystem.
- **Auto-delete queues go away with their owner.** The virtual transport ignores
  ``auto_delete``, so every stopped Flower left its event queue bound, and every
  worker kept writing event files into it. A process that declares an auto-delete
  (or exclusive) queue holds a lock on an owner file for as long as it lives; the
  kernel releases the lock when the process ends, however it ends. Whenever a
  process declares such a queue, queues whose owners are all gone are unbound and
  their messages deleted: a stopped Flower's queue is gone by the next start (and a
  message routed to it in that moment, by the sweep after). Queues left on Celery's
  event and control exchanges by processes from before owner records go too.
- **A stopping worker stops polling at once** (``stop_polling``): the worker's loop
  otherwise waits out a whole 2-second poll before it sees the shutdown.
- **No hostname**: the filesystem has none, so kombu is not told to "revert to
  localhost" (its warning, printed for every connection of every process).
"""
from __future__ import annotations

import errno
import fcntl
import itertools
import logging
import os
import socket
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from queue import Empty
from time import monotonic
from typing import Callable, Iterator

from kombu.exceptions import ChannelError
from kombu.transport import TRANSPORT_ALIASES, filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps, loads

logger = logging.getLogger(__name__)

SCHEME = "embedded"

# How long a removed auto-delete queue's messages are deleted again by later sweeps (a publish routed to it
# just before it was unbound may land after).
TOMBSTONE_SECONDS = 600

# A message file's name starts with when it was written: 20 digits of CLOCK_MONOTONIC nanoseconds (one
# clock for every process of the host) and 6 of this process's counter, which orders the messages one
# process writes within a nanosecond.
_SEQUENCE = itertools.count()
_NEW_NAME_DIGITS = 26


def _written_order(name: str) -> tuple[int, str]:
    """Sort key of a message file: when it was written, in nanoseconds × 10**6 (stock kombu's names give
    milliseconds since boot, with no counter), then the rest of the name."""
    stamp, _, rest = name.partition("_")
    if not stamp.isdigit():
        return (0, name)
    if len(stamp) == _NEW_NAME_DIGITS:
        return (int(stamp), rest)
    return (int(stamp) * 10**12, rest)


# The exchanges of Celery's events and remote control: Celery binds only auto-delete queues to them.
CELERY_TRANSIENT_EXCHANGES = ("celeryev", "celery.pidbox", "reply.celery.pidbox")
# How long a reader retries a table it cannot parse (one written in place by stock kombu, say) before failing.
TABLE_READ_ATTEMPTS = 5
TABLE_READ_PAUSE = 0.02

Binding = filesystem.exchange_queue_t

# This process's auto-delete queues: (owners folder, queue name) -> (owner file, its descriptor, which holds
# the lock).
_owned: dict[tuple[Path, str], tuple[Path, int]] = {}
_stopping = False


def stop_polling() -> None:
    """Make every later poll with a timeout return at once: called when a worker starts to shut down."""
    global _stopping
    _stopping = True


def _forget_inherited_ownership() -> None:
    """A forked child does not own its parent's queues: it closes its copies of the owner files' descriptors
    (the lock stays with the parent, which holds its own)."""
    for _, fd in _owned.values():
        try:
            os.close(fd)
        except OSError:
            pass
    _owned.clear()


os.register_at_fork(after_in_child=_forget_inherited_ownership)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if needed), as a mutex between processes."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file beside ``path``, flush it to disk, then rename it over ``path``."""
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(temporary, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


class Channel(filesystem.Channel):
    # --- messages -----------------------------------------------------------------------------------------

    def _put(self, queue, payload, **kwargs):
        """Put ``payload`` on ``queue`` whole: write, flush, then rename into place."""
        name = f"{time.monotonic_ns():020d}{next(_SEQUENCE) % 10**6:06d}_{uuid.uuid4()}.{queue}.msg"
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

    def _get(self, queue):
        """Take the oldest message of ``queue``: rename it into the claimed folder (one consumer wins), read it,
        delete it. The virtual transport keeps it in memory, unacknowledged, until the task is done."""
        wanted = f"{queue}.msg"
        claimed = self.transport_options["claimed_folder"]
        for name in sorted((n for n in os.listdir(self.data_folder_in) if n.partition(".")[2] == wanted),
                           key=_written_order):
            mine = os.path.join(claimed, name)
            try:
                os.rename(os.path.join(self.data_folder_in, name), mine)
            except FileNotFoundError:
                continue  # another consumer took it first
            except OSError as exc:
                raise ChannelError(f"Cannot claim a message of queue {queue!r}: {exc}") from exc
            try:
                with open(mine, "rb") as f:
                    payload = f.read()
                os.remove(mine)
            except OSError as exc:
                raise ChannelError(f"Cannot read a claimed message of queue {queue!r}: {exc}") from exc
            return loads(payload)
        raise Empty()

    # --- exchange tables --------------------------------------------------------------------------------------

    def get_table(self, exchange):
        return self._read_table(self._exchange_file(exchange))

    def _read_table(self, file: Path) -> list[Binding]:
        """The bindings in ``file`` ([] if there is none). A table that does not parse is read again a few times
        (a process running stock kombu may be writing it in place), then refused with the file's name."""
        for attempt in range(TABLE_READ_ATTEMPTS):
            try:
                data = file.read_bytes()
            except FileNotFoundError:
                return []
            except OSError as exc:
                raise ChannelError(f"Cannot open {file}") from exc
            try:
                return [Binding(*b) for b in loads(data)]
            except (ValueError, TypeError):
                if attempt + 1 < TABLE_READ_ATTEMPTS:
                    time.sleep(TABLE_READ_PAUSE)
        raise ChannelError(f"the exchange table {file} is not valid JSON; delete it and restart every process "
                           "(each declares its bindings again as it starts)")

    def _change_table(self, exchange: str, change: Callable[[list[Binding]], list[Binding]]) -> None:
        """Apply ``change`` to ``exchange``'s table under the table's lock; write the result by rename."""
        file = self._exchange_file(exchange)
        self.control_folder.mkdir(exist_ok=True)
        try:
            with _locked(file.with_name(file.name + ".lock")):
                table = self._read_table(file)
                changed = change(list(table))
                if changed != table:
                    _write_atomically(file, str_to_bytes(dumps(changed)))
        except OSError as exc:
            raise ChannelError(f"Cannot update {file}: {exc}") from exc

    def queue_bind(self, queue, exchange=None, routing_key="", arguments=None, **kwargs):
        """Write the binding to the exchange's table first, then let kombu record it.

        kombu records a binding in the state all channels of the process share before it writes the table,
        and skips a binding already recorded: a second thread declaring the same queue meanwhile went on to
        publish, read a table without the binding and dropped its message (no dead-letter queue here). Here
        the table is written (or found to hold the binding, under its lock) before the record exists."""
        exchange = exchange or "amq.direct"
        if exchange not in self.state.exchanges:
            raise KeyError(exchange)  # not declared in this process: refused as stock refuses it, before any write
        self._queue_bind(exchange, *self.typeof(exchange).prepare_bind(queue, exchange, routing_key, arguments))
        super().queue_bind(queue, exchange, routing_key, arguments, **kwargs)

    def queue_unbind(self, queue, exchange=None, routing_key="", arguments=None, **kwargs):
        """Remove the binding from the exchange's table, then from kombu's record. (Stock kombu removes it from
        a copy of the table read from the file, so the file kept it and messages kept arriving.)"""
        exchange = exchange or "amq.direct"
        routing_key, pattern, queue_name = self.typeof(exchange).prepare_bind(queue, exchange, routing_key, arguments)
        binding = Binding(routing_key or "", pattern or "", queue_name or "")
        self._change_table(exchange, lambda table: [b for b in table if b != binding])
        self.state.binding_delete(queue, exchange, routing_key)

    def _queue_bind(self, exchange, routing_key, pattern, queue):
        binding = Binding(routing_key or "", pattern or "", queue or "")
        self._change_table(exchange, lambda table: table if binding in table else [binding, *table])

    def _delete(self, queue, exchange, routing_key, pattern, *args, **kwargs):
        self._purge(queue)
        binding = Binding(routing_key or "", pattern or "", queue or "")
        self._change_table(exchange, lambda table: [b for b in table if b != binding])

    # --- auto-delete queues -----------------------------------------------------------------------------------

    @property
    def _owners_folder(self) -> Path:
        folder = self.control_folder / "owners"
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def _new_queue(self, queue, auto_delete=False, exclusive=False, **kwargs):
        if (auto_delete or exclusive) and (self._owners_folder, queue) not in _owned:
            with _locked(self._owners_folder / ".sweep"):
                self._sweep_orphans()
                self._own(queue)

    def _own(self, queue: str) -> None:
        """Record that this process uses ``queue``: an owner file, locked for as long as the process lives.
        Called under the sweep lock, so no sweep sees the file before it is locked."""
        path = self._owners_folder / f"{uuid.uuid4().hex}.owner"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, queue.encode())
        _owned[(self._owners_folder, queue)] = (path, fd)

    def _sweep_orphans(self) -> None:
        """Remove every auto-delete queue whose owners have all stopped: its bindings and its messages.

        A publisher that read the table just before the queue was unbound may still be writing a message to
        it: a removed queue's owner files become tombstones (``.removed``), and each later sweep deletes the
        queue's messages again, until the tombstone is ``TOMBSTONE_SECONDS`` old."""
        live: set[str] = set()
        dead: dict[str, list[Path]] = {}
        for path in self._owners_folder.glob("*.owner"):
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                queue = os.read(fd, 4096).decode()
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                    live.add(queue)  # its owner holds the lock: alive
                    continue
                dead.setdefault(queue, []).append(path)
            finally:
                os.close(fd)
        known = live | set(dead)
        for tombstone in self._owners_folder.glob("*.removed"):
            try:
                queue, age = tombstone.read_text(), time.time() - tombstone.stat().st_mtime
            except FileNotFoundError:
                continue
            known.add(queue)
            if queue not in live:
                self._purge(queue)
            if age > TOMBSTONE_SECONDS:
                tombstone.unlink(missing_ok=True)
        for queue, paths in dead.items():
            if queue in live:  # declared again by a live process (a worker restarted under its name)
                for path in paths:
                    path.unlink(missing_ok=True)
                continue
            self._remove_queue(queue)
            logger.info("embedded broker: removed queue %s, whose owners have stopped", queue)
            for path in paths:
                os.utime(path)
                path.rename(path.with_suffix(".removed"))
        self._sweep_unrecorded(known)

    def _sweep_unrecorded(self, known: set[str]) -> None:
        """Remove the queues bound to Celery's event and remote-control exchanges that have no owner record at
        all: Celery binds only auto-delete queues there, and every one declared since owner records exist has
        one (made before it is bound), so these were left by processes from before, each still filling."""
        for exchange in CELERY_TRANSIENT_EXCHANGES:
            try:
                table = self._read_table(self.control_folder / f"{exchange}.exchange")
            except ChannelError as exc:
                logger.warning("embedded broker: %s", exc)
                continue
            for queue in sorted({b.queue for b in table} - known):
                self._remove_queue(queue)
                logger.info("embedded broker: removed queue %s, left by a process from before owner records", queue)

    def _remove_queue(self, queue: str) -> None:
        """Unbind ``queue`` from every exchange and delete its messages."""
        for file in self.control_folder.glob("*.exchange"):
            exchange = file.name[: -len(".exchange")]
            try:
                self._change_table(exchange, lambda table: [b for b in table if b.queue != queue])
            except ChannelError as exc:
                logger.warning("embedded broker: %s", exc)
        self._purge(queue)

    def queue_delete(self, queue, if_unused=False, if_empty=False, **kwargs):
        super().queue_delete(queue, if_unused=if_unused, if_empty=if_empty, **kwargs)
        owned = _owned.pop((self._owners_folder, queue), None)
        if owned is not None:
            path, fd = owned
            path.unlink(missing_ok=True)
            os.close(fd)


class Transport(filesystem.Transport):
    Channel = Channel
    global_state = filesystem.virtual.BrokerState()
    driver_type = driver_name = SCHEME

    @property
    def default_connection_params(self):
        # No hostname: kombu otherwise warns "No hostname was supplied. Reverting to default 'localhost'"
        # for every connection, and a folder has no host.
        return {"port": self.default_port}

    def drain_events(self, connection, timeout=None):
        """The virtual transport's poll loop, which also returns (as a timeout) once ``stop_polling`` was called."""
        start = monotonic()
        polling_interval = self.polling_interval
        if timeout and polling_interval and polling_interval > timeout:
            polling_interval = timeout
        while True:
            try:
                self.cycle.get(self._deliver, timeout=timeout)
                return
            except Empty:
                if timeout is not None and (_stopping or monotonic() - start >= timeout):
                    raise socket.timeout()
                if polling_interval is not None:
                    time.sleep(polling_interval)


def folders(broker_dir: Path) -> dict[str, str]:
    """The transport options naming the embedded broker's folders under ``broker_dir`` (created if missing)."""
    names = {"staging_folder": "staging", "data_folder_in": "queue", "data_folder_out": "queue",
             "control_folder": "control", "claimed_folder": "claimed"}
    for name in set(names.values()):
        (broker_dir / name).mkdir(parents=True, exist_ok=True)
    return {option: str(broker_dir / name) for option, name in names.items()}


TRANSPORT_ALIASES[SCHEME] = "waflow.embedded:Transport"
