"""One sweep of a kind at a time across schedulers and workers, where the database can say so.

Any number of schedulers may run, so the same sweep can start on two workers
at once. Every step of a sweep is a compare-and-set and safe to run twice;
on PostgreSQL a session advisory lock also spares the duplicate work: a
sweep that finds its lock taken skips this pass. The lock belongs to the
connection, so a worker killed mid-sweep releases it with its connection.
On SQLite, which runs one writer at a time anyway, every sweep runs.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError

from models.db import Database

log = logging.getLogger(__name__)


def lock_key(sweep: str) -> int:
    """A stable signed 64-bit key for the named sweep (advisory locks are per database)."""
    digest = hashlib.blake2b(f"imagesvc.sweep.{sweep}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


@contextmanager
def sweep_lock(database: Database, sweep: str) -> Iterator[bool]:
    """Hold the named sweep's lock while the block runs; yields False if another holds it."""
    if database.engine.dialect.name != "postgresql":
        yield True
        return
    key = {"key": lock_key(sweep)}
    with database.engine.connect() as connection:
        taken = bool(connection.scalar(text("SELECT pg_try_advisory_lock(:key)"), key))
        connection.commit()
        try:
            yield taken
        finally:
            if taken:
                _unlock(connection, key)


def _unlock(connection: Connection, key: dict[str, int]) -> None:
    try:
        connection.execute(text("SELECT pg_advisory_unlock(:key)"), key)
        connection.commit()
    except DBAPIError:
        # The server or the connection went away: close it rather than pool it, so that
        # the lock, if the server still holds it, goes with the session.
        log.warning("sweep lock %s not released; closing its connection", key["key"])
        connection.invalidate()
