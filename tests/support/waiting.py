"""The one poller: fetch something until it is what the test waits for, or fail saying what.

Tests wait on behaviour (a job settles, an image moves), never on a duration;
the timeout only bounds a hang, and the failure shows the last thing seen.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(
    fetch: Callable[[], T],
    until: Callable[[T], bool],
    what: str,
    timeout: float = 60.0,
    interval: float = 0.05,
) -> T:
    """``fetch()`` again and again until ``until`` holds for it; return that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if until(value):
            return value
        assert time.monotonic() < deadline, f"{what} within {timeout}s; last seen: {value!r}"
        time.sleep(interval)


async def wait_for_async(
    fetch: Callable[[], Awaitable[T]],
    until: Callable[[T], bool],
    what: str,
    timeout: float = 60.0,
    interval: float = 0.05,
) -> T:
    """:func:`wait_for` for a coroutine ``fetch``, sleeping without blocking the loop."""
    deadline = time.monotonic() + timeout
    while True:
        value = await fetch()
        if until(value):
            return value
        assert time.monotonic() < deadline, f"{what} within {timeout}s; last seen: {value!r}"
        await asyncio.sleep(interval)
