"""Guessing secrets is slow and bounded: failed client logins are counted and throttled.

Failures are counted per api_key and per client address in fixed windows of
``IMAGESVC_THROTTLE_WINDOW`` seconds; once either reaches
``IMAGESVC_THROTTLE_FAILURES`` the login is refused with 429 before any
secret is hashed. The counts live in Redis when the broker is Redis, so that
every API process shares them, and in the process otherwise (the embedded
default runs one API process).

Secrets are checked with scrypt in a small executor of their own, so that a
flood of logins cannot take the threads every database call needs; at most
``IMAGESVC_HASH_QUEUE`` checks wait, and at most ``IMAGESVC_HASH_PER_ADDRESS``
from one client address; more are refused with 429.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from models.accounts import verify_secret
from models.errors import QuotaExceeded

log = logging.getLogger(__name__)

# The secret-check threads' nice value: the lowest priority an unprivileged process can set.
HASH_NICENESS = 19


class Throttled(QuotaExceeded):
    """Too many attempts: retry after the time ``Retry-After`` says."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = max(1, retry_after)


class FailureCounter(Protocol):
    async def wait_seconds(self, keys: Sequence[str]) -> int:
        """Seconds until none of ``keys`` is over its limit; 0 when none is."""

    async def record(self, keys: Sequence[str]) -> None:
        """Count one failure against each of ``keys``."""

    async def close(self) -> None: ...


class MemoryFailureCounter:
    """Fixed-window counts in this process."""

    def __init__(self, limit: int, window: float) -> None:
        self._limit, self._window = limit, window
        self._counts: dict[str, tuple[float, int]] = {}

    async def wait_seconds(self, keys: Sequence[str]) -> int:
        now = time.monotonic()
        waits = [
            started + self._window - now
            for started, count in (self._counts.get(key, (now, 0)) for key in keys)
            if count >= self._limit and started + self._window > now
        ]
        return math.ceil(max(waits, default=0))

    async def record(self, keys: Sequence[str]) -> None:
        now = time.monotonic()
        if len(self._counts) > 100_000:  # many addresses: forget the expired windows
            self._counts = {k: v for k, v in self._counts.items() if v[0] + self._window > now}
        for key in keys:
            started, count = self._counts.get(key, (now, 0))
            if started + self._window <= now:
                started, count = now, 0
            self._counts[key] = (started, count + 1)

    async def close(self) -> None:
        self._counts.clear()


class RedisFailureCounter:
    """Fixed-window counts in Redis, shared by every API process of the deployment.

    If Redis cannot be reached, logins are not throttled (and a warning is
    logged): an outage of the counter must not lock every client out.
    """

    def __init__(self, url: str, limit: int, window: float) -> None:
        import redis.asyncio

        self._redis = redis.asyncio.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        self._limit, self._window = limit, max(1, math.ceil(window))

    async def wait_seconds(self, keys: Sequence[str]) -> int:
        import redis

        try:
            counts = await self._redis.mget(list(keys))
            over = [
                key for key, count in zip(keys, counts, strict=True) if _count(count) >= self._limit
            ]
            ttls = [await self._redis.ttl(key) for key in over]
        except redis.RedisError as exc:
            log.warning("login throttle unavailable, not throttling: %s", exc)
            return 0
        return max([ttl for ttl in ttls if ttl > 0], default=1 if over else 0)

    async def record(self, keys: Sequence[str]) -> None:
        import redis

        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.set(key, 0, ex=self._window, nx=True)
                    pipe.incr(key)
                await pipe.execute()
        except redis.RedisError as exc:
            log.warning("login throttle unavailable, failure not counted: %s", exc)

    async def close(self) -> None:
        await self._redis.aclose()


def _lower_priority() -> None:
    """Let the event loop and the database threads run first when the CPU is short:
    scrypt is meant to be slow, the API's other requests are not (Linux: per-thread nice)."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), HASH_NICENESS)


def _count(value: bytes | str | None) -> int:
    return int(value) if value else 0


class LoginGuard:
    """Checks client secrets off the database threads, and throttles failed logins."""

    def __init__(
        self, counter: FailureCounter, prefix: str, workers: int, queue: int, per_address: int
    ) -> None:
        self._counter, self._prefix = counter, prefix
        self._pool = ThreadPoolExecutor(
            workers, thread_name_prefix="secret-check", initializer=_lower_priority
        )
        self._queue, self._waiting = queue, 0
        self._per_address, self._checking = per_address, Counter[str]()

    def keys(self, api_key: str, address: str) -> list[str]:
        keys = [f"{self._prefix}:login-failures:address:{address}"]
        if api_key:
            keys.append(f"{self._prefix}:login-failures:api-key:{api_key}")
        return keys

    async def refuse_if_throttled(self, keys: Sequence[str]) -> None:
        wait = await self._counter.wait_seconds(keys)
        if wait > 0:
            raise Throttled(
                f"too many failed logins for this api_key or address; retry in {wait} s", wait
            )

    async def record_failure(self, keys: Sequence[str]) -> None:
        await self._counter.record(keys)

    async def verify(self, secret: str, stored_hash: str, address: str) -> bool:
        """scrypt in the guard's own executor; 429 when too many checks already wait,
        in all or from ``address``."""
        if self._waiting >= self._queue or self._checking[address] >= self._per_address:
            raise Throttled("too many logins in progress; retry shortly", 1)
        self._waiting += 1
        self._checking[address] += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._pool, verify_secret, secret, stored_hash)
        finally:
            self._waiting -= 1
            self._checking[address] -= 1
            if not self._checking[address]:
                del self._checking[address]

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        await self._counter.close()
