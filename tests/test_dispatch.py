"""A job that never reached a worker is sent again by the scheduler; one sent twice runs once."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from imagesvc.bootstrap import Services
from imagesvc.settings import Settings
from models.db import Database
from models.tables import Job, utcnow
from tests.support.disks import stored_file
from tests.support.processes import ServiceProcess
from tests.support.tenants import Tenant

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
