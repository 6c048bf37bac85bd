"""Sending jobs to workers, by task name only: senders never import the task bodies.

Jobs with disk work go to their compute host's queue (``<queue>.host.<name>``),
which only that host's workers consume; every other job and the sweeps go to
the shared queue, which every worker consumes. A job that fails to send stays
pending; the sweep sends it again, to the same host.
"""

from __future__ import annotations

import base64
import json
import logging
import uuid
from collections.abc import Sequence

import redis.asyncio
from celery import Celery
from celery.utils.nodenames import anon_nodename
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


# A task message's body as Celery's protocol 2 writes it for ``RUN_JOB``: args, kwargs,
# embed (no callbacks, errbacks, chain or chord), serialised by kombu's json.
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
# How long the event loop's publisher waits for Redis before it gives a batch up.
PUBLISH_TIMEOUT_S = 3.0


def task_message(job_id: str, routing_key: str, origin: str, reply_to: str) -> bytes:
    """The ``RUN_JOB`` message for ``job_id``, byte for byte the JSON kombu's Redis
    transport pushes for ``Celery.send_task`` (protocol 2, json, base64 body, priority
    0, the anonymous exchange): ``tests/test_dispatch.py`` compares the two."""
    task_id = str(uuid.uuid4())
    body = json.dumps([[job_id], {}, _EMBED]).encode()
    message = {
        "body": base64.b64encode(body).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py",
            "task": RUN_JOB,
            "id": task_id,
            "shadow": None,
            "eta": None,
            "expires": None,
            "group": None,
            "group_index": None,
            "retries": 0,
            "timelimit": [None, None],
            "root_id": task_id,
            "parent_id": None,
            "argsrepr": repr([job_id]),
            "kwargsrepr": "{}",
            "origin": origin,
            "ignore_result": None,
            "replaced_task_nesting": 0,
            "stamped_headers": None,
            "stamps": {},
        },
        "properties": {
            "correlation_id": task_id,
            "reply_to": reply_to,
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": routing_key},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    return json.dumps(message).encode()


class RedisPublisher:
    """Pushes ``RUN_JOB`` messages to a Redis broker from the event loop: one pipeline
    (one round trip) per batch, no thread, no kombu producer. The messages are what
    :meth:`JobQueue.send_many` pushes through kombu (:func:`task_message`), so the
    workers consume them unchanged."""

    def __init__(self, app: Celery, queue: str, broker_url: str) -> None:
        self._queue = queue
        self._origin = anon_nodename()
        self._reply_to = str(app.thread_oid)  # the event loop's thread: kombu's too
        self._redis = redis.asyncio.Redis.from_url(
            broker_url,
            socket_timeout=PUBLISH_TIMEOUT_S,
            socket_connect_timeout=PUBLISH_TIMEOUT_S,
        )

    async def send_many(self, jobs: Sequence[tuple[str, str]]) -> int:
        """Push each ``(job_id, host)`` to its queue in one pipeline; the number sent.
        A batch Redis refuses is logged and left pending, for the sweep."""
        try:
            async with self._redis.pipeline(transaction=False) as pipeline:
                for job_id, host in jobs:
                    queue = host_queue(self._queue, host) if host else self._queue
                    pipeline.lpush(queue, task_message(job_id, queue, self._origin, self._reply_to))
                await pipeline.execute()
        except Exception:  # the broker is away or refused the batch: the rows stay pending
            log.warning("could not send %d jobs; the sweep will retry", len(jobs), exc_info=True)
            return 0
        return len(jobs)

    async def close(self) -> None:
        await self._redis.aclose()


def is_redis_broker(broker_url: str) -> bool:
    """Whether :class:`RedisPublisher` publishes to ``broker_url``: plain Redis (TLS, Sentinel
    and the embedded broker keep Celery's producer, in a thread)."""
    return broker_url.startswith("redis://")
