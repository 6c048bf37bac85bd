"""The Celery app factory: one app per process, built from the settings."""

from __future__ import annotations

from typing import Any

from celery import Celery

from imagesvc.settings import Settings
from workers import embedded_broker, redis_broker
from workers.job_queue import SWEEP_IMAGES, SWEEP_JOBS, host_queue


def create_celery(settings: Settings) -> Celery:
    """A Celery app configured for at-least-once delivery; the Job row is the truth.

    It carries no task bodies: a worker adds them with ``workers.tasks.register_tasks``,
    so the API and the scheduler send by name without importing the disk code.
    """
    embedded_broker.register()
    redis_broker.register()  # survives a Redis restart (workers/redis_broker.py)
    app = Celery("imagesvc", set_as_current=False)
    app.conf.update(celery_config(settings))
    return app


def worker_argv(settings: Settings, concurrency: int, pool: str, name: str) -> list[str]:
    """``celery worker``'s arguments: the pool, and the shared queue (no disk work, sweeps)
    with this compute host's own. The pipeline bench's bare worker runs with the same."""
    host = settings.compute_host
    argv = ["--quiet", "worker", f"--loglevel={settings.log_level}", f"--pool={pool}"]
    argv += [f"--concurrency={concurrency}"]
    argv += ["-Q", f"{settings.queue},{host_queue(settings.queue, host)}"]
    return [*argv, "-n", f"{name}@%h", "--without-gossip", "--without-mingle"]


def celery_config(settings: Settings) -> dict[str, Any]:
    """Every setting of the app; the pipeline bench's bare Celery app runs with the same."""
    embedded = not settings.broker_url
    return {
        "broker_url": settings.resolved_broker_url,
        "broker_transport_options": _transport_options(settings),
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": 3,
        "task_default_queue": settings.queue,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_ignore_result": True,
        "result_backend": None,
        # Publishing gives up quickly: a job that was not sent stays pending
        # and the scheduler's sweep sends it again.
        "task_publish_retry_policy": {
            "max_retries": 2,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.5,
        },
        "worker_enable_remote_control": not embedded,
        "worker_send_task_events": False,
        "worker_hijack_root_logger": False,
        "timezone": "UTC",
        "beat_schedule": {
            "sweep-jobs": {"task": SWEEP_JOBS, "schedule": settings.sweep_interval},
            "sweep-images": {"task": SWEEP_IMAGES, "schedule": settings.sweep_interval},
        },
    }


def _transport_options(settings: Settings) -> dict[str, Any]:
    if settings.broker_url:
        return {"visibility_timeout": 6 * 3600}
    return embedded_broker.transport_options(settings.broker_dir, settings.broker_polling_interval)
