"""The API's pools of asyncpg connections (models/reads.py, models/writes.py).

asyncpg's own pool wraps each checked-out connection in a proxy (every call
through it goes through one more function) and gives each connection back in a
task of its own (``asyncio.shield``): about 30 µs of CPU per checkout, a
twentieth of a listing's. This pool does what the API's units need and no more:

- at most ``max_size`` connections checked out at once (a semaphore); the rest
  of the callers wait their turn, first come first served;
- connections opened when first needed (the API starts, and answers 503, while
  PostgreSQL is down), then kept (the operator budgets for the pool in full,
  docs/operations.md), the last one given back first;
- a connection that comes back closed, inside a transaction, or from a unit
  that was cancelled (a statement may be under way) is terminated, not reused;
- :meth:`expire_connections` (after a lost connection) drops the idle ones at
  once, and each checked-out one when it comes back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

import asyncpg

log = logging.getLogger(__name__)


class ConnectionPool:
    """Up to ``max_size`` asyncpg connections to ``dsn``; :meth:`acquire` checks one out."""

    def __init__(
        self,
        dsn: str,
        max_size: int,
        *,
        connect_timeout: float,
        server_settings: dict[str, str] | None = None,
        init: Callable[[asyncpg.Connection], Awaitable[None]] | None = None,
        record_class: type[asyncpg.Record] = asyncpg.Record,
    ) -> None:
        if max_size < 1:
            raise ValueError("a pool holds at least one connection")
        self._connect_options: dict[str, Any] = {
            "dsn": dsn,
            "timeout": connect_timeout,
            "server_settings": server_settings or {},
            "record_class": record_class,
        }
        self._init = init
        self._free = asyncio.Semaphore(max_size)
        self._idle: list[asyncpg.Connection] = []
        # Connections opened before the last expire_connections() are closed when back.
        self._expired: set[asyncpg.Connection] = set()
        self._out: set[asyncpg.Connection] = set()
        self._closed = False

    def acquire(self) -> Checkout:
        """``async with pool.acquire() as connection``: a connection for the block."""
        return Checkout(self)

    def expire_connections(self) -> None:
        """Drop every connection opened so far: the idle ones now, the checked-out ones
        when they come back. Their server may be gone, so they are terminated, not
        closed: a unit that lost its connection waits for no goodbye before its retry."""
        self._expired |= self._out
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.terminate()

    async def close(self) -> None:
        """Close the idle connections; those still checked out close when they come back."""
        self._closed = True
        idle, self._idle = self._idle, []
        for connection in idle:
            try:
                await asyncio.wait_for(connection.close(), timeout=1.0)
            except Exception as error:  # a server that is gone: nothing to say goodbye to
                log.debug("closing an idle connection: %s", error)
                connection.terminate()

    async def _take(self) -> asyncpg.Connection:
        await self._free.acquire()
        try:
            if self._closed:
                raise asyncpg.InterfaceError("the connection pool is closed")
            connection = self._idle.pop() if self._idle else await self._connect()
        except BaseException:
            self._free.release()
            raise
        self._out.add(connection)
        return connection

    async def _connect(self) -> asyncpg.Connection:
        connection = await asyncpg.connect(**self._connect_options)
        if self._init is None:
            return connection
        try:
            await self._init(connection)
        except BaseException:
            connection.terminate()
            raise
        return connection

    def _give_back(self, connection: asyncpg.Connection, *, interrupted: bool) -> None:
        self._out.discard(connection)
        try:
            if self._reusable(connection, interrupted):
                self._idle.append(connection)
            else:
                self._expired.discard(connection)
                connection.terminate()
        finally:
            self._free.release()

    def _reusable(self, connection: asyncpg.Connection, interrupted: bool) -> bool:
        return not (
            interrupted
            or self._closed
            or connection in self._expired
            or connection.is_closed()
            or connection.is_in_transaction()
        )


class Checkout:
    """One connection checked out of a :class:`ConnectionPool` for an ``async with`` block."""

    __slots__ = ("_connection", "_pool")
    _connection: asyncpg.Connection  # set on entering the block

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool

    async def __aenter__(self) -> asyncpg.Connection:
        self._connection = await self._pool._take()
        return self._connection

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        # Cancelled (or stopped) mid-block: a statement may still be running on it.
        interrupted = kind is not None and not issubclass(kind, Exception)
        self._pool._give_back(self._connection, interrupted=interrupted)
