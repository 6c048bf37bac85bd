"""The job sweep: send jobs nobody claimed, and rescue jobs whose worker went silent."""

from __future__ import annotations

import logging

from imagesvc.bootstrap import Services
from models.job_failures import FailedRun, fail_and_give_back
from models.jobs import LostJob, lost_jobs, requeue_job, take_jobs_to_resend
from models.sweep_lock import sweep_lock
from workers import job_metrics

log = logging.getLogger(__name__)


def sweep_jobs(services: Services) -> None:
    """One pass; safe to run concurrently with workers and with itself.

    Any number of schedulers may ask for it; on PostgreSQL a pass that finds
    another one running skips (see :mod:`models.sweep_lock`).
    """
    with sweep_lock(services.database, "jobs") as mine:
        if not mine:
            log.info("job sweep: another pass is running; skipped")
            return
        resend_unclaimed(services)
        rescue_lost(services)


def resend_unclaimed(services: Services) -> None:
    """Send again, each to its own host, the pending jobs nobody claimed within the grace.

    A job whose host has no live worker waits in that host's queue, and is sent
    there again at each grace: never to another host.
    """
    with services.database.transaction() as session:
        jobs = take_jobs_to_resend(session, services.settings.dispatch_grace)
    for job in jobs:
        services.job_queue.send(job.job_id, job.host)
    if jobs:
        sent = [f"{job.job_id}@{job.host or '*'}" for job in jobs]
        log.info("sent unclaimed jobs again", extra={"jobs": sent})


def rescue_lost(services: Services) -> list[str]:
    """Requeue working jobs whose heartbeat stopped; fail them after too many runs."""
    with services.database.reading() as session:
        lost = lost_jobs(session, services.settings.heartbeat_timeout)
    rescued = []
    for job in lost:
        if job.attempt >= services.settings.max_attempts:
            _give_up(services, job)
            continue
        with services.database.transaction() as session:
            requeued = requeue_job(session, job.job_id, job.attempt)
        if requeued:
            log.warning("job lost its worker; requeued", extra=_lost_fields(job))
            services.job_queue.send(job.job_id, job.host)
            rescued.append(job.job_id)
    return rescued


def _give_up(services: Services, job: LostJob) -> None:
    message = f"the job's worker was lost {job.attempt} times; giving up"
    failed = FailedRun(job.job_id, job.action, job.resource_ids, job.attempt, "WorkerLost", message)
    with services.database.transaction() as session:
        gave_up = fail_and_give_back(session, failed)
    if not gave_up:
        return  # its run came back and settled it meanwhile
    job_metrics.job_given_up(job.action)
    fields = _lost_fields(job) | {"status": "failed", "error_code": "WorkerLost", "error": message}
    log.error("job failed", extra=fields)


def _lost_fields(job: LostJob) -> dict[str, object]:
    return {"job_id": job.job_id, "action": job.action.value, "attempt": job.attempt}
