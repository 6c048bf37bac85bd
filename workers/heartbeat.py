"""A working job's heartbeat: a thread that records liveness, progress and phase.

The copy only reports progress in memory; the thread writes it every few
seconds, so the job row is touched at a steady pace whatever the copy's
speed, and a run that has been given up for lost finds out at its next beat
and stops. A change of phase is written at once (it is rare, and tells the
user what the job is waiting for).
"""

from __future__ import annotations

import logging
import threading

from models.db import Database
from models.jobs import beat
from models.states import JobPhase

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
        self._phase: JobPhase | None = None  # None: the run has not said (JobPhase.of guesses)
        self._phase_written: JobPhase | None = None
        self._stopped = threading.Event()
        self._wake = threading.Event()  # set on a phase change: write it now
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{job_id}", daemon=True)
        self.superseded = False

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stopped.set()
        self._wake.set()
        self._thread.join()

    def progress(self, done: int, total: int) -> None:
        """The copy's progress callback; raises Superseded once the job is not ours."""
        if self.superseded:
            raise Superseded(self._job_id)
        self._percent = 99 if total == 0 else min(99, done * 100 // total)

    def phase(self, phase: JobPhase, at_once: bool = True) -> None:
        """The run entered ``phase``; recorded right away unless ``at_once`` is False.

        Raises Superseded like progress. (A run about to commit its outcome passes
        at_once=False: a beat racing that commit would only find the job finished.)
        """
        if self.superseded:
            raise Superseded(self._job_id)
        if phase != self._phase:
            self._phase = phase
            if at_once:
                self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait(self._interval)
            self._wake.clear()
            if self._stopped.is_set() or not self._beat():
                return

    def _beat(self) -> bool:
        """Write one heartbeat; False once this run no longer owns the job."""
        phase = self._phase
        try:
            with self._database.transaction() as session:
                alive = beat(
                    session,
                    self._job_id,
                    self._attempt,
                    self._percent,
                    None if phase in (None, self._phase_written) else phase,
                )
        except Exception as exc:  # the database may be restarting: keep copying
            log.warning("heartbeat of job %s not recorded: %s", self._job_id, exc)
            return True
        if not alive:
            log.warning("job %s attempt %d was superseded", self._job_id, self._attempt)
            self.superseded = True
            return False
        self._phase_written = phase
        return True
