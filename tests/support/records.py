"""Rows for domain tests, made through the domain functions the service itself calls."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import update
from sqlalchemy.orm import Session

from models.accounts import create_account
from models.db import Database
from models.images import SYSTEM_OWNER, Capture, CaptureRequest, capture_instance
from models.instances import InstanceInfo, NewInstance, add_instance, instance_info
from models.jobs import claim_job, move_job
from models.quotas import Quota
from models.scoping import Caller
from models.states import (
    ImageAction,
    ImageStatus,
    InstanceStatus,
    JobStatus,
    Provider,
    TransitionStatus,
    Visibility,
)
from models.tables import Image, Job, utcnow
from models.transitions import move_images
from tests.support.disks import GiB
from tests.support.tenants import UNLIMITED


def age_image(database: Database, image_id: str, seconds: float) -> None:
    """As if the image's status had last changed ``seconds`` ago."""
    with database.transaction() as session:
        session.execute(
            update(Image)
            .where(Image.image_id == image_id)
            .values(status_time=utcnow() - timedelta(seconds=seconds))
        )


@dataclass
class Records:
    """Accounts, instances, images and jobs in one test's own database."""

    database: Database

    def account(self, zone: str = "ac1") -> Caller:
        with self.database.transaction() as session:
            credentials = create_account(session, f"domain-{secrets.token_hex(3)}")
        return Caller(credentials.account_id, zone)

    def instance(
        self, caller: Caller, size: int = GiB, status: InstanceStatus = InstanceStatus.STOPPED
    ) -> str:
        with self.database.transaction() as session:
            return _add_instance(session, caller, size, status).instance_id

    def capture(
        self,
        caller: Caller,
        size: int = GiB,
        quota: Quota = UNLIMITED,
        request_id: str | None = None,
    ) -> Capture:
        """A recorded capture (image pending/creating, job pending) of a new instance."""
        with self.database.transaction() as session:
            return _capture(session, caller, size, quota, request_id)

    def image(self, caller: Caller, size: int = GiB) -> str:
        """An available image of the caller's, its capture job successful."""
        with self.database.transaction() as session:
            return _finished_capture(session, caller, size)

    def images_in(
        self, caller: Caller, states: list[tuple[ImageStatus, TransitionStatus]]
    ) -> dict[tuple[ImageStatus, TransitionStatus], str]:
        """One image of the caller's in each of ``states``, put there directly."""
        with self.database.transaction() as session:
            made = {
                state: _capture(session, caller, GiB, UNLIMITED, None).image.image_id
                for state in states
            }
            for (status, transition), image_id in made.items():
                session.execute(
                    update(Image)
                    .where(Image.image_id == image_id)
                    .values(status=status.value, transition_status=transition.value)
                )
        return made

    def system_image(self, zone: str = "ac1") -> str:
        """A public image the platform ships, available (an image made public and system's)."""
        image_id = self.image(self.account(zone))
        with self.database.transaction() as session:
            session.execute(
                update(Image)
                .where(Image.image_id == image_id)
                .values(
                    owner=SYSTEM_OWNER,
                    provider=Provider.SYSTEM.value,
                    visibility=Visibility.PUBLIC.value,
                )
            )
        return image_id

    def image_state(self, image_id: str) -> tuple[str, str]:
        with self.database.reading() as session:
            image = session.get(Image, image_id)
            assert image is not None, image_id
            return image.status, image.transition_status

    def job(self, job_id: str) -> Job:
        with self.database.reading() as session:
            job = session.get(Job, job_id)
            assert job is not None, job_id
            return job


def _add_instance(
    session: Session, caller: Caller, size: int, status: InstanceStatus
) -> InstanceInfo:
    new = NewInstance(caller.zone, caller.account_id, "/nowhere.raw", "raw", size, status)
    return instance_info(add_instance(session, new))


def _capture(
    session: Session, caller: Caller, size: int, quota: Quota, request_id: str | None
) -> Capture:
    instance = _add_instance(session, caller, size, InstanceStatus.STOPPED)
    wanted = CaptureRequest(instance.instance_id, instance, "img", request_id)
    return capture_instance(session, caller, wanted, quota)


def _finished_capture(session: Session, caller: Caller, size: int) -> str:
    capture = _capture(session, caller, size, UNLIMITED, None)
    job = claim_job(session, capture.job.job_id, "domain-test")
    assert job is not None
    image_id = capture.image.image_id
    assert move_images(session, [image_id], ImageAction.FINISH_CAPTURE) == 1
    assert move_job(session, job.job_id, JobStatus.SUCCESSFUL, attempt=job.attempts)
    return image_id
