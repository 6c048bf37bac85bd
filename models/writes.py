"""Where the API runs its writing units of work.

A unit is a synchronous write function given :class:`~models.statements.Statements`
(models/images.py: ``capture_instance``, ``delete_images``...). On PostgreSQL
(:class:`AsyncpgWrites`) it runs in a greenlet on the API's event loop, and
each of its statements is compiled once to asyncpg's SQL and awaited on a
pooled asyncpg connection: no thread hop, no ORM, no SQLAlchemy execution
per statement, and as many units at once as the pool has connections. On
SQLite (:class:`ThreadWrites`) it runs through the synchronous
:class:`~models.db.Database` in a thread. Either way the unit commits when
it returns, rolls back when it raises, and runs once more if its connection
was lost before its commit: nothing of the first run was committed. A
connection lost during the commit is not retried (whether it landed is
unknown): 503.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg
from sqlalchemy import Executable
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.util import await_only, greenlet_spawn

from models.db import Database
from models.errors import ServiceUnavailable
from models.pool import ConnectionPool
from models.reads import (
    CONNECT_TIMEOUT_S,
    MAX_COMPILED,
    AsyncpgCompiler,
    Record,
    connection_lost,
    decode_json,
)
from models.statements import SessionStatements, Statements

log = logging.getLogger(__name__)
R = TypeVar("R")

# How the API's writing units show in pg_stat_activity.
APPLICATION_NAME = "imagesvc-writes"


class Writes(ABC):
    """Where the API's writing units of work run."""

    @abstractmethod
    async def open(self) -> None:
        """Get ready on the running event loop (the API's startup)."""

    @abstractmethod
    async def run(self, work: Callable[[Statements], R]) -> R:
        """``work(statements)`` in one transaction: committed if it returns, rolled back
        if it raises; once more if its connection was lost before the commit."""

    @abstractmethod
    async def close(self) -> None:
        """Let go of the connections (the API's cleanup)."""


class ThreadWrites(Writes):
    """The synchronous :class:`Database`, in a thread: SQLite's path."""

    def __init__(self, database: Database) -> None:
        self.database = database

    async def open(self) -> None:
        return None  # the Database's own pool, opened on first use

    async def run(self, work: Callable[[Statements], R]) -> R:
        def unit(session: Any) -> R:
            return work(SessionStatements(session))

        return await asyncio.to_thread(self.database.run_transaction, unit)

    async def close(self) -> None:
        return None  # closed with the Database


class AsyncpgWrites(Writes):
    """asyncpg on the event loop, statements compiled once: PostgreSQL's path.

    ``pool_size`` connections (``IMAGESVC_WRITE_POOL_SIZE``): that many units at
    once. A connection is not checked before use; a unit that finds it lost runs
    once more on a new one (every pooled connection is then replaced)."""

    def __init__(self, url: str, pool_size: int) -> None:
        self.dsn = make_url(url).set(drivername="postgresql").render_as_string(False)
        self.pool_size = pool_size
        self._pool: ConnectionPool | None = None
        self._compiler = ExpandingCompiler()

    async def open(self) -> None:
        # Connections are opened when first needed: the API starts (and answers 503) while
        # PostgreSQL is down.
        self._pool = ConnectionPool(
            self.dsn,
            self.pool_size,
            connect_timeout=CONNECT_TIMEOUT_S,
            server_settings={"application_name": APPLICATION_NAME},
            init=decode_json,
            record_class=Record,
        )

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()

    async def run(self, work: Callable[[Statements], R]) -> R:
        try:
            return await self._run(work)
        except _LostBeforeCommit as lost:
            log.info("database connection lost (%s); once more on a new one", lost.cause)
            self._require_pool().expire_connections()
        try:
            return await self._run(work)
        except _LostBeforeCommit as lost:
            log.warning("database unavailable: %s", lost.cause)
            raise ServiceUnavailable("the database is unavailable") from None

    async def _run(self, work: Callable[[Statements], R]) -> R:
        committing = False
        try:
            async with self._require_pool().acquire() as connection:
                async with connection.transaction():
                    statements = AsyncpgStatements(connection, self._compiler)
                    result = await greenlet_spawn(work, statements)
                    committing = True
                return result
        except Exception as error:
            if not connection_lost(error):
                raise
            if committing:
                log.warning("database connection lost during a commit: %s", error)
                raise ServiceUnavailable("the database is unavailable") from None
            raise _LostBeforeCommit(type(error).__name__) from error

    def _require_pool(self) -> ConnectionPool:
        if self._pool is None:
            raise RuntimeError("AsyncpgWrites.open() was not awaited")
        return self._pool


