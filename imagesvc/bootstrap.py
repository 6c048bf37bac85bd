"""The composition root: the one place that builds the service's parts from the settings.

Every entry point (the API, a worker, the scheduler, the operator's commands
and the tests) gets its parts from :func:`bootstrap`, so replacing a part (a
real compute inventory, another image store) is a change here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from celery import Celery

from imagesvc.settings import Settings
from models.db import Database
from models.instances import InstanceInventory, SqlInventory
from models.reads import Reads, reads_for
from workers.celery_app import create_celery
from workers.image_store import ImageStore, open_store
from workers.job_queue import JobQueue


@dataclass
class Services:
    """What an entry point works with: the database, the inventory, the job queue, the image
    store (an S3 store connects, and loads boto3, only when first used: the API never); and
    ``reads``, the API's read path on the event loop (opened by the API only)."""

    settings: Settings
    database: Database
    reads: Reads
    inventory: InstanceInventory
    celery: Celery
    job_queue: JobQueue
    store: ImageStore

    def close(self) -> None:
        self.celery.close()
        self.database.close()


def bootstrap(settings: Settings) -> Services:
    """Build every part from ``settings``; the caller closes them with ``close()``."""
    database = Database(settings.resolved_database_url)
    celery = create_celery(settings)
    return Services(
        settings=settings,
        database=database,
        reads=reads_for(database),
        inventory=SqlInventory(database),
        celery=celery,
        job_queue=JobQueue(celery, settings.queue),
        store=open_store(settings.store_url, settings.data_dir),
    )


@contextmanager
def services_for(settings: Settings) -> Iterator[Services]:
    """Parts for a short-lived caller (an operator command, a test), closed on exit."""
    services = bootstrap(settings)
    try:
        yield services
    finally:
        services.close()
