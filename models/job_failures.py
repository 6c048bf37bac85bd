"""One way to fail a job: the job fails, and its images are given back as its action says.

The worker (a run that hit an error) and the job sweep (a job whose worker was
lost too often) both fail jobs through :func:`fail_and_give_back`, so what
happens to the images of a failed job is decided once, in :data:`GIVE_BACK`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.orm import Session

from models.jobs import fail_job
from models.states import ImageAction, JobAction
from models.transitions import move_images


@dataclass(frozen=True)
class GiveBack:
    """What a failed job does to its images: ``action`` on the ids ``images`` picks."""

    action: ImageAction
    images: Callable[[list[str]], list[str]]


def _first(resource_ids: list[str]) -> list[str]:
    return resource_ids[:1]  # [image, its source]: only the image moves


def _all(resource_ids: list[str]) -> list[str]:
    return list(resource_ids)


GIVE_BACK: dict[JobAction, GiveBack] = {
    # The image being created is ceased: it never became usable.
    JobAction.CAPTURE_INSTANCE: GiveBack(ImageAction.FAIL_CAPTURE, _first),
    JobAction.IMPORT_IMAGE: GiveBack(ImageAction.FAIL_CAPTURE, _first),
    # Deleting or recovering images return to what they were before the job.
    JobAction.DELETE_IMAGES: GiveBack(ImageAction.CANCEL_DELETE, _all),
    JobAction.RECOVER_IMAGES: GiveBack(ImageAction.CANCEL_RECOVER, _all),
}


@dataclass(frozen=True)
class FailedRun:
    """A run of a job that is to fail, and why."""

    job_id: str
    action: JobAction
    resource_ids: list[str]
    attempt: int
    code: str
    message: str


def fail_and_give_back(session: Session, run: FailedRun) -> bool:
    """Fail the job if this run still owns it, and give its images back; False if not its own."""
    if not fail_job(session, run.job_id, run.code, run.message, attempt=run.attempt):
        return False
    give_back = GIVE_BACK[run.action]
    move_images(session, give_back.images(run.resource_ids), give_back.action)
    return True
