"""Celery tasks: thin, they take ids and call the domain."""

from __future__ import annotations

import logging

from celery import Celery

from imagesvc.settings import Settings
from workers.context import LazyContext
from workers.dispatch import RUN_JOB
from workers.jobs import execute_job
from workers.lifecycle import sweep_images
from workers.recovery import sweep_jobs

log = logging.getLogger(__name__)

SWEEP_JOBS = "imagesvc.sweep_jobs"
SWEEP_IMAGES = "imagesvc.sweep_images"


def register_tasks(app: Celery, settings: Settings) -> None:
    context = LazyContext(app, settings)

    @app.task(name=RUN_JOB)  # type: ignore[untyped-decorator]
    def run_job(job_id: str) -> None:
        execute_job(context.get(), job_id)

    @app.task(name=SWEEP_JOBS)  # type: ignore[untyped-decorator]
    def sweep() -> None:
        sweep_jobs(context.get())

    @app.task(name=SWEEP_IMAGES)  # type: ignore[untyped-decorator]
    def sweep_store() -> None:
        sweep_images(context.get())
