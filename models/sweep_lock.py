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
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import text

from models.db import Database


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
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), key)
                connection.commit()
