"""A connection a pool process keeps for its one-statement settles, between jobs.

Checking a connection out of SQLAlchemy's pool, setting it to autocommit and giving it
back cost a delete job about a quarter of its worker CPU (``docs/pipeline-profile.md``).
A pool process runs one job at a time, so it keeps one autocommit connection checked out
instead. It is closed (and the next one checked out, and pinged, by the pool) once it has
been idle longer than the worker pings after, and after any error: the caller's retry then
runs on a fresh one. It never goes back into the pool (see :meth:`HeldConnection.close`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import Connection, Engine

R = TypeVar("R")


class HeldConnection:
    """One autocommit connection of ``engine``, kept between uses of a single thread."""

    def __init__(self, engine: Engine, idle_after: float) -> None:
        self._engine = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._idle_after = idle_after
        self._connection: Connection | None = None
        self._used_at = 0.0

    def run(self, statement: Callable[[Connection], R]) -> R:
        """``statement(connection)``, each statement its own transaction."""
        connection = self._connection_for_use()
        try:
            result = statement(connection)
            connection.commit()  # ends SQLAlchemy's own bookkeeping; autocommit sends nothing
        except BaseException:
            self.close()  # lost, or in a state not worth reasoning about: the pool sorts it out
            raise
        self._used_at = time.monotonic()
        return result

    def close(self) -> None:
        """Close the connection for good, never back into the pool: in autocommit the
        pool's reset on check-in sends nothing, so a connection the server has ended
        would go back unnoticed, stamped as just used, past the idle check, and be
        handed to a capture's transaction or heartbeat."""
        if self._connection is not None:
            connection, self._connection = self._connection, None
            connection.invalidate()
            connection.close()

    def _connection_for_use(self) -> Connection:
        if self._connection is not None and time.monotonic() - self._used_at > self._idle_after:
            self.close()  # idle a while: it may be lost; the pool checks the next one
        if self._connection is None:
            self._connection = self._engine.connect()
        return self._connection
