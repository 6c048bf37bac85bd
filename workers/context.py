"""The parts a worker process uses, built once per process after any fork."""

from __future__ import annotations

import os
from collections.abc import Callable

from imagesvc.bootstrap import Services


class PerProcess:
    """Builds the services on first use in each process (prefork children included)."""

    def __init__(self, build: Callable[[], Services]) -> None:
        self._build = build
        self._services: Services | None = None
        self._pid = 0

    def get(self) -> Services:
        if self._services is None or self._pid != os.getpid():
            self._services = self._build()
            self._pid = os.getpid()
        return self._services
