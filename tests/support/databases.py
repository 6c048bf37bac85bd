"""Scratch databases: one per deployment, or a copy of a migrated template per test.

On SQLite a database is a file; on PostgreSQL (``IMAGESVC_TEST_DATABASE_URL``)
it is a new database on that server, dropped afterwards. A template is
migrated once per session, and each test that asks for one gets a clone:
a file copy on SQLite, ``CREATE DATABASE … TEMPLATE`` on PostgreSQL (so a
test's database costs milliseconds, not a migration run).
"""

from __future__ import annotations

import secrets
import shutil
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import NullPool

from models.migrate import upgrade
from tests.support.backends import TEST_DATABASE_URL


@contextmanager
def scratch_database(data_dir: Path) -> Iterator[str]:
    """The URL of a new, empty database, removed on exit (the SQLite file stays in data_dir)."""
    if not TEST_DATABASE_URL:
        yield f"sqlite:///{data_dir / 'imagesvc.db'}"
        return
    with _server() as (server, admin):
        name = _create(admin, server, "")
        try:
            yield _url_of(server, name)
        finally:
            _drop(admin, name)


class DatabaseTemplate:
    """A database migrated once, that tests clone to get a database of their own.

    On PostgreSQL a clone costs a ``CREATE DATABASE`` and a ``DROP DATABASE``
    (a few hundred ms each on a busy server), so the next clones are made and
    the used ones dropped in the background while tests run.
    """

    SPARES = 3

    def __init__(self, url: str, sqlite_file: Path | None) -> None:
        self.url = url
        self._sqlite_file = sqlite_file
        self._background = ThreadPoolExecutor(
            max_workers=self.SPARES + 1, thread_name_prefix="clones"
        )
        self._spares: deque[Future[str]] = deque()

    @contextmanager
    def clone(self, directory: Path) -> Iterator[str]:
        """The URL of a new database holding what the template holds, removed on exit."""
        if self._sqlite_file is not None:
            copy = directory / f"clone-{secrets.token_hex(4)}.db"
            shutil.copyfile(self._sqlite_file, copy)
            yield f"sqlite:///{copy}"
            return
        while len(self._spares) <= self.SPARES:
            self._spares.append(self._background.submit(self._create_clone))
        name = self._spares.popleft().result()
        try:
            yield _url_of(make_url(TEST_DATABASE_URL), name)
        finally:
            self._background.submit(self._drop_clone, name)

    def close(self) -> None:
        """Drop the spare clones and wait for the background drops."""
        while self._spares:
            self._background.submit(self._drop_clone, self._spares.popleft().result())
        self._background.shutdown(wait=True)

    def _create_clone(self) -> str:
        with _server() as (server, admin):
            return _create(admin, server, make_url(self.url).database or "")

    def _drop_clone(self, name: str) -> None:
        with _server() as (_, admin):
            _drop(admin, name)


@contextmanager
def migrated_template(directory: Path) -> Iterator[DatabaseTemplate]:
    """A template database at the newest migration, for one test session."""
    with scratch_database(directory) as url:
        upgrade(url)
        sqlite_file = None if TEST_DATABASE_URL else directory / "imagesvc.db"
        template = DatabaseTemplate(url, sqlite_file)
        try:
            yield template
        finally:
            template.close()


@contextmanager
def _server() -> Iterator[tuple[URL, Engine]]:
    server = make_url(TEST_DATABASE_URL)
    # No pool: a chaos test may restart the server while a database exists.
    admin = create_engine(server, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        yield server, admin
    finally:
        admin.dispose()


def _create(admin: Engine, server: URL, template: str) -> str:
    name = f"imagesvc_test_{secrets.token_hex(4)}"
    statement = f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else "")
    try:
        with admin.connect() as connection:
            connection.execute(text(statement))
    except Exception as exc:
        pytest.fail(f"PostgreSQL at {server.render_as_string()} refused {statement}: {exc}")
    return name


def _drop(admin: Engine, name: str) -> None:
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _url_of(server: URL, name: str) -> str:
    return server.set(database=name).render_as_string(hide_password=False)
