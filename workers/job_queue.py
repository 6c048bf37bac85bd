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
import re
import uuid
from collections.abc import Sequence
from typing import Any

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
# Where a message's own values go in its template (a JSON string of the marker's name).
_MARKER = re.compile(r'"@@(task_id|body|argsrepr|delivery_tag)@@"')
# Templates kept per routing key (the shared queue and each host's): more hosts than
# this are not expected; past it the templates are simply made again.
_MAX_TEMPLATES = 1024


def _message(routing_key: str, origin: str, reply_to: str) -> dict[str, Any]:
    """The ``RUN_JOB`` message, byte for byte (once encoded) the JSON kombu's Redis
    transport pushes for ``Celery.send_task`` (protocol 2, json, base64 body, priority
    0, the anonymous exchange), but its own values: each is the marker of its name.
    ``tests/test_dispatch.py`` compares the two."""
    return {
        "body": "@@body@@",
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py",
            "task": RUN_JOB,
            "id": "@@task_id@@",
            "shadow": None,
            "eta": None,
            "expires": None,
            "group": None,
            "group_index": None,
            "retries": 0,
            "timelimit": [None, None],
            "root_id": "@@task_id@@",
            "parent_id": None,
            "argsrepr": "@@argsrepr@@",
            "kwargsrepr": "{}",
            "origin": origin,
            "ignore_result": None,
            "replaced_task_nesting": 0,
            "stamped_headers": None,
            "stamps": {},
        },
        "properties": {
            "correlation_id": "@@task_id@@",
            "reply_to": reply_to,
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": routing_key},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": "@@delivery_tag@@",
        },
    }


class TaskMessages:
    """``RUN_JOB`` messages (:func:`_message`), from a template made once per routing
    key: the message's JSON split where its own values go. Building and encoding the
    whole message for each job was half of what publishing a job cost the API."""

    # The body's JSON after the job's arguments (kwargs, embed): the same for every job.
    # Encoding only the arguments per job saves nearly 1 % of a capture's instructions
    # over encoding the whole body; the dispatch test checks the bytes against kombu's.
    _BODY_TAIL = ", {}, " + json.dumps(_EMBED) + "]"

    def __init__(self, origin: str, reply_to: str) -> None:
        self._origin = origin
        self._reply_to = reply_to
        self._templates: dict[str, list[str]] = {}

    def message(self, job_id: str, routing_key: str) -> bytes:
        """The ``RUN_JOB`` message for ``job_id`` on ``routing_key``."""
        parts = self._templates.get(routing_key) or self._template(routing_key)
        body = f"[[{json.dumps(job_id)}]{self._BODY_TAIL}".encode()
        values = {
            "task_id": f'"{uuid.uuid4()}"',
            "body": f'"{base64.b64encode(body).decode()}"',
            "argsrepr": json.dumps(repr([job_id])),
            "delivery_tag": f'"{uuid.uuid4()}"',
        }
        # Even parts are the template's text, odd ones the names of the values between.
        return "".join(values[part] if at % 2 else part for at, part in enumerate(parts)).encode()

    def _template(self, routing_key: str) -> list[str]:
        if len(self._templates) >= _MAX_TEMPLATES:
            self._templates.clear()
        text = json.dumps(_message(routing_key, self._origin, self._reply_to))
        parts = self._templates[routing_key] = _MARKER.split(text)
        return parts


class RedisPublisher:
    """Pushes ``RUN_JOB`` messages to a Redis broker from the event loop: one pipeline
    (one round trip) per batch, no thread, no kombu producer. The messages are what
    :meth:`JobQueue.send_many` pushes through kombu (built by :class:`TaskMessages`),
    so the workers consume them unchanged."""

    def __init__(self, app: Celery, queue: str, broker_url: str) -> None:
        self._queue = queue
        # The event loop's thread is the app's: kombu's reply_to too.
        self._messages = TaskMessages(anon_nodename(), str(app.thread_oid))
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
                    pipeline.lpush(queue, self._messages.message(job_id, queue))
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
