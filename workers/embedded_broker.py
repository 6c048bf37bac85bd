"""The embedded broker: kombu's filesystem transport, made safe for several processes.

``imagesvc up`` runs the API, a worker and the scheduler as separate
processes with no broker server. kombu's filesystem transport almost fits;
two changes make it safe: a message file appears in the queue folder only
once it is fully written (write, fsync, rename), and a consumer claims a
message by renaming it into a folder on the same filesystem, so two workers
never read the same file and a reader never sees half a message.

A worker waits for messages by polling the folder; Celery's loop for a polling
transport checks for a shutdown only between waits of up to two seconds, and
waits once more on its way out. :func:`stop_waiting` (the worker calls it when
its warm shutdown starts) ends the waits at once, so an idle worker stops within
one polling interval and takes no new message once it is stopping.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from pathlib import Path
from queue import Empty
from typing import Any

from kombu.transport import TRANSPORT_ALIASES, filesystem
from kombu.utils.json import dumps, loads

SCHEME = "embedded"

# Set once this process's worker is shutting down: no more waiting for messages.
_stopping = threading.Event()


class Channel(filesystem.Channel):
    def _put(self, queue: Any, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]
        folder = Path(self.data_folder_out)
        name = f"{_sequence()}_{uuid.uuid4().hex}.{queue}.msg"
        staging = folder.parent / "staging"
        staging.mkdir(parents=True, exist_ok=True)
        temp = staging / name
        with open(temp, "wb") as stream:
            stream.write(dumps(payload).encode())  # type: ignore[no-untyped-call]
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp, folder / name)

    def _get(self, queue: Any, timeout: Any = None) -> Any:
        folder = Path(self.data_folder_in)
        claimed = folder.parent / "claimed"
        claimed.mkdir(parents=True, exist_ok=True)
        suffix = f".{queue}.msg"
        for name in sorted(os.listdir(folder)):
            if not name.endswith(suffix) or name.partition(".")[2] != suffix[1:]:
                continue
            mine = claimed / f"{os.getpid()}-{name}"
            try:
                os.rename(folder / name, mine)
            except FileNotFoundError:
                continue  # another consumer took it first
            payload = mine.read_bytes()
            with contextlib.suppress(FileNotFoundError):
                mine.unlink()
            return loads(payload)  # type: ignore[no-untyped-call]
        raise Empty()


class Transport(filesystem.Transport):
    Channel = Channel
    driver_type = SCHEME
    driver_name = SCHEME

    def drain_events(self, connection: Any, timeout: float | None = None) -> None:  # type: ignore[override]
        """kombu's polling wait for one message, ended at once by :func:`stop_waiting`."""
        assert self.cycle is not None
        started = time.monotonic()
        interval = min(self.polling_interval or 0.2, timeout or float("inf"))
        while not _stopping.is_set():
            try:
                self.cycle.get(self._deliver, timeout=timeout)  # type: ignore[no-untyped-call]
                return
            except Empty:
                if timeout is not None and time.monotonic() - started >= timeout:
                    break
                _stopping.wait(interval)
        raise TimeoutError()  # socket.timeout, what the loop expects


def stop_waiting() -> None:
    """The worker is shutting down: end its wait for messages now, and take no more."""
    _stopping.set()


def _sequence() -> str:
    # Nanoseconds since the epoch, zero-padded: file names sort in send order.
    return f"{time.time_ns():020d}"


def register() -> None:
    """Make ``embedded://`` a broker URL kombu understands."""
    TRANSPORT_ALIASES.setdefault(SCHEME, f"{__name__}:Transport")


def transport_options(broker_dir: Path, polling_interval: float) -> dict[str, Any]:
    queue_dir = broker_dir / "queue"
    for folder in (queue_dir, broker_dir / "control"):
        folder.mkdir(parents=True, exist_ok=True)
    return {
        "data_folder_in": str(queue_dir),
        "data_folder_out": str(queue_dir),
        "control_folder": str(broker_dir / "control"),
        "polling_interval": polling_interval,
    }
