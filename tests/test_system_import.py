"""A system-image import runs through the job pipeline, so a lost import is rescued."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from imagesvc.bootstrap import Services
from models.images import SystemImageSpec, import_image
from models.jobs import claim_job
from models.tables import Job, utcnow
from tests.support.contract import TERMINAL
from tests.support.tenants import Tenant
from tests.support.waiting import wait_for_async
from workers.job_sweep import rescue_lost

# It makes a public image, and its sweep rescues every lost job of the deployment.
pytestmark = pytest.mark.own_deployment


async def test_an_import_whose_worker_died_is_rescued_by_the_sweep(
    tenant: Tenant, raw_disk: Path, services: Services
) -> None:
    spec = SystemImageSpec(zone="ac1", image_name="debian-rescued", os_family="debian")
    with services.database.transaction() as session:
        recorded = import_image(session, spec, str(raw_disk))
        job_id, image_id = recorded.job.job_id, recorded.image.image_id
    # A worker claimed it and died: its heartbeat stopped long ago.
    with services.database.transaction() as session:
        assert claim_job(session, job_id, "dead-worker") is not None
        silent_since = utcnow() - timedelta(minutes=10)
        session.execute(update(Job).where(Job.job_id == job_id).values(heartbeat_at=silent_since))

    assert rescue_lost(services) == [job_id]

    job = await _finished(services, job_id)
    assert (job.status, job.attempts) == ("successful", 2)
    image = await tenant.image(image_id)  # public: every tenant sees it
    assert (image["status"], image["provider"], image["visibility"]) == (
        "available",
        "system",
        "public",
    )


async def _finished(services: Services, job_id: str, timeout: float = 60.0) -> Job:
    """Poll the job row as the operator's import command does."""

    async def fetch() -> Job:
        with services.database.reading() as session:
            return session.get_one(Job, job_id)

    return await wait_for_async(
        fetch,
        lambda job: job.status in TERMINAL,
        f"import job {job_id} settles",
        timeout=timeout,
        interval=0.1,
    )
