"""``imagesvc`` as the operator runs it: one-shot commands and long-running services."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from imagesvc.settings import Settings


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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

    def kill(self) -> None:
        """SIGKILL the process and its children (a prefork worker's pool too)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        self.stop()


@contextmanager
def running(settings: Settings, ready: str, *argv: str) -> Iterator[ServiceProcess]:
    """``imagesvc *argv`` once it has printed ``ready``; stopped (SIGTERM) on exit."""
    process = ServiceProcess(settings, *argv)
    try:
        process.wait_for_output(ready)
        yield process
    finally:
        process.stop()
