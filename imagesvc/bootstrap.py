"""The composition root: the one place that builds the service's parts from the settings.

Every entry point (the API, a worker, the scheduler, the operator's commands
and the tests) gets its parts from :func:`bootstrap`, so replacing a part (a
real compute inventory, another image store) is a change here and nowhere else.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from celery import Celery
from sqlalchemy import Engine, event
from sqlalchemy.exc import DisconnectionError

from imagesvc.settings import Settings
from models.db import Database
from models.instances import InstanceInventory, SqlInventory
from models.reads import Reads, reads_for
from models.writes import Writes, writes_for
from workers.celery_app import create_celery
from workers.image_store import ImageStore, open_store
from workers.job_queue import JobQueue


@dataclass
class Services:
    """What an entry point works with: the database, the inventory, the job queue, the image
    store (an S3 store connects, and loads boto3, only when first used: the API never); and
    ``reads`` and ``writes``, the API's read and write paths on the event loop (used and
    closed by the API only)."""

    settings: Settings
    database: Database
    reads: Reads
    writes: Writes
    inventory: InstanceInventory
    celery: Celery
    job_queue: JobQueue
    store: ImageStore

    def close(self) -> None:
        self.celery.close()
        self.database.close()


def bootstrap(settings: Settings, *, ping_idle_after: float | None = None) -> Services:
    """Build every part from ``settings``; the caller closes them with ``close()``.

    A database connection is checked (``SELECT 1``) before every use, unless
    ``ping_idle_after`` is given: then only one that has been idle that many seconds
    is, and the caller retries what a lost connection interrupts (as a worker does).
    """
    database = Database(settings.resolved_database_url)
    writes = writes_for(database, settings.write_pool_size)
    if ping_idle_after is not None:
        ping_only_idle(database.engine, ping_idle_after)
    celery = create_celery(settings)
    return Services(
        settings=settings,
        database=database,
        reads=reads_for(database),
        writes=writes,
        inventory=SqlInventory(database),
        celery=celery,
        job_queue=JobQueue(celery, settings.queue),
        store=open_store(settings.store_url, settings.data_dir),
    )


def ping_only_idle(engine: Engine, seconds: float) -> None:
    """Check a pooled connection before use only if it has been idle ``seconds``.

    A worker running jobs back to back then spends no round trip per job on
    checking; a connection left idle (through a long copy, or while nothing ran)
    is checked, and if the server went away meanwhile the pool replaces it.
    """
    if engine.dialect.name == "sqlite":
        return  # a file: nothing to lose
    # Off the pool's check before every checkout (models.db turns it on for all).
    engine.pool._pre_ping = False

    @event.listens_for(engine.pool, "checkin")
    def _idle_from(dbapi_connection: Any, record: Any) -> None:
        record.info[_IDLE_SINCE] = time.monotonic()

    @event.listens_for(engine.pool, "checkout")
    def _ping_if_idle(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        idle_since = record.info.get(_IDLE_SINCE)
        if idle_since is None or time.monotonic() - idle_since < seconds:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:
            raise DisconnectionError("connection lost while idle") from exc  # pool reconnects


_IDLE_SINCE = "imagesvc_idle_since"


@contextmanager
def services_for(settings: Settings) -> Iterator[Services]:
    """Parts for a short-lived caller (an operator command, a test), closed on exit."""
    services = bootstrap(settings)
    try:
        yield services
    finally:
        services.close()
