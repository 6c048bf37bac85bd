"""Sending committed jobs to the workers, off the request's path.

The job row is committed before it is sent, so a slow or absent broker never
delays a response and never loses a job: whatever is not sent now, the
scheduler's sweep sends later (every pending job whose send was requested more
than ``IMAGESVC_DISPATCH_GRACE`` seconds ago). One background task per API
process sends them: it takes every job waiting, sends the batch, and comes
back for more. With a Redis broker the batch is one pipeline awaited on the
event loop (``workers.job_queue.RedisPublisher``, the same messages kombu
pushes); with the embedded broker it is one thread hop to Celery's producer.
Jobs still waiting are sent before the API process stops.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

from aiohttp import web

from api.keys import CELERY, JOB_QUEUE, SETTINGS
from models.states import JobStatus
from models.tables import Job
from workers.job_queue import JobQueue, RedisPublisher, is_redis_broker

log = logging.getLogger(__name__)

FAULT_EXIT_CODE = 70
# The most jobs one batch sends; more waiting go in the next batch.
BATCH = 64

SendMany = Callable[[Sequence[tuple[str, str]]], Awaitable[int]]


class JobSender:
    """The API process's one sender: jobs in, batches out to the broker."""

    def __init__(self, send_many: SendMany) -> None:
        self._send_many = send_many
        self._waiting: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self._task = asyncio.create_task(self._send_forever())

    def submit(self, job_id: str, host: str) -> None:
        """Queue a committed job for sending; returns at once."""
        self._waiting.put_nowait((job_id, host))

    async def drain(self) -> None:
        """Send every job still waiting, then stop."""
        await self._waiting.join()
        self._task.cancel()

    async def _send_forever(self) -> None:
        while True:
            batch = [await self._waiting.get()]
            while len(batch) < BATCH and not self._waiting.empty():
                batch.append(self._waiting.get_nowait())
            try:
                await self._send_many(batch)
            except Exception:  # never: send_many logs its failures; the sweep resends
                log.exception("sending %d jobs failed; the sweep will retry", len(batch))
            finally:
                for _ in batch:
                    self._waiting.task_done()


SENDER = web.AppKey("job_sender", JobSender)


def send_after_commit(request: web.Request, job: Job) -> None:
    """Send a pending job to its host's workers (any worker if it has none) in the background."""
    if job.status != JobStatus.PENDING.value:
        return
    if request.app[SETTINGS].fault_after_commit:
        log.critical("fault injection: exiting between commit and dispatch of %s", job.job_id)
        os._exit(FAULT_EXIT_CODE)
    request.app[SENDER].submit(job.job_id, job.host)


async def drain_sends(app: web.Application) -> AsyncIterator[None]:
    """Cleanup context: the sender, which sends the jobs still waiting when the app stops."""
    broker_url = app[SETTINGS].broker_url
    if not is_redis_broker(broker_url):
        app[SENDER] = JobSender(_in_a_thread(app[JOB_QUEUE]))
        yield
        await app[SENDER].drain()
        return
    publisher = RedisPublisher(app[CELERY], app[SETTINGS].queue, broker_url)
    app[SENDER] = JobSender(publisher.send_many)
    try:
        yield
        await app[SENDER].drain()
    finally:
        await publisher.close()


def _in_a_thread(job_queue: JobQueue) -> SendMany:
    """Celery's producer (the embedded broker's path): one thread hop per batch."""

    async def send_many(jobs: Sequence[tuple[str, str]]) -> int:
        return await asyncio.to_thread(job_queue.send_many, jobs)

    return send_many
