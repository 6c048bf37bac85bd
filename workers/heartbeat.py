"""A working job's heartbeat: a thread that records liveness and progress every few seconds.

The copy only reports progress in memory; the thread writes it, so the job
row is touched at a steady pace whatever the copy's speed, and a run that
has been given up for lost finds out at its next beat and stops.
"""

from __future__ import annotations

import logging
import threading
from types import TracebackType

from models.db import Database
from models.jobs import beat

log = logging.getLogger(__name__)


class Superseded(Exception):
    """This run of the job is no longer the job's: another run owns it, or it ended."""


class Heartbeat:
    def __init__(self, database: Database, job_id: str, attempt: int, interval: float) -> None:
        self._database = database
        self._job_id = job_id
        self._attempt = attempt
        self._interval = interval
        self._percent = 0
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{job_id}", daemon=True)
        self.superseded = False

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._stopped.set()
        self._thread.join()

    def progress(self, done: int, total: int) -> None:
        """The copy's progress callback; raises Superseded once the job is not ours."""
        if self.superseded:
            raise Superseded(self._job_id)
        self._percent = 99 if total == 0 else min(99, done * 100 // total)

    def _run(self) -> None:
        while not self._stopped.wait(self._interval):
            try:
                with self._database.transaction() as session:
                    alive = beat(session, self._job_id, self._attempt, self._percent)
            except Exception as exc:  # the database may be restarting: keep copying
                log.warning("heartbeat of job %s not recorded: %s", self._job_id, exc)
                continue
            if not alive:
                log.warning("job %s attempt %d was superseded", self._job_id, self._attempt)
                self.superseded = True
                return
