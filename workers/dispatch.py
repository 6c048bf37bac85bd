"""Sending jobs to workers. A job that fails to send stays pending; the sweep resends it."""

from __future__ import annotations

import logging

from celery import Celery

log = logging.getLogger(__name__)

RUN_JOB = "imagesvc.run_job"


class JobDispatcher:
    def __init__(self, app: Celery) -> None:
        self._app = app

    def dispatch(self, job_id: str) -> bool:
        """Send one job to the workers; False (logged) if the broker refused."""
        try:
            self._app.send_task(RUN_JOB, args=[job_id])
        except Exception:  # any broker failure: the job row is still there
            log.warning("could not dispatch job %s; the sweep will retry", job_id, exc_info=True)
            return False
        return True
