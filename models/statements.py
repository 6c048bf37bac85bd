"""The statements a writing unit of work runs, whatever runs them.

The write functions (models/images.py, quotas.py, client_requests.py,
transitions.py, jobs.new_job, instances.SqlInventory) take a ``Session`` or a
:class:`Statements` and run SQLAlchemy Core statements built once, with named
values, through :func:`statements_of`. A ``Session`` (SQLite, workers,
operator commands, tests) runs them through SQLAlchemy; the API's write path
on PostgreSQL runs the very same statements on asyncpg, each compiled once
(models/writes.py). One copy of the domain logic, two ways to send its SQL.

Statements must bind every value that changes from call to call (a caller,
an id): a statement built per call would be compiled per call.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias, TypeVar

from sqlalchemy import (
    ColumnElement,
    CursorResult,
    Executable,
    Insert,
    Table,
    bindparam,
    insert,
    select,
)
from sqlalchemy.orm import DeclarativeBase, Session

M = TypeVar("M", bound=DeclarativeBase)


class Statements(ABC):
    """Runs Core statements with named values; rows read as ``row.column``."""

    dialect_name: str

    @abstractmethod
    def rows(self, statement: Executable, values: Mapping[str, Any]) -> Sequence[Any]:
        """Every row ``statement`` returns."""

    @abstractmethod
    def count(self, statement: Executable, values: Mapping[str, Any]) -> int:
        """Run ``statement`` (an insert, update or delete); the number of rows it changed.

        IntegrityError (SQLAlchemy's) if it breaks a constraint."""

    def first(self, statement: Executable, values: Mapping[str, Any]) -> Any:
        """The first row ``statement`` returns, or None."""
        rows = self.rows(statement, values)
        return rows[0] if rows else None


class SessionStatements(Statements):
    """Statements run through a SQLAlchemy ``Session``, in its transaction."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.dialect_name = session.get_bind().dialect.name

    def rows(self, statement: Executable, values: Mapping[str, Any]) -> Sequence[Any]:
        return list(self.session.execute(statement, dict(values)))

    def count(self, statement: Executable, values: Mapping[str, Any]) -> int:
        result: CursorResult[Any] = self.session.execute(statement, dict(values))  # type: ignore[assignment]
        return int(result.rowcount)


# What a write function is given: a Session, or the API's statements on asyncpg.
Db: TypeAlias = Session | Statements


def statements_of(db: Db) -> Statements:
    """The statements of a unit of work, whichever kind the caller gave."""
    return SessionStatements(db) if isinstance(db, Session) else db


@functools.cache
def inserting(table: Table) -> Insert:
    """The INSERT of a row of ``table``: every column, bound as ``<table>_<column>``
    (the values of :func:`insert_values`; two tables' rows can go in one statement)."""
    columns = {
        column.key: bindparam(_bound(table, column.key), type_=column.type) for column in table.c
    }
    return insert(table).values(columns)


def inserting_where(table: Table, condition: ColumnElement[bool]) -> Insert:
    """The INSERT of :func:`inserting` (the same values), of its row only where
    ``condition`` holds: ``INSERT ... SELECT ... WHERE``."""
    columns = list(table.columns)
    row = select(*(bindparam(_bound(table, c.key), type_=c.type) for c in columns))
    return insert(table).from_select([c.key for c in columns], row.where(condition))


def _bound(table: Table, column: str) -> str:
    return f"{table.name}_{column}"


def new_row(model: type[M], **values: Any) -> M:
    """A new row of ``model`` (a mapped class), in no session, that reads as the row
    :func:`inserting` inserts for it: each column is ``values``' or else its default
    (None where it has none).

    Its attributes are set in one go, as SQLAlchemy sets those of a row it loads,
    not one by one through the instrumented constructor: that fires an attribute
    event per column, a tenth of a capture's CPU. A session it is added to
    inserts it from those values all the same."""
    row: M = model.__mapper__.class_manager.new_instance()
    state = row.__dict__
    for key, _bound, default in _inserted_columns(model.__table__):
        value = values.pop(key, None)
        state[key] = _default_of(default) if value is None and default is not None else value
    if values:
        raise TypeError(f"{model.__name__} has no column {', '.join(values)}")
    return row


def insert_values(table: Table, row: Any) -> dict[str, Any]:
    """The values of :func:`inserting` for ``row``, made by :func:`new_row`."""
    state = row.__dict__
    return {bound: state[key] for key, bound, _default in _inserted_columns(table)}


@functools.cache
def _inserted_columns(table: Table) -> tuple[tuple[str, str, Any], ...]:
    """Each column's key, bound name and default, worked out once per table (every
    write inserts a row or two)."""
    return tuple((c.key, _bound(table, c.key), c.default) for c in table.columns)


def _default_of(default: Any) -> Any:
    """A column's Python-side default (a value, or a function such as ``utcnow``)."""
    return default.arg(None) if default.is_callable else default.arg
