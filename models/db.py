"""Engines and units of work.

Domain code is synchronous SQLAlchemy; workers call it directly, the API runs
its writing units through models/writes.py (on PostgreSQL, on the event loop).
SQLite gets WAL, a busy timeout and ``BEGIN IMMEDIATE`` for writing units so
that concurrent writers queue instead of failing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import Connection
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry

_WRITE_OPTION = "imagesvc_write"
SQLITE_BUSY_TIMEOUT_S = 30
# The API and the workers check a pooled connection before use (``SELECT 1``) only once
# it has been idle this long (imagesvc.bootstrap.ping_only_idle, and a worker's held
# connection): under load, never. What a lost connection interrupts before its commit
# runs once more instead.
IDLE_PING_S = 1.0

R = TypeVar("R")


class Database:
    """One engine and the two kinds of session the service uses."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = _create_engine(url)
        self._reader = sessionmaker(_reading_engine(self.engine), expire_on_commit=False)
        self._writer = sessionmaker(
            self.engine.execution_options(**{_WRITE_OPTION: True}), expire_on_commit=False
        )

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A writing unit of work: committed on success, rolled back on error."""
        with self._writer() as session, session.begin():
            yield session

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """A read-only unit of work (see :func:`_reading_engine`)."""
        with self._reader() as session, session.begin():
            yield session

    def run_transaction(self, work: Callable[[Session], R]) -> R:
        """``work(session)`` in a writing unit of work, run once more if its
        connection was lost before the commit (see :func:`_run_unit`)."""
        return _run_unit(self.transaction, work)

    def run_reading(self, work: Callable[[Session], R]) -> R:
        """``work(session)`` in a read-only unit of work, run once more if its
        connection was lost (see :func:`_run_unit`)."""
        return _run_unit(self.reading, work)

    def close(self) -> None:
        self.engine.dispose()


def _run_unit(
    unit: Callable[[], AbstractContextManager[Session]], work: Callable[[Session], R]
) -> R:
    """Run ``work`` in ``unit``; a connection lost before the commit runs it once more.

    This is what lets a caller do without the pool's ``SELECT 1`` before every
    checkout: a connection the server dropped (a restart) fails its first
    statement, SQLAlchemy invalidates it and every connection pooled before
    it, and the second run gets a fresh one. Nothing of the first run was
    committed, so running it again is safe. A connection lost during the
    commit is not retried: whether the commit landed is unknown.
    """
    for attempt in (1, 2):
        committing = False
        try:
            with unit() as session:
                result = work(session)
                committing = True
            return result
        except DBAPIError as error:
            if committing or attempt == 2 or not error.connection_invalidated:
                raise
    raise AssertionError("unreachable")


def _reading_engine(engine: Engine) -> Engine:
    """Reads on PostgreSQL run in autocommit: under READ COMMITTED each statement
    has its own snapshot anyway, so BEGIN and COMMIT would only add two round
    trips. SQLite keeps its transaction, which does give one snapshot."""
    if engine.dialect.name == "sqlite":
        return engine
    return engine.execution_options(isolation_level="AUTOCOMMIT")


def _create_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(
            url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False}
        )
        _tune_sqlite(engine)
        return engine
    connect_args: dict[str, Any] = {}
    if url.startswith("postgresql"):
        connect_args["connect_timeout"] = 5
    return create_engine(url, pool_pre_ping=True, connect_args=connect_args)


def _tune_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: DBAPIConnection, record: ConnectionPoolEntry) -> None:
        # Let SQLAlchemy, not pysqlite, decide when transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        writing = connection.get_execution_options().get(_WRITE_OPTION, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if writing else "BEGIN")
