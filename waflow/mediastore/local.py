"""The local media store: files under one directory (``WAFLOW_MEDIA_DIR``), by content key.

A key is the file's path relative to the directory (``ab/cd/abcd…``). Bytes are received in
``.tmp/`` inside the directory (the same filesystem, so the final rename is atomic), fsync'd,
renamed into place and the directory fsync'd: once ``commit`` returns, the file survives a
crash or a power cut. Files are created readable by their owner only (client content).
"""
from __future__ import annotations

import os
from contextlib import AbstractContextManager
from pathlib import Path

from waflow.mediastore.base import CHUNK, STALE_AFTER, Incoming, Reader, check_key, content_key, sweep_directory
from waflow.mediastore.base import temporary_file

TEMP_DIR = ".tmp"
# Bytes flushed to disk as they arrive, this many at a time (``Incoming.sync_every``).
SYNC_EVERY = 2 * 2**20


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalStore:
    """Media files in ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    def path(self, key: str) -> Path:
        return self.root / check_key(key)

    def receiving(self) -> AbstractContextManager[Incoming]:
        return temporary_file(self.root / TEMP_DIR, SYNC_EVERY)

    def commit(self, incoming: Incoming, sha256_hex: str) -> str:
        key = content_key(sha256_hex)
        final = self.root / key
        incoming.file.flush()
        os.fsync(incoming.file.fileno())
        incoming.file.close()
        if final.exists():
            # The same bytes are stored already (a key is a hash of its content): keep that file.
            incoming.path.unlink(missing_ok=True)
        else:
            self._make_directories(final.parent)
            os.replace(incoming.path, final)
            _fsync_directory(final.parent)
        incoming.committed = True
        return key

    def _make_directories(self, directory: Path) -> None:
        """Create ``directory`` and any missing parent under the root, each made durable in its parent."""
        missing = []
        while not directory.exists() and directory != self.root.parent:
            missing.append(directory)
            directory = directory.parent
        for new in reversed(missing):
            try:
                new.mkdir()
            except FileExistsError:
                pass  # another process made it meanwhile
            _fsync_directory(new.parent)

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def open(self, key: str) -> Reader:
        """The file under ``key``; FileNotFoundError if there is none."""
        file = open(self.path(key), "rb")
        size = os.fstat(file.fileno()).st_size

        def chunks():
            while True:
                chunk = file.read(CHUNK)
                if not chunk:
                    return
                yield chunk

        return Reader(chunks(), size, file.close)

    def delete(self, key: str) -> bool:
        path = self.path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        _fsync_directory(path.parent)
        return True

    def sweep(self, older_than: float = STALE_AFTER) -> int:
        return sweep_directory(self.root / TEMP_DIR, older_than)
