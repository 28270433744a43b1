"""The object-storage media store: S3 or any S3-compatible store (MinIO, R2, B2...), through boto3.

``WAFLOW_MEDIA_URL=s3://bucket/prefix`` names the bucket and the prefix keys go under;
``AWS_ENDPOINT_URL`` a store that is not AWS. boto3 computes and demands checksums that some
S3-compatible stores do not support since 1.36: both are set to ``when_required``.

Bytes are received into a temporary file on local disk (``WAFLOW_VAR_DIR/media-spool``), then
uploaded in parts of 8 MiB, one at a time (memory stays at one part); the upload is complete, so
durable, when ``commit`` returns. A key already present is not uploaded again. ``sweep`` deletes
stale spool files and aborts multipart uploads a crash left unfinished.
"""
from __future__ import annotations

import logging
import time
from contextlib import AbstractContextManager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from waflow.config import Settings
from waflow.mediastore.base import CHUNK, STALE_AFTER, Incoming, Reader, check_key, content_key, sweep_directory
from waflow.mediastore.base import temporary_file
from waflow.tasks import TransientError

logger = logging.getLogger(__name__)

PART_SIZE = 8 * 2**20
# One part at a time, in the calling thread: memory stays at one part whatever the file's size.
TRANSFER = TransferConfig(multipart_threshold=PART_SIZE, multipart_chunksize=PART_SIZE, use_threads=False)
_NOT_FOUND = ("404", "NoSuchKey", "NotFound")


def _is_not_found(exc: ClientError) -> bool:
    return str(exc.response.get("Error", {}).get("Code")) in _NOT_FOUND


class S3Store:
    """Media files in ``bucket`` under ``prefix``."""

    def __init__(self, client: Any, bucket: str, prefix: str, spool_dir: Path) -> None:
        self.client, self.bucket, self.prefix = client, bucket, prefix.strip("/")
        self.spool_dir = Path(spool_dir)

    @classmethod
    def from_settings(cls, config: Settings) -> "S3Store":
        url = urlsplit(config.media_url)
        client = boto3.session.Session().client(
            "s3", endpoint_url=config.s3_endpoint_url or None, region_name=config.s3_region,
            aws_access_key_id=config.s3_access_key_id or None,
            aws_secret_access_key=config.s3_secret_access_key or None,
            aws_session_token=config.s3_session_token or None,
            config=Config(request_checksum_calculation="when_required",
                          response_checksum_validation="when_required",
                          connect_timeout=5, read_timeout=60, retries={"mode": "standard", "max_attempts": 3},
                          s3={"addressing_style": "path" if config.s3_endpoint_url else "auto"}))
        return cls(client, url.netloc, url.path, config.var_dir / "media-spool")

    def __repr__(self) -> str:
        return f"S3Store({self.bucket!r}, {self.prefix!r})"

    def object_key(self, key: str) -> str:
        return f"{self.prefix}/{check_key(key)}" if self.prefix else check_key(key)

    def receiving(self) -> AbstractContextManager[Incoming]:
        return temporary_file(self.spool_dir)

    def commit(self, incoming: Incoming, sha256_hex: str) -> str:
        key = content_key(sha256_hex)
        incoming.file.close()
        try:
            if not self.exists(key):
                self.client.upload_file(str(incoming.path), self.bucket, self.object_key(key), Config=TRANSFER)
        except (BotoCoreError, ClientError) as exc:
            raise TransientError(f"object store upload: {_describe(exc)}") from None
        incoming.path.unlink(missing_ok=True)
        incoming.committed = True
        return key

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self.object_key(key))
        except ClientError as exc:
            if _is_not_found(exc):
                return False
            raise TransientError(f"object store: {_describe(exc)}") from None
        except BotoCoreError as exc:
            raise TransientError(f"object store: {_describe(exc)}") from None
        return True

    def open(self, key: str) -> Reader:
        """The object under ``key``, streamed; FileNotFoundError if there is none."""
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=self.object_key(key))
        except ClientError as exc:
            if _is_not_found(exc):
                raise FileNotFoundError(key) from None
            raise TransientError(f"object store: {_describe(exc)}") from None
        except BotoCoreError as exc:
            raise TransientError(f"object store: {_describe(exc)}") from None
        body = answer["Body"]
        return Reader(body.iter_chunks(CHUNK), int(answer["ContentLength"]), body.close)

    def delete(self, key: str) -> bool:
        existed = self.exists(key)
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.object_key(key))
        except (BotoCoreError, ClientError) as exc:
            raise TransientError(f"object store delete: {_describe(exc)}") from None
        return existed

    def sweep(self, older_than: float = STALE_AFTER) -> int:
        removed = sweep_directory(self.spool_dir, older_than)
        try:
            uploads = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=self.prefix).get("Uploads", [])
            cutoff = time.time() - older_than
            for upload in uploads:
                started = upload.get("Initiated")
                if isinstance(started, datetime) and started.astimezone(timezone.utc).timestamp() < cutoff:
                    self.client.abort_multipart_upload(Bucket=self.bucket, Key=upload["Key"],
                                                       UploadId=upload["UploadId"])
                    removed += 1
        except (BotoCoreError, ClientError) as exc:
            # Not every S3-compatible store lists uploads; spool files were swept all the same.
            logger.warning("media store: unfinished uploads not listed (%s)", _describe(exc))
        return removed


def _describe(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return f"{error.get('Code', '?')} (HTTP {exc.response.get('ResponseMetadata', {}).get('HTTPStatusCode', '?')})"
    return type(exc).__name__
