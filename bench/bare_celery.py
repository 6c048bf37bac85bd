"""Bare Celery: a no-op task run with imagesvc's worker settings, the pipeline bench's baseline.

``python -m bench.bare_celery --concurrency N`` reads ``IMAGESVC_BROKER_URL`` and
``IMAGESVC_QUEUE`` as ``imagesvc worker`` does, and starts a worker whose app has
every setting of imagesvc's (``workers.celery_app.celery_config``: ``acks_late``,
``reject_on_worker_lost``, prefetch 1, JSON, results ignored, the same transport
options) and whose command line is the same (``worker_argv``: prefork, the same
concurrency, the same two queues, logging as quiet). Its one task takes a job id,
as ``imagesvc.run_job`` does, and does nothing with it: what is left is Celery's
own cost of delivering, running and acknowledging a message. One difference, in
names only: kombu keeps its unacknowledged messages under keys named after its
queue rather than Redis's shared ``unacked``, so that the bench can tell when every
one of its tasks has been acknowledged.

``--sleep-ms`` (a diagnosis only, never the pipeline bench's baseline) makes the task
block that long, as a job blocks on its database round trip: what Celery's own round
costs around a task that waits (``docs/pipeline-profile.md``, round 4).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from celery import Celery
from celery.signals import setup_logging

from imagesvc.logs import configure_logging
from imagesvc.settings import Settings
from workers.celery_app import celery_config, worker_argv
from workers.job_queue import RUN_JOB

_UNACKED_OPTIONS = ("unacked_key", "unacked_index_key", "unacked_mutex_key")


def unacked_keys(queue: str) -> list[str]:
    """The Redis keys of the bare worker's unacknowledged messages (hash, index, mutex)."""
    return [f"{queue}.{option.removesuffix('_key')}" for option in _UNACKED_OPTIONS]


def unacked_key(queue: str) -> str:
    """The hash of the unacknowledged messages themselves."""
    return unacked_keys(queue)[0]


def queue_unacked_options(queue: str) -> dict[str, str]:
    """The transport options that name the unacknowledged messages' keys after ``queue``
    (the imagesvc worker of the pipeline bench takes the same: ``bench.pipeline_worker``)."""
    return dict(zip(_UNACKED_OPTIONS, unacked_keys(queue), strict=True))


def create_app(settings: Settings, sleep_s: float = 0.0) -> Celery:
    """imagesvc's configuration without the scheduler's sweeps, and a no-op under RUN_JOB
    (with ``sleep_s``, a task that only waits that long)."""
    app = Celery("bare", set_as_current=False)
    config = celery_config(settings)
    config.pop("beat_schedule")
    config["broker_transport_options"] = {
        **config["broker_transport_options"],
        **queue_unacked_options(settings.queue),
    }
    app.conf.update(config)

    @app.task(name=RUN_JOB)  # type: ignore[untyped-decorator]
    def run_job(job_id: str) -> None:
        """The job's id arrives, as in imagesvc; nothing is done with it."""
        if sleep_s:
            time.sleep(sleep_s)

    return app


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bare_celery", description=__doc__)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--sleep-ms", type=float, default=0.0, help="diagnosis: the task waits")
    args = parser.parse_args(argv)
    settings = Settings()
    configure_logging(settings)
    setup_logging.connect(lambda **_: None, weak=False)  # as imagesvc worker: ours is done
    app = create_app(settings, args.sleep_ms / 1000)
    name = f"bare-{settings.compute_host}-{os.getpid()}"
    app.worker_main(worker_argv(settings, args.concurrency, "prefork", name))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
