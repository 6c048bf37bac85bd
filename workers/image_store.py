"""Image stores behind one interface: a directory (``file://``) or an S3 bucket (``s3://``).

A run of a capture stages its copy in the store's local staging directory, then
``publish``es it under a name of its own (``<image>.<attempt>.<format>``), so two
runs never write the same object. A directory store renames the staged file into
place and fsyncs the directory; an S3 store uploads it in parts (multipart
upload) and aborts the upload if any part fails, so nothing half-written is ever
visible under a name. Unfinished uploads left by a crash are aborted by the
orphan sweep (:meth:`ImageStore.remove_stale_uploads`).

The S3 endpoint and credentials are read the way boto3 reads them
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

log = logging.getLogger(__name__)

PART_SIZE = 64 * 1024 * 1024  # S3 parts are 5 MiB to 5 GiB; 64 MiB keeps memory bounded
UPLOAD_TRIES = 3

Progress = Callable[[int], None]


class StoreError(Exception):
    """The store refused or lost an operation; the job may retry."""


@dataclass(frozen=True)
class StoredObject:
    """One object (or file) in the store: its name and when it was last written."""

    name: str
    modified: float


class ImageStore(Protocol):
    """Where image files live once captured."""

    url: str

    def staging_dir(self) -> Path:
        """A local directory where a run writes its copy before publishing it."""

    def publish(self, staged: Path, name: str, on_progress: Progress | None = None) -> None:
        """Make the written, fsynced ``staged`` file the object ``name``; durable on return."""

    def remove(self, name: str) -> None:
        """Remove object ``name``; no error if it is already gone."""

    def listing(self) -> list[StoredObject]:
        """Every published object."""

    def reader(self, name: str) -> AbstractContextManager[BinaryIO]:
        """The object's bytes, as a file-like object read from the start."""

    def remove_stale_uploads(self, older_than: float) -> list[str]:
        """Abort uploads started more than ``older_than`` seconds ago and never finished."""


def open_store(url: str, data_dir: Path) -> ImageStore:
    """The store ``url`` names: ``file:///path`` or ``s3://bucket/prefix``; empty is the default."""
    if not url:
        return FileImageStore(data_dir / "images")
    parts = urlsplit(url)
    if parts.scheme == "file":
        return FileImageStore(Path(parts.path))
    if parts.scheme == "s3" and parts.netloc:
        return S3ImageStore(parts.netloc, parts.path.strip("/"), data_dir / "staging")
    raise ValueError(f"IMAGESVC_STORE_URL must be file:///path or s3://bucket/prefix, not {url!r}")


class FileImageStore:
    """Images as files in one directory (local, or a filesystem every host mounts)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = root.resolve().as_uri()

    def staging_dir(self) -> Path:
        # Inside the store, on the same filesystem, so publishing is a rename.
        return self.root / ".partial"

    def publish(self, staged: Path, name: str, on_progress: Progress | None = None) -> None:
        target = self.root / name
        os.replace(staged, target)
        _fsync_directory(self.root)
        if on_progress is not None:
            on_progress(target.stat().st_size)

    def remove(self, name: str) -> None:
        (self.root / name).unlink(missing_ok=True)

    def listing(self) -> list[StoredObject]:
        return [
            StoredObject(path.name, path.stat().st_mtime)
            for path in self.root.iterdir()
            if path.is_file()
        ]

    @contextmanager
    def reader(self, name: str) -> Iterator[BinaryIO]:
        with open(self.root / name, "rb") as stream:
            yield stream

    def remove_stale_uploads(self, older_than: float) -> list[str]:
        """Staged copies no run finished (a crash between copy and publish)."""
        staging, cutoff = self.staging_dir(), time.time() - older_than
        if not staging.is_dir():
            return []
        stale = [p for p in staging.iterdir() if p.is_file() and p.stat().st_mtime < cutoff]
        for path in stale:
            path.unlink(missing_ok=True)
        return [f".partial/{path.name}" for path in stale]


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class S3ImageStore:
    """Images as objects in an S3-compatible bucket, under a key prefix."""

    def __init__(self, bucket: str, prefix: str, staging: Path) -> None:
        self.bucket = bucket
        self.prefix = f"{prefix}/" if prefix else ""
        self.url = f"s3://{bucket}/{prefix}"
        self._staging = staging
        self._client: S3Client | None = None

    @property
    def client(self) -> S3Client:
        if self._client is None:  # built on first use: after a worker's fork
            import boto3
            from botocore.config import Config

            config = Config(retries={"mode": "standard", "max_attempts": 5}, connect_timeout=5)
            self._client = boto3.client("s3", config=config)
        return self._client

    def staging_dir(self) -> Path:
        return self._staging

    def publish(self, staged: Path, name: str, on_progress: Progress | None = None) -> None:
        """Upload ``staged`` as ``name`` in parts, retrying a failed upload from the start."""
        for attempt in range(1, UPLOAD_TRIES + 1):
            try:
                self._upload(staged, self.prefix + name, on_progress)
                break
            except Exception as exc:
                if attempt == UPLOAD_TRIES:
                    raise StoreError(f"upload of {name} to {self.url} failed: {exc}") from exc
                log.warning("upload of %s failed (%s); starting it again", name, exc)
                time.sleep(attempt)
        staged.unlink(missing_ok=True)

    def _upload(self, staged: Path, key: str, on_progress: Progress | None) -> None:
        upload_id = self.client.create_multipart_upload(Bucket=self.bucket, Key=key)["UploadId"]
        try:
            parts = self._send_parts(staged, key, upload_id, on_progress)
            self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        except BaseException:
            self._abort(key, upload_id)
            raise

    def _send_parts(
        self, staged: Path, key: str, upload_id: str, on_progress: Progress | None
    ) -> list[CompletedPartTypeDef]:
        parts: list[CompletedPartTypeDef] = []
        sent = 0
        with open(staged, "rb") as stream:
            while chunk := stream.read(PART_SIZE):
                number = len(parts) + 1
                reply = self.client.upload_part(
                    Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=chunk
                )
                parts.append({"ETag": reply["ETag"], "PartNumber": number})
                sent += len(chunk)
                if on_progress is not None:
                    on_progress(sent)
        if not parts:  # an empty file is still one (empty) part
            reply = self.client.upload_part(
                Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=1, Body=b""
            )
            parts.append({"ETag": reply["ETag"], "PartNumber": 1})
        return parts

    def _abort(self, key: str, upload_id: str) -> None:
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except Exception as exc:  # the server may be gone; the sweep aborts it later
            log.warning("could not abort the upload of %s: %s", key, exc)

    def remove(self, name: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.prefix + name)

    def listing(self) -> list[StoredObject]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix
        )
        return [
            StoredObject(item["Key"][len(self.prefix) :], item["LastModified"].timestamp())
            for page in pages
            for item in page.get("Contents", [])
        ]

    @contextmanager
    def reader(self, name: str) -> Iterator[BinaryIO]:
        body = self.client.get_object(Bucket=self.bucket, Key=self.prefix + name)["Body"]
        try:
            yield body  # type: ignore[misc]
        finally:
            body.close()

    def remove_stale_uploads(self, older_than: float) -> list[str]:
        cutoff = datetime.now(UTC).timestamp() - older_than
        reply = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=self.prefix)
        stale = [u for u in reply.get("Uploads", []) if u["Initiated"].timestamp() < cutoff]
        for upload in stale:
            self._abort(upload["Key"], upload["UploadId"])
        return [upload["Key"][len(self.prefix) :] for upload in stale]
