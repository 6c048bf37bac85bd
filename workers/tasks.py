"""Celery tasks: thin, they take ids, get the process's services and call the job code."""

from __future__ import annotations

from collections.abc import Callable

from celery import Celery

from imagesvc.bootstrap import Services, bootstrap
from imagesvc.settings import Settings
from models.db import IDLE_PING_S
from workers.context import PerProcess
from workers.image_sweep import sweep_images
from workers.job_queue import RUN_JOB, SWEEP_IMAGES, SWEEP_JOBS
from workers.job_runner import execute_job
from workers.job_sweep import sweep_jobs


def worker_services(settings: Settings) -> Services:
    """A worker process's parts: as every entry point's, but for when connections are checked."""
    return bootstrap(settings, ping_idle_after=IDLE_PING_S)


def register_tasks(app: Celery, build: Callable[[], Services]) -> None:
    """Add the task bodies to a worker's Celery app; ``build`` makes each process's parts."""
    services = PerProcess(build)

    @app.task(name=RUN_JOB)  # type: ignore[untyped-decorator]
    def run_job(job_id: str) -> None:
        execute_job(services.get(), job_id)

    @app.task(name=SWEEP_JOBS)  # type: ignore[untyped-decorator]
    def sweep() -> None:
        sweep_jobs(services.get())

    @app.task(name=SWEEP_IMAGES)  # type: ignore[untyped-decorator]
    def sweep_store() -> None:
        sweep_images(services.get())