class _LostBeforeCommit(Exception):
    def __init__(self, cause: str) -> None:
        super().__init__(cause)
        self.cause = cause


class ExpandingCompiler(AsyncpgCompiler):
    """The write path's compiler: a statement with lists of values (``IN``) is rendered
    from its compiled form once per length of each list, not on every call (a delete's
    ``IN`` of image ids and of the states it moves from: a tenth of the event loop per
    delete). The SQL of such a statement depends only on those lengths; each call then
    only picks the arguments out, in the order SQLAlchemy's rendering gave them."""

    def __init__(self) -> None:
        super().__init__(expanding=True)
        self._expanded: dict[tuple[int, tuple[int, ...]], _Expanded] = {}

    def bind(self, statement: Executable, values: Mapping[str, Any]) -> tuple[str, list[Any]]:
        compiled = self._compile(statement)
        if not compiled.post_compile_params or compiled.literal_execute_params:
            return super().bind(statement, values)
        bound = compiled.construct_params(dict(values))
        lists = tuple(compiled.bind_names[p] for p in compiled.post_compile_params)
        key = (id(compiled), tuple(len(bound[name]) for name in lists))
        known = self._expanded.get(key)
        if known is not None and known.compiled is compiled:
            return known.sql, [_argument(bound, name, at) for name, at in known.arguments]
        expanded = compiled.construct_expanded_state(bound)
        arguments = _arguments(expanded.positiontup or (), bound, set(lists))
        args = list(expanded.positional_parameters)
        if arguments is not None and [_argument(bound, n, at) for n, at in arguments] == args:
            if len(self._expanded) >= MAX_COMPILED:
                self._expanded.clear()
            self._expanded[key] = _Expanded(compiled, expanded.statement, arguments)
        return expanded.statement, args


@dataclass(frozen=True)
class _Expanded:
    compiled: Any
    sql: str
    arguments: list[tuple[str, int | None]]  # (parameter, index in its list, or None)


def _arguments(
    positions: Sequence[str], bound: Mapping[str, Any], lists: set[str]
) -> list[tuple[str, int | None]] | None:
    """Where each positional argument comes from: a plain parameter, or an item of a
    list parameter (SQLAlchemy names the items ``<name>_1``, ``<name>_2``...); None if
    a position is neither (a tuple ``IN``): such a statement is rendered every time."""
    arguments: list[tuple[str, int | None]] = []
    for position in positions:
        name, _, number = position.rpartition("_")
        if position in bound and position not in lists:
            arguments.append((position, None))
        elif name in lists and number.isdigit():
            arguments.append((name, int(number) - 1))
        else:
            return None
    return arguments


def _argument(bound: Mapping[str, Any], name: str, at: int | None) -> Any:
    return bound[name] if at is None else bound[name][at]


class AsyncpgStatements(Statements):
    """Statements awaited on one asyncpg connection from the unit's greenlet."""

    dialect_name = "postgresql"

    def __init__(self, connection: asyncpg.Connection, compiler: AsyncpgCompiler) -> None:
        self.connection = connection
        self.compiler = compiler

    def rows(self, statement: Executable, values: Mapping[str, Any]) -> Sequence[Any]:
        sql, args = self.compiler.bind(statement, values)
        with _integrity_errors(sql, args):
            rows: Sequence[Any] = await_only(self.connection.fetch(sql, *args))
        return rows

    def count(self, statement: Executable, values: Mapping[str, Any]) -> int:
        sql, args = self.compiler.bind(statement, values)
        with _integrity_errors(sql, args):
            status: str = await_only(self.connection.execute(sql, *args))
        return int(status.rpartition(" ")[2] or 0)  # "UPDATE 3", "INSERT 0 1"


@contextmanager
def _integrity_errors(sql: str, args: Sequence[Any]) -> Iterator[None]:
    """asyncpg's constraint violations as SQLAlchemy's IntegrityError, which the
    domain catches whichever path ran the statement."""
    try:
        yield
    except asyncpg.IntegrityConstraintViolationError as error:
        raise IntegrityError(sql, list(args), error) from error


def writes_for(database: Database, pool_size: int) -> Writes:
    """The API's write path for ``database``'s backend; on PostgreSQL ``pool_size``
    connections, as many units at once."""
    if database.engine.dialect.name == "postgresql":
        return AsyncpgWrites(database.url, pool_size)
    return ThreadWrites(database)
