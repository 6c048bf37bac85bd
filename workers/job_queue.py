"""Sending jobs to workers, by task name only: senders never import the task bodies.

Jobs with disk work go to their compute host's queue (``<queue>.host.<name>``),
which only that host's workers consume; every other job and the sweeps go to
the shared queue, which every worker consumes. A job that fails to send stays
pending; the sweep sends it again, to the same host.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from celery import Celery
from kombu.messaging import Producer

log = logging.getLogger(__name__)

RUN_JOB = "imagesvc.run_job"
SWEEP_JOBS = "imagesvc.sweep_jobs"
SWEEP_IMAGES = "imagesvc.sweep_images"


def host_queue(queue: str, host: str) -> str:
    """The queue of one compute host's workers."""
    return f"{queue}.host.{host}"


class JobQueue:
    """Puts job ids on the Celery queues the workers consume."""

    def __init__(self, app: Celery, queue: str) -> None:
        self._app = app
        self._queue = queue

    def send(self, job_id: str, host: str = "") -> bool:
        """Send one job to ``host``'s workers (any worker if ''); False (logged) if refused."""
        return self._send(job_id, host, producer=None)

    def send_many(self, jobs: Sequence[tuple[str, str]]) -> int:
        """Send each ``(job_id, host)`` as :meth:`send` does, all on one producer (one
        broker connection); the number sent. A job not sent is logged and left pending."""
        try:
            with self._app.producer_or_acquire() as producer, producer.batch():
                # One Redis pipeline for the lot: published one by one, each message
                # built a Redis client of its own and waited for its own LPUSH (kombu),
                # a third of the API's CPU per accepted write. Transports without
                # batches (the embedded broker) publish each message at once.
                return sum(self._send(job_id, host, producer) for job_id, host in jobs)
        except Exception:  # no producer, or the batch's pipeline failed: the broker is away
            log.warning("could not send %d jobs; the sweep will retry", len(jobs), exc_info=True)
            return 0

    def _send(self, job_id: str, host: str, producer: Producer | None) -> bool:
        queue = host_queue(self._queue, host) if host else self._queue
        try:
            self._app.send_task(RUN_JOB, args=[job_id], queue=queue, producer=producer)
        except Exception:  # any broker failure: the job row is still there
            log.warning("could not send job %s; the sweep will retry", job_id, exc_info=True)
            return False
        return True
