"""The media stage: consumes ``wa.media.processing``; downloads, verifies and stores every attachment.

- ``task``: ``record_media`` (wire name ``waflow.media.record_media``): the row recorded ``pending``,
  one attempt at the file, the outcome on the row (``stored`` or ``failed``).
- ``fetch``: one attempt at one file against Meta (fresh URL, streamed download, SHA-256, type).
- ``rows``: the media table's statements.
- ``serve``: reading a stored file back, for the dashboard to put behind its login.
- ``outgoing``: a file a person sends, put in the store for the sender to upload.
- ``upkeep``: queueing rows left pending, and deleting files past their retention.

The files themselves live in the media store (``waflow.mediastore``); Meta's media endpoints are
``waflow.whatsapp_media``.
"""
from waflow.media.task import record_media

__all__ = ["record_media"]
