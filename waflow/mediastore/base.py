"""What every media store offers, the content key, and the temporary file bytes are received into."""
from __future__ import annotations

import hashlib
import os
import re
import tempfile
import time
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator, Protocol

# Read and write in chunks of this size: memory per transfer stays constant whatever the file's size.
CHUNK = 1 << 16
# A temporary file older than this was left by a process that died (downloads are bounded well below it).
STALE_AFTER = 2 * 3600.0
TEMP_SUFFIX = ".part"
_KEY = re.compile(r"^[0-9a-f]{2}/[0-9a-f]{2}/[0-9a-f]{64}$")


def content_key(sha256_hex: str) -> str:
    """The key of a file whose bytes have this hex SHA-256."""
    digest = sha256_hex.lower()
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise ValueError("a content key needs a hex SHA-256")
    return f"{digest[:2]}/{digest[2:4]}/{digest}"


def check_key(key: str) -> str:
    """``key`` if it is a content key (so it can never name a path outside the store), else ValueError."""
    if not _KEY.match(key):
        raise ValueError("not a media store key")
    return key


@dataclass
class Incoming:
    """A temporary file being written; ``commit`` moves it under its key.

    ``sync_every``: flush the bytes to disk each time this many have been written (0: only at the
    commit). A large file written whole and fsync'd at the end puts all its bytes in the disk's queue
    at once, and every database commit on the same disk (a WAL flush) then waits behind them: inbound
    messages took seconds to store while 450 MB were downloaded (docs/benchmarks.md, "Media"). Flushed
    as it comes, the queue holds a few MiB of it at a time."""

    path: Path
    file: BinaryIO
    sync_every: int = 0
    size: int = 0
    committed: bool = field(default=False)
    _unsynced: int = field(default=0, repr=False)

    def write(self, chunk: bytes) -> None:
        self.file.write(chunk)
        self.size += len(chunk)
        if self.sync_every:
            self._unsynced += len(chunk)
            if self._unsynced >= self.sync_every:
                self.file.flush()
                os.fdatasync(self.file.fileno())
                self._unsynced = 0


class Reader:
    """A stored file, read in chunks: iterate it once, and it closes itself at the end (or call close)."""

    def __init__(self, chunks: Iterator[bytes], size: int, close: Callable[[], None]) -> None:
        self.size = size
        self._chunks = chunks
        self._close: Callable[[], None] | None = close

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._chunks
        finally:
            self.close()

    def close(self) -> None:
        close, self._close = self._close, None
        if close is not None:
            close()


class Store(Protocol):
    """A content-addressed media store."""

    def receiving(self) -> AbstractContextManager[Incoming]: ...

    def commit(self, incoming: Incoming, sha256_hex: str) -> str: ...

    def exists(self, key: str) -> bool: ...

    def open(self, key: str) -> Reader: ...

    def delete(self, key: str) -> bool: ...

    def sweep(self, older_than: float = STALE_AFTER) -> int: ...


@contextmanager
def temporary_file(directory: Path, sync_every: int = 0) -> Iterator[Incoming]:
    """A new file in ``directory`` (created if missing), deleted on exit unless committed."""
    directory.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=directory, prefix="in-", suffix=TEMP_SUFFIX)
    incoming = Incoming(Path(name), os.fdopen(fd, "wb"), sync_every)
    try:
        yield incoming
    finally:
        if not incoming.file.closed:
            incoming.file.close()
        if not incoming.committed:
            incoming.path.unlink(missing_ok=True)


def sweep_directory(directory: Path, older_than: float) -> int:
    """Delete the temporary files in ``directory`` not written to for ``older_than`` seconds."""
    if not directory.is_dir():
        return 0
    cutoff, removed = time.time() - older_than, 0
    for path in directory.glob(f"*{TEMP_SUFFIX}"):
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
        except FileNotFoundError:
            pass  # another process swept it first
    return removed


def stream_into_store(store: Store, chunks: Iterable[bytes]) -> tuple[str, int, str]:
    """Write ``chunks`` into ``store`` under their content key; return (key, size, hex SHA-256)."""
    digest = hashlib.sha256()
    with store.receiving() as incoming:
        for chunk in chunks:
            digest.update(chunk)
            incoming.write(chunk)
        key = store.commit(incoming, digest.hexdigest())
    return key, incoming.size, digest.hexdigest()


def file_chunks(file: BinaryIO) -> Iterator[bytes]:
    """A binary file's bytes in CHUNK-sized pieces."""
    while True:
        chunk = file.read(CHUNK)
        if not chunk:
            return
        yield chunk
