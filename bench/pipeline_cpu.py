"""CPU time spent by processes while a run lasts: a figure the machine's load does not skew.

Wall-clock rates on a shared machine follow everyone else's load; the CPU seconds
a side spends per job do not (much). Read from ``/proc/<pid>/stat`` (user + system
time) for a worker's process tree and, for imagesvc, the PostgreSQL backends
serving its database.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (a Celery worker and its pool processes)."""
    tree, index = [pid], 0
    while index < len(tree):
        children = Path(f"/proc/{tree[index]}/task/{tree[index]}/children")
        with contextlib.suppress(OSError):  # it exited meanwhile
            tree += [int(child) for child in children.read_text().split()]
        index += 1
    return tree


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    """User + system CPU seconds of each live process of ``pids``."""
    spent = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        spent[pid] = (int(fields[11]) + int(fields[12])) / TICKS_PER_S  # utime, stime
    return spent


class CpuMeter:
    """CPU seconds that the processes ``pids()`` names spent between start() and stop()."""

    def __init__(self, pids: Callable[[], list[int]]) -> None:
        self._pids = pids
        self._before: dict[int, float] = {}

    def start(self) -> None:
        self._before = cpu_seconds(self._pids())

    def stop(self) -> float:
        after = cpu_seconds(self._pids())
        return sum(seconds - self._before.get(pid, 0.0) for pid, seconds in after.items())
