"""Celery tasks: thin, they take ids and call the domain."""

from __future__ import annotations

import logging

from celery import Celery

from imagesvc.settings import Settings
from models.jobs import undispatched_jobs
from workers.context import LazyContext
from workers.dispatch import RUN_JOB
from workers.jobs import execute_job
from workers.lifecycle import sweep_images

log = logging.getLogger(__name__)

REDISPATCH_JOBS = "imagesvc.redispatch_jobs"
SWEEP_IMAGES = "imagesvc.sweep_images"


def register_tasks(app: Celery, settings: Settings) -> None:
    context = LazyContext(app, settings)

    @app.task(name=RUN_JOB)  # type: ignore[untyped-decorator]
    def run_job(job_id: str) -> None:
        execute_job(context.get(), job_id)

    @app.task(name=REDISPATCH_JOBS)  # type: ignore[untyped-decorator]
    def redispatch_jobs() -> int:
        current = context.get()
        with current.database.transaction() as session:
            job_ids = undispatched_jobs(session, current.settings.dispatch_grace)
        for job_id in job_ids:
            current.dispatcher.dispatch(job_id)
        if job_ids:
            log.info("re-dispatched %d pending job(s)", len(job_ids))
        return len(job_ids)

    @app.task(name=SWEEP_IMAGES)  # type: ignore[untyped-decorator]
    def sweep() -> None:
        sweep_images(context.get())
