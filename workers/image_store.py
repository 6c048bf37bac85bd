"""Image stores behind one interface: a directory (``file://``) or an S3 bucket (``s3://``).

A run of a capture stages its copy in the store's local staging directory, then
``publish``es it under a name of its own (``<image>.<attempt>.<format>``), so two
runs never write the same object. A directory store renames the staged file into
place and fsyncs the directory; an S3 store uploads it in parts (multipart
upload) and aborts the upload if any part fails, so nothing half-written is ever
visible under a name. Unfinished uploads left by a crash are aborted by the
orphan sweep (:meth:`ImageStore.remove_stale_uploads`), with the staged copies no run
finished.

The staging directory holds a run's staged copy ``<image>.<attempt>.<format>`` and,
under ``.partial/``, the copy being written (``<job>.<attempt>.part``, see
:func:`workers.disk.store_disk`): the first dot-separated part of every name is the image
or job it belongs to, so the sweep can leave alone the files of unsettled copies.

The S3 endpoint and credentials are read the way boto3 reads them
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Container, Iterator
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
    # True when publishing sends the bytes elsewhere (S3): captures then store a compact
    # format, and the job reports the upload as its own phase.
    uploads: bool

    def staging_dir(self) -> Path:
        """A local directory where a run writes its copy before publishing it."""

    def publish(self, staged: Path, name: str, on_progress: Progress | None = None) -> None:
        """Make the written, fsynced ``staged`` file the object ``name``; durable on return."""

    def remove(self, name: str) -> None:
        """Remove object ``name``; no error if it is already gone."""

    def listing(self) -> Iterator[StoredObject]:
        """Every published object, a page at a time."""

    def reader(self, name: str) -> AbstractContextManager[BinaryIO]:
        """The object's bytes, as a file-like object read from the start."""

    def local_path(self, name: str) -> Path | None:
        """The object as a local file, when it is one (then holes can be skipped)."""

    def remove_stale_uploads(
        self, older_than: float, busy: Container[str] = frozenset()
    ) -> list[str]:
        """Abort uploads started more than ``older_than`` seconds ago and never finished,
        and remove staged copies as old; never those of the images or jobs in ``busy``."""


def owner_of(name: str) -> str:
    """The image (``<image>.<attempt>.<format>``) or job (``<job>.<attempt>.part``) of a name."""
    return name.rsplit("/", 1)[-1].split(".", 1)[0]


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

    uploads = False

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

    def listing(self) -> Iterator[StoredObject]:
        with os.scandir(self.root) as entries:
            for entry in entries:
                try:
                    if entry.is_file(follow_symlinks=False):
                        yield StoredObject(entry.name, entry.stat().st_mtime)
                except FileNotFoundError:  # removed while listed
                    continue

    @contextmanager
    def reader(self, name: str) -> Iterator[BinaryIO]:
        with open(self.root / name, "rb") as stream:
            yield stream

    def local_path(self, name: str) -> Path:
        return self.root / name

    def remove_stale_uploads(
        self, older_than: float, busy: Container[str] = frozenset()
    ) -> list[str]:
        """Staged copies no run finished (a crash between copy and publish)."""
        stale = remove_stale_staged(self.staging_dir(), time.time() - older_than, busy)
        return [str(path.relative_to(self.root)) for path in stale]


def remove_stale_staged(staging: Path, cutoff: float, busy: Container[str]) -> list[Path]:
    """Remove the staged and partial copies last written before ``cutoff`` (a crashed run's),
    but those of the images and jobs in ``busy``; the paths removed."""
    removed = []
    for directory in (staging, staging / ".partial"):
        if not directory.is_dir():
            continue
        for path in directory.iterdir():
            if owner_of(path.name) in busy or not path.is_file():
                continue
            if _unlink_if_older(path, cutoff):
                removed.append(path)
    return removed


def _unlink_if_older(path: Path, cutoff: float) -> bool:
    try:
        if path.stat().st_mtime >= cutoff:
            return False
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class S3ImageStore:
    """Images as objects in an S3-compatible bucket, under a key prefix."""

    uploads = True

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
            # A session of its own: boto3's default one keeps the first credentials it read.
            self._client = boto3.session.Session().client("s3", config=config)
        return self._client

    def staging_dir(self) -> Path:
        return self._staging

    def publish(self, staged: Path, name: str, on_progress: Progress | None = None) -> None:
        """Upload ``staged`` as ``name`` in parts, retrying a failed upload from the start."""
        from botocore.exceptions import BotoCoreError, ClientError

        for attempt in range(1, UPLOAD_TRIES + 1):
            try:
                self._upload(staged, self.prefix + name, on_progress)
                break
            except (BotoCoreError, ClientError) as exc:  # not the caller's own (Superseded)
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

    def listing(self) -> Iterator[StoredObject]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix
        )
        for page in pages:
            for item in page.get("Contents", []):
                name = item["Key"][len(self.prefix) :]
                yield StoredObject(name, item["LastModified"].timestamp())

    @contextmanager
    def reader(self, name: str) -> Iterator[BinaryIO]:
        body = self.client.get_object(Bucket=self.bucket, Key=self.prefix + name)["Body"]
        try:
            yield body  # type: ignore[misc]
        finally:
            body.close()

    def local_path(self, name: str) -> None:
        return None

    def remove_stale_uploads(
        self, older_than: float, busy: Container[str] = frozenset()
    ) -> list[str]:
        """Unfinished multipart uploads, and this host's staged copies, as old and not busy."""
        cutoff = datetime.now(UTC).timestamp() - older_than
        pages = self.client.get_paginator("list_multipart_uploads").paginate(
            Bucket=self.bucket, Prefix=self.prefix
        )
        stale = [
            upload
            for page in pages
            for upload in page.get("Uploads", [])
            if upload["Initiated"].timestamp() < cutoff and owner_of(upload["Key"]) not in busy
        ]
        for upload in stale:
            self._abort(upload["Key"], upload["UploadId"])
        staged = remove_stale_staged(self._staging, cutoff, busy)
        return [upload["Key"][len(self.prefix) :] for upload in stale] + [
            f"staging/{path.relative_to(self._staging)}" for path in staged
        ]
