"""Sending committed jobs to the workers, off the request's path.

The job row is committed before it is sent, so a slow or absent broker never
delays a response and never loses a job: whatever is not sent now, the
scheduler's sweep sends later. Sends still in flight finish before the API
process stops.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator

from aiohttp import web

from api.keys import IN_FLIGHT, JOB_QUEUE, SETTINGS
from models.states import JobStatus
from models.tables import Job

log = logging.getLogger(__name__)

FAULT_EXIT_CODE = 70


def send_after_commit(request: web.Request, job: Job) -> None:
    """Send a pending job to its host's workers (any worker if it has none) in the background."""
    if job.status != JobStatus.PENDING.value:
        return
    if request.app[SETTINGS].fault_after_commit:
        log.critical("fault injection: exiting between commit and dispatch of %s", job.job_id)
        os._exit(FAULT_EXIT_CODE)
    sender = request.app[JOB_QUEUE]
    task = asyncio.create_task(asyncio.to_thread(sender.send, job.job_id, job.host))
    in_flight = request.app[IN_FLIGHT]
    in_flight.add(task)
    task.add_done_callback(in_flight.discard)


async def drain_sends(app: web.Application) -> AsyncIterator[None]:
    """Cleanup context: wait for sends in flight when the app stops."""
    app[IN_FLIGHT] = set()
    yield
    if app[IN_FLIGHT]:
        await asyncio.gather(*app[IN_FLIGHT], return_exceptions=True)
