"""Running a job: claim it, do the work, record the outcome in one transaction.

Every step is a compare-and-set on the job and image rows, so a duplicate
delivery of the same job does nothing and a job is never finished twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from models.images import size_in_gb
from models.jobs import claim_job, fail_job, move_job, record_progress
from models.states import ImageAction, JobAction, JobStatus
from models.transitions import move_images
from workers.context import WorkerContext
from workers.disk import DiskError, DiskFormat, StoredDisk, store_disk

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 2.0


@dataclass(frozen=True)
class ClaimedJob:
    job_id: str
    action: JobAction
    zone: str
    resource_ids: list[str]
    attempt: int


class JobFailure(Exception):
    """An expected failure: the job fails with this code and message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def execute_job(context: WorkerContext, job_id: str) -> None:
    """Run one job if it is still pending; a no-op for any other status."""
    job = _claim(context, job_id)
    if job is None:
        log.info("job %s is not pending; nothing to do", job_id)
        return
    handler = _HANDLERS[job.action]
    try:
        handler(context, job)
    except Exception:
        log.exception("job %s failed unexpectedly", job_id)
        _ABANDON[job.action](context, job, "InternalError", "internal error; see the worker log")


def _claim(context: WorkerContext, job_id: str) -> ClaimedJob | None:
    with context.database.transaction() as session:
        job = claim_job(session, job_id)
        if job is None:
            return None
        return ClaimedJob(job_id, JobAction(job.action), job.zone, job.resource_ids, job.attempts)


def run_capture(context: WorkerContext, job: ClaimedJob) -> None:
    image_id, instance_id = job.resource_ids
    try:
        stored = _copy_instance_disk(context, job, image_id, instance_id)
    except JobFailure as failure:
        abandon_capture(context, job, failure.code, failure.message)
        return
    _finish_capture(context, job, image_id, stored)


def _copy_instance_disk(
    context: WorkerContext, job: ClaimedJob, image_id: str, instance_id: str
) -> StoredDisk:
    instance = context.inventory.find(job.zone, instance_id)
    if instance is None:
        raise JobFailure("InstanceNotFound", f"instance {instance_id} no longer exists")
    disk_format = DiskFormat(instance.disk_format)
    target = context.settings.image_dir / f"{image_id}.{disk_format.value}"
    try:
        return store_disk(
            Path(instance.disk_path),
            disk_format,
            target,
            partial_name=f"{job.job_id}.{job.attempt}",
            on_progress=ProgressReporter(context, job.job_id),
        )
    except DiskError as exc:
        raise JobFailure(exc.code, f"capture of instance {instance_id} failed: {exc}") from exc


class _Superseded(Exception):
    """The image or job moved on while the disk was being copied."""


def _finish_capture(
    context: WorkerContext, job: ClaimedJob, image_id: str, stored: StoredDisk
) -> None:
    try:
        with context.database.transaction() as session:
            available = move_images(
                session,
                [image_id],
                ImageAction.FINISH_CAPTURE,
                size=size_in_gb(stored.virtual_size),
                virtual_size=stored.virtual_size,
                byte_size=stored.byte_size,
                disk_format=stored.disk_format.value,
                checksum=stored.checksum,
                file_name=stored.path.name,
            )
            if available != 1 or not move_job(
                session, job.job_id, JobStatus.SUCCESSFUL, progress=100
            ):
                raise _Superseded
    except _Superseded:
        # Someone else settled this image or job meanwhile: the copy is nobody's.
        stored.path.unlink(missing_ok=True)
        log.warning("capture job %s finished after its image %s moved on", job.job_id, image_id)


def abandon_capture(context: WorkerContext, job: ClaimedJob, code: str, message: str) -> None:
    """Fail the job and cease the image it was creating."""
    image_id = job.resource_ids[0]
    with context.database.transaction() as session:
        move_images(session, [image_id], ImageAction.FAIL_CAPTURE)
        fail_job(session, job.job_id, code, message)


def run_delete(context: WorkerContext, job: ClaimedJob) -> None:
    """Finish deleting; the files stay until the image is ceased."""
    _finish_batch(context, job, ImageAction.FINISH_DELETE)


def run_recover(context: WorkerContext, job: ClaimedJob) -> None:
    """Finish recovering: the images are available again (not deprecated), files untouched."""
    _finish_batch(context, job, ImageAction.FINISH_RECOVER, deprecated_at=None)


def _finish_batch(
    context: WorkerContext, job: ClaimedJob, action: ImageAction, **values: object
) -> None:
    with context.database.transaction() as session:
        moved = move_images(session, job.resource_ids, action, **values)
        if moved == len(job.resource_ids):
            move_job(session, job.job_id, JobStatus.SUCCESSFUL, progress=100)
            return
        move_job(
            session,
            job.job_id,
            JobStatus.DONE_WITH_FAILURE,
            progress=100,
            error_code="ImagesChanged",
            error_message=f"{len(job.resource_ids) - moved} image(s) changed meanwhile",
        )


def abandon_batch(context: WorkerContext, job: ClaimedJob, code: str, message: str) -> None:
    with context.database.transaction() as session:
        fail_job(session, job.job_id, code, message)


class ProgressReporter:
    """Records copy progress on the job row, at most every few seconds."""

    def __init__(self, context: WorkerContext, job_id: str) -> None:
        self._context = context
        self._job_id = job_id
        self._last = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self._last < PROGRESS_EVERY_S:
            return
        self._last = now
        percent = 99 if total == 0 else min(99, done * 100 // total)
        with self._context.database.transaction() as session:
            record_progress(session, self._job_id, percent)


Handler = Callable[[WorkerContext, ClaimedJob], None]
Abandon = Callable[[WorkerContext, ClaimedJob, str, str], None]

_HANDLERS: dict[JobAction, Handler] = {
    JobAction.CAPTURE_INSTANCE: run_capture,
    JobAction.DELETE_IMAGES: run_delete,
    JobAction.RECOVER_IMAGES: run_recover,
}
_ABANDON: dict[JobAction, Abandon] = {
    JobAction.CAPTURE_INSTANCE: abandon_capture,
    JobAction.DELETE_IMAGES: abandon_batch,
    JobAction.RECOVER_IMAGES: abandon_batch,
}
