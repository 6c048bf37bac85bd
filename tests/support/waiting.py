"""The one poller: fetch something until it is what the test waits for, or fail saying what.

Tests wait on behaviour (a job settles, an image moves), never on a duration;
the timeout only bounds a hang, and the failure shows the last thing seen.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Patience:
    """What a test waits for, until when, and how often it looks."""

    what: str
    timeout: float
    interval: float
    deadline: float

    @classmethod
    def start(cls, what: str, timeout: float = 60.0, interval: float = 0.05) -> Patience:
        return cls(what, timeout, interval, time.monotonic() + timeout)

    def check(self, last_seen: object) -> None:
        """Fail, saying what was awaited and what was last seen, once past the deadline."""
        seen = f"last seen: {last_seen!r}"
        assert time.monotonic() < self.deadline, f"{self.what} within {self.timeout}s; {seen}"


def wait_for(
    fetch: Callable[[], T],
    until: Callable[[T], bool],
    what: str,
    timeout: float = 60.0,
    interval: float = 0.05,
) -> T:
    """``fetch()`` again and again until ``until`` holds for it; return that value."""
    patience = Patience.start(what, timeout, interval)
    while not until(value := fetch()):
        patience.check(value)
        time.sleep(interval)
    return value


async def wait_for_async(
    fetch: Callable[[], Awaitable[T]], until: Callable[[T], bool], what: str, **limits: float
) -> T:
    """:func:`wait_for` for a coroutine ``fetch``, sleeping without blocking the loop;
    ``limits`` are :func:`wait_for`'s ``timeout`` and ``interval``."""
    patience = Patience.start(what, **limits)
    while not until(value := await fetch()):
        patience.check(value)
        await asyncio.sleep(patience.interval)
    return value
