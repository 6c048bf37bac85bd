"""Prometheus metrics across processes: prometheus-client's multiprocess mode.

Every process of the service (the API, each worker and its prefork children)
writes its counters and histograms to its own files in one directory
(``IMAGESVC_METRICS_DIR``, default ``<data dir>/metrics``), and the API's
``GET /metrics`` adds them up. A file is named by host name and process id, so
containers that share the data volume (and reuse small pids) never share one.
``imagesvc up`` empties the directory before it starts anything: counters
then restart from zero, which Prometheus reads as a restart.
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

from prometheus_client import values
from prometheus_client.multiprocess import mark_process_dead

from imagesvc.settings import Settings

# prometheus-client reads this variable to find the directory, in every process.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


# '_' separates fields in file names. Read once: prometheus-client asks for the identity
# on every increment and observation (to notice a fork), a system call each time.
_HOST = socket.gethostname().replace("_", "-")


def _identity_of(pid: int) -> str:
    return f"{_HOST}-{pid}"


# This process's identity, made again in a forked child: prometheus-client asks for it on
# every increment and observation, several per request, and getpid is a system call.
_OWN_IDENTITY = [_identity_of(os.getpid())]
os.register_at_fork(after_in_child=lambda: _OWN_IDENTITY.__setitem__(0, _identity_of(os.getpid())))


def process_identity(pid: int | None = None) -> str:
    """A process's name in the directory: distinct among all live writers of it."""
    return _OWN_IDENTITY[0] if pid is None else _identity_of(pid)


def write_metrics_to_dir(settings: Settings, *, empty_first: bool = False) -> Path:
    """From now on, this process (and the ones it forks or starts) writes metrics to files."""
    directory = settings.resolved_metrics_dir.resolve()
    if empty_first:
        shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True, exist_ok=True)
    os.environ[MULTIPROC_ENV] = str(directory)
    values.ValueClass = values.MultiProcessValue(process_identity)  # type: ignore[no-untyped-call]
    return directory


def writes_to_dir(directory: Path) -> bool:
    """Whether this process's metrics are in ``directory``'s files (else in its memory)."""
    return os.environ.get(MULTIPROC_ENV) == str(directory.resolve())


def forget_exited_process(pid: int | None = None) -> None:
    """For a process that exits (this one by default): drop what counts only while it lives."""
    if MULTIPROC_ENV in os.environ:
        mark_process_dead(process_identity(pid))  # type: ignore[no-untyped-call]
