"""Where media files are kept: a local directory, or S3-compatible object storage.

Files are content-addressed: a file's key is made of the hex SHA-256 of its bytes
(``ab/cd/abcd…``), so the same bytes twice are stored once, and a key, once written, never
changes meaning. Every store takes a file in three steps, so that nothing partial is ever
visible under a key:

1. ``receiving()``: a temporary file on local disk to write the bytes into (and hash them);
2. ``commit(incoming, sha256_hex)``: the bytes made durable under their key (the local store
   fsyncs the file, renames it into place and fsyncs the directory; object storage answers only
   once the upload is complete), or nothing if that key already holds them;
3. leaving ``receiving()`` without a commit deletes the temporary file.

Temporary files a crash left behind are deleted by ``sweep`` (each process sweeps once when it
first opens its store, and ``flask --app wsgi media purge-expired`` sweeps too).

``default_store()`` is this process's store, as configured (``WAFLOW_MEDIA_URL`` or
``WAFLOW_MEDIA_DIR``); it is made again in a forked child, never shared with its parent.

Modules: ``base`` (the interface, keys, the temporary file), ``local`` and ``s3`` (the stores).
"""
from __future__ import annotations

import os
import threading

from waflow.config import Settings, settings
from waflow.mediastore.base import CHUNK, Incoming, Reader, Store, content_key, stream_into_store
from waflow.mediastore.local import LocalStore

__all__ = ["CHUNK", "Incoming", "LocalStore", "Reader", "Store", "content_key", "default_store", "open_store",
           "stream_into_store"]

_lock = threading.Lock()
_stores: dict[int, Store] = {}


def open_store(config: Settings) -> Store:
    """The store ``config`` names: object storage with ``media_url``, else the local directory."""
    if config.media_url:
        from waflow.mediastore.s3 import S3Store  # boto3 loads only where object storage is used

        return S3Store.from_settings(config)
    return LocalStore(config.media_dir)


def default_store() -> Store:
    """This process's store, opened (and swept of stale temporary files) on first use."""
    pid = os.getpid()
    store = _stores.get(pid)
    if store is None:
        with _lock:
            store = _stores.get(pid)
            if store is None:
                store = open_store(settings)
                store.sweep()
                _stores.clear()  # a parent's store, inherited by a forked child: never used here
                _stores[pid] = store
    return store
