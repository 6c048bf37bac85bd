"""Sending jobs to workers, by task name only: senders never import the task bodies.

A job that fails to send stays pending; the sweep sends it again.
"""

from __future__ import annotations

import logging

from celery import Celery

log = logging.getLogger(__name__)

RUN_JOB = "imagesvc.run_job"
SWEEP_JOBS = "imagesvc.sweep_jobs"
SWEEP_IMAGES = "imagesvc.sweep_images"


class JobQueue:
    """Puts job ids on the Celery queue the workers consume."""

    def __init__(self, app: Celery) -> None:
        self._app = app

    def send(self, job_id: str) -> bool:
        """Send one job to the workers; False (logged) if the broker refused."""
        try:
            self._app.send_task(RUN_JOB, args=[job_id])
        except Exception:  # any broker failure: the job row is still there
            log.warning("could not send job %s; the sweep will retry", job_id, exc_info=True)
            return False
        return True
