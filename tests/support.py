"""Test infrastructure: real databases, a real broker, a real worker process.

With no ``IMAGESVC_TEST_*`` variables the tests run on SQLite and the
embedded broker (the fresh-machine tier). With
``IMAGESVC_TEST_DATABASE_URL`` and ``IMAGESVC_TEST_REDIS_URL`` they run the
same tests on PostgreSQL and Redis. Under ``CI=true`` a configured service
that is unreachable fails the run; it never turns into a skip.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from imagesvc.settings import Settings

IN_CI = os.environ.get("CI", "").lower() == "true"
TEST_DATABASE_URL = os.environ.get("IMAGESVC_TEST_DATABASE_URL", "")
TEST_REDIS_URL = os.environ.get("IMAGESVC_TEST_REDIS_URL", "")


def require_qemu_img() -> str:
    """qemu-img's path; skip if it is missing locally, fail if missing in CI."""
    exe = shutil.which("qemu-img")
    if exe is None:
        if IN_CI:
            pytest.fail("qemu-img is required in CI (install qemu-utils)")
        pytest.skip("qemu-img is not installed")
    return exe


def qemu_img_info(path: Path, disk_format: str) -> dict[str, Any]:
    """What ``qemu-img info`` says of a stored file (qemu-img must be present)."""
    result = subprocess.run(
        [require_qemu_img(), "info", "--output=json", "-f", disk_format, str(path)],
        capture_output=True,
        check=True,
    )
    info: dict[str, Any] = json.loads(result.stdout)
    return info


@contextmanager
def scratch_database(data_dir: Path) -> Iterator[str]:
    """A new, empty database for one test session: SQLite, or a fresh PostgreSQL database."""
    if not TEST_DATABASE_URL:
        yield f"sqlite:///{data_dir / 'imagesvc.db'}"
        return
    server = make_url(TEST_DATABASE_URL)
    name = f"imagesvc_test_{secrets.token_hex(4)}"
    # No pool: a chaos test may restart the server while the database exists.
    admin = create_engine(server, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        pytest.fail(f"PostgreSQL at {server.render_as_string()} is unreachable: {exc}")
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def check_redis() -> None:
    if not TEST_REDIS_URL:
        return
    import redis

    try:
        redis.Redis.from_url(TEST_REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis at {TEST_REDIS_URL} is unreachable: {exc}")


def make_settings(data_dir: Path, database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "database_url": database_url,
        "broker_url": TEST_REDIS_URL,
        "queue": f"test-{secrets.token_hex(4)}",
        "zones": "ac1,ac2",
        "sweep_interval": 1.0,
        "dispatch_grace": 3.0,
        "broker_polling_interval": 0.05,
    }
    values.update(overrides)
    return Settings(**values)


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a child process build the same settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGESVC_")}
    for name, value in settings.model_dump().items():
        rendered = ",".join(value) if isinstance(value, tuple) else str(value)
        env[f"IMAGESVC_{name.upper()}"] = rendered
    return env


def run_imagesvc(settings: Settings, *argv: str) -> subprocess.CompletedProcess[str]:
    """One ``imagesvc`` command, as the operator runs it, against ``settings``."""
    return subprocess.run(
        [sys.executable, "-m", "imagesvc", *argv],
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


class ServiceProcess:
    """An ``imagesvc`` subcommand in a child process, its output kept for failures."""

    def __init__(self, settings: Settings, *argv: str) -> None:
        self.argv = argv
        self.output: list[str] = []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "imagesvc", *argv],
            env=settings_env(settings),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line)

    def wait_for_output(self, marker: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(marker in line for line in self.output):
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"{self.argv} never printed {marker!r}:\n{self.log()}")

    def log(self) -> str:
        return "".join(self.output[-200:])

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            raise AssertionError(f"{self.argv} did not stop on {sig}:\n{self.log()}") from None
        finally:
            self._reader.join(timeout=5)
            if self.process.stdout is not None:
                self.process.stdout.close()
