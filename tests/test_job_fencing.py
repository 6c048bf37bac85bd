"""A run given up for lost that wakes up must change nothing: the job is its successor's.

The sweep requeues a job whose worker went silent; a second run claims it.
If the first run then reaches its end, its attempt number no longer matches
and every move it tries is refused, images included.
"""

from __future__ import annotations

from pathlib import Path

from imagesvc.bootstrap import Services
from models.images import delete_images
from models.jobs import claim_job, requeue_job
from models.scoping import Caller
from models.states import JobAction
from models.tables import Image, Job
from tests.support.tenants import Tenant
from workers.heartbeat import Heartbeat
from workers.job_runner import ClaimedJob, run_batch


def _start_delete_unsent(services: Services, tenant: Tenant, image_id: str) -> str:
    """A delete job recorded as the API records it, but never sent to a worker."""
    with services.database.transaction() as session:
        return delete_images(session, Caller(tenant.account_id, tenant.zone), [image_id]).job_id


def _claim(services: Services, job_id: str, worker: str) -> ClaimedJob:
    with services.database.transaction() as session:
        job = claim_job(session, job_id, worker)
        assert job is not None
        return ClaimedJob(job_id, JobAction(job.action), job.zone, job.resource_ids, job.attempts)


def _state(services: Services, job_id: str, image_id: str) -> tuple[str, int, str, str]:
    with services.database.reading() as session:
        job, image = session.get(Job, job_id), session.get(Image, image_id)
        assert job is not None and image is not None
        return job.status, job.attempts, image.status, image.transition_status


def _finish(services: Services, run: ClaimedJob) -> None:
    heartbeat = Heartbeat(services.database, run.job_id, run.attempt, interval=60.0)
    run_batch(services, run, heartbeat)


async def test_a_superseded_delete_run_changes_nothing(
    tenant: Tenant, raw_disk: Path, services: Services
) -> None:
    image_id = await tenant.captured_image(raw_disk)
    job_id = _start_delete_unsent(services, tenant, image_id)
    lost = _claim(services, job_id, "lost-worker")
    with services.database.transaction() as session:
        assert requeue_job(session, job_id, lost.attempt)
    successor = _claim(services, job_id, "successor")
    before = _state(services, job_id, image_id)
    assert before == ("working", 2, "available", "deleting")

    _finish(services, lost)  # the lost run wakes up and reaches its end
    assert _state(services, job_id, image_id) == before

    _finish(services, successor)
    assert _state(services, job_id, image_id) == ("successful", 2, "deleted", "")
