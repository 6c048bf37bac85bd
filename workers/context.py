"""What a worker process needs, opened once per process after any fork."""

from __future__ import annotations

import os
from dataclasses import dataclass

from celery import Celery

from imagesvc.settings import Settings
from models.db import Database
from models.instances import InstanceInventory, SqlInventory
from workers.dispatch import JobDispatcher


@dataclass
class WorkerContext:
    settings: Settings
    database: Database
    inventory: InstanceInventory
    dispatcher: JobDispatcher


class LazyContext:
    """Builds the context on first use in each process (prefork children included)."""

    def __init__(self, app: Celery, settings: Settings) -> None:
        self._app = app
        self._settings = settings
        self._context: WorkerContext | None = None
        self._pid = 0

    def get(self) -> WorkerContext:
        if self._context is None or self._pid != os.getpid():
            database = Database(self._settings.resolved_database_url)
            self._context = WorkerContext(
                settings=self._settings,
                database=database,
                inventory=SqlInventory(database),
                dispatcher=JobDispatcher(self._app),
            )
            self._pid = os.getpid()
        return self._context
