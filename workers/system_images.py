"""Disks the operator names: inspect an instance's disk, import a public system image.

An import is recorded as an image and a job, and runs on a worker like a
capture, so a crash in the middle is recovered like any other job.
"""

from __future__ import annotations

import time
from pathlib import Path

from imagesvc.bootstrap import Services
from models.errors import InvalidParameter
from models.images import SystemImageSpec, import_image
from models.states import JobStatus
from models.tables import Job
from workers.disk import DiskError, DiskFormat, detect_format, virtual_size

POLL_INTERVAL_S = 0.2


def import_system_image(
    services: Services, disk: Path, spec: SystemImageSpec, timeout: float = 3600.0
) -> str:
    """Copy ``disk`` into the store as a public system image, through a worker; its id.

    The copy runs on a worker of ``spec.host``, where ``disk`` must be readable.
    Waits for the job; InvalidParameter if the disk is unreadable or the copy fails.
    """
    inspect_disk(disk)
    with services.database.transaction() as session:
        recorded = import_image(session, spec, str(disk))
        job_id, image_id = recorded.job.job_id, recorded.image.image_id
    services.job_queue.send(job_id, spec.host)
    job = _wait_for(services, job_id, timeout)
    if job.status != JobStatus.SUCCESSFUL:
        raise InvalidParameter(f"import of {disk.name} failed: {job.error_message}")
    return image_id


def _wait_for(services: Services, job_id: str, timeout: float) -> Job:
    deadline = time.monotonic() + timeout
    while True:
        with services.database.reading() as session:
            job = session.get(Job, job_id)
        assert job is not None, f"job {job_id} vanished"
        if JobStatus(job.status).is_terminal:
            return job
        if time.monotonic() > deadline:
            raise InvalidParameter(f"import job {job_id} did not finish in {timeout:.0f} s")
        time.sleep(POLL_INTERVAL_S)


def inspect_disk(disk: Path) -> tuple[DiskFormat, int]:
    """Format and virtual size of an operator-given disk; InvalidParameter if unreadable."""
    try:
        disk_format = detect_format(disk)
        return disk_format, virtual_size(disk, disk_format)
    except DiskError as exc:
        raise InvalidParameter(f"disk {disk}: {exc}") from exc
