"""The API sends committed jobs (in bursts, and on shutdown); the scheduler sends again a job
that never reached a worker; a job sent twice runs once."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import pytest
import redis
from aiohttp.test_utils import TestClient
from sqlalchemy import update

from api.app import create_app
from api.job_sending import BATCH, SENDER
from imagesvc.bootstrap import Services
from imagesvc.settings import Settings
from models.db import Database
from models.images import delete_images
from models.scoping import Caller
from models.tables import Job, utcnow
from tests.support.disks import MiB, stored_file
from tests.support.processes import ServiceProcess
from tests.support.records import Records
from tests.support.tenants import Tenant
from workers.job_queue import RUN_JOB, RedisPublisher, host_queue, is_redis_broker

# Its scheduler resends and sweeps across the whole deployment.
pytestmark = pytest.mark.own_deployment


def unsent_capture(tenant: Tenant, database: Database, disk: Path) -> tuple[str, str]:
    """A capture recorded as the API does, as if the API died before sending it."""
    job_id, image_id = tenant.record_capture(disk)
    with database.transaction() as session:
        session.execute(
            update(Job)
            .where(Job.job_id == job_id)
            .values(send_requested_at=utcnow() - timedelta(minutes=5))
        )
    return job_id, image_id


async def test_the_scheduler_sends_a_job_the_api_never_sent(
    tenant: Tenant, raw_disk: Path, database: Database, service_settings: Settings
) -> None:
    job_id, image_id = unsent_capture(tenant, database, raw_disk)
    scheduler = ServiceProcess(service_settings, "scheduler")
    try:
        job = await tenant.wait_job(job_id, timeout=60)
    finally:
        scheduler.stop()
    assert job["status"] == "successful", job
    assert (await tenant.image(image_id))["status"] == "available"


async def test_a_job_delivered_twice_runs_once(
    tenant: Tenant, raw_disk: Path, services: Services, service_settings: Settings
) -> None:
    database = services.database
    job_id, image_id = unsent_capture(tenant, database, raw_disk)
    assert all(services.job_queue.send(job_id) for _ in range(5))
    job = await tenant.wait_job(job_id)
    assert job["status"] == "successful", job
    with database.reading() as session:
        assert session.get(Job, job_id).attempts == 1  # type: ignore[union-attr]
    assert stored_file(service_settings.image_dir, image_id).name == f"{image_id}.1.raw"


async def test_a_burst_of_captures_is_sent_by_the_api_itself(
    tenant: Tenant, disk_factory: Any, database: Database
) -> None:
    # No scheduler runs here: every job must reach a worker through the API's
    # sender, which sends what waits in batches; none is left to the sweep
    # (whose resend would have stamped send_requested_at again).
    instances = [tenant.add_instance(disk_factory(size=4 * MiB, regions=1)) for _ in range(8)]
    replies = await asyncio.gather(*(tenant.capture(i) for i in instances))
    assert [reply.status for reply in replies] == [202] * 8, replies
    for reply in replies:
        assert (await tenant.wait_job(reply.body["job_id"]))["status"] == "successful"
    with database.reading() as session:
        jobs = [session.get(Job, reply.body["job_id"]) for reply in replies]
        assert all(job and job.send_requested_at == job.create_time for job in jobs), jobs


async def test_jobs_waiting_to_be_sent_are_sent_when_the_api_stops(
    tenant: Tenant,
    database: Database,
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    service_settings: Settings,
) -> None:
    # An API whose sender holds more than a batch of committed jobs is stopped at
    # once: all of them must still reach the worker (no scheduler runs here).
    stopping = await aiohttp_client(create_app(service_settings))
    records, caller = Records(database), Caller(tenant.account_id, tenant.zone)
    images = [records.image(caller) for _ in range(2 * BATCH + 10)]
    with database.transaction() as session:
        job_ids = [delete_images(session, caller, [image]).job_id for image in images]
    for job_id in job_ids:
        stopping.app[SENDER].submit(job_id, "")
    await stopping.close()
    for job_id in job_ids:
        assert (await tenant.wait_job(job_id))["status"] == "successful"


async def test_the_apis_redis_publisher_pushes_what_celerys_producer_pushes(
    services: Services, service_settings: Settings
) -> None:
    # The API publishes on the event loop without kombu (RedisPublisher); a worker reads
    # its messages as Celery's own: the bytes must be kombu's but for the fresh uuids.
    if not is_redis_broker(service_settings.broker_url):
        pytest.skip("the embedded broker's jobs are sent through Celery's producer")
    queue = f"{service_settings.queue}-probe"
    jobs = [("j-probe001", ""), ("j-probe002", "host-a")]
    client = redis.Redis.from_url(service_settings.broker_url)
    names = [queue, host_queue(queue, "host-a")]
    try:
        for job_id, host in jobs:
            services.celery.send_task(
                RUN_JOB, args=[job_id], queue=host_queue(queue, host) if host else queue
            )
        publisher = RedisPublisher(services.celery, queue, service_settings.broker_url)
        try:
            assert await publisher.send_many(jobs) == 2
        finally:
            await publisher.close()
        for name in names:
            ours, kombus = cast(list[bytes], client.lrange(name, 0, -1))  # newest first
            assert _without_uuids(ours) == _without_uuids(kombus)
            message = json.loads(ours)
            headers, properties = message["headers"], message["properties"]
            assert headers["id"] != json.loads(kombus)["headers"]["id"]
            # One task id in its three places, as Celery writes it; a delivery tag of its own.
            assert headers["id"] == headers["root_id"] == properties["correlation_id"]
            assert properties["delivery_tag"] not in (headers["id"], None)
    finally:
        client.delete(*names)
        client.close()


_UUID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _without_uuids(message: bytes) -> bytes:
    return _UUID.sub(b"<uuid>", message)
