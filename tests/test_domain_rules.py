"""Domain rules called directly on a database of the test's own (no HTTP, no worker):
quotas, who sees and changes what, retention, cease and purge, idempotency keys."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update

from models.client_requests import replay
from models.db import Database
from models.errors import (
    AccessDenied,
    InvalidParameter,
    QuotaExceeded,
    ResourceNotFound,
    StateConflict,
)
from models.image_lifecycle import cease_expired, forget_file, purge_ceased
from models.images import ImageFilters, delete_images, list_images, modify_image, recover_images
from models.jobs import get_job, list_jobs
from models.quotas import Quota, require_room, set_quota, usage_of
from models.scoping import Caller
from models.states import ImageAction, ImageStatus, JobAction, TransitionStatus
from models.tables import ClientRequest, Image, utcnow
from models.transitions import move_images
from tests.support.disks import GiB
from tests.support.records import Records, age_image

pytestmark = pytest.mark.domain

RETENTION = 3600.0


def deleted_image(records: Records, database: Database, owner: Caller) -> str:
    image_id = records.image(owner)
    with database.transaction() as session:
        assert move_images(session, [image_id], ImageAction.BEGIN_DELETE) == 1
        assert move_images(session, [image_id], ImageAction.FINISH_DELETE) == 1
    return image_id


# Quotas --------------------------------------------------------------------------


def test_a_capture_past_the_image_count_is_refused_and_records_nothing(
    records: Records, own_database: Database
) -> None:
    owner = records.account()
    quota = Quota(images=2, gb=100)
    records.capture(owner, quota=quota)
    records.capture(owner, quota=quota)
    with pytest.raises(QuotaExceeded, match="2 of 2 images"):
        records.capture(owner, quota=quota)
    with own_database.reading() as session:
        assert usage_of(session, owner.account_id).images == 2


def test_a_capture_past_the_gb_quota_is_refused_naming_both_sizes(records: Records) -> None:
    owner = records.account()
    quota = Quota(images=10, gb=5)
    records.capture(owner, size=3 * GiB, quota=quota)
    with pytest.raises(QuotaExceeded, match="needs 3 GB and 3 of 5 GB"):
        records.capture(owner, size=3 * GiB, quota=quota)
    records.capture(owner, size=2 * GiB, quota=quota)  # exactly full is allowed


def test_ceased_images_give_their_quota_back(records: Records, own_database: Database) -> None:
    owner = records.account()
    image_id = deleted_image(records, own_database, owner)
    with own_database.transaction() as session:
        assert move_images(session, [image_id], ImageAction.CEASE) == 1
        assert usage_of(session, owner.account_id).images == 0
        require_room(session, owner.account_id, Quota(images=1, gb=1), 1)


def test_an_accounts_own_quota_overrides_the_default(
    records: Records, own_database: Database
) -> None:
    owner = records.account()
    with own_database.transaction() as session:
        set_quota(session, owner.account_id, images=0, gb=None)
    with pytest.raises(QuotaExceeded, match="0 of 0 images"):
        records.capture(owner, quota=Quota(images=100, gb=100))
    with own_database.transaction() as session, pytest.raises(ResourceNotFound):
        set_quota(session, "usr-nobody", images=1, gb=1)


# Scoping and tenancy ---------------------------------------------------------------


def test_a_caller_sees_its_own_and_public_images_of_its_zone_only(
    records: Records, own_database: Database
) -> None:
    me, other = records.account(), records.account()
    mine, theirs = records.image(me), records.image(other)
    public, public_elsewhere = records.system_image("ac1"), records.system_image("ac2")
    with own_database.reading() as session:
        seen, total = list_images(session, me)
        assert {image.image_id for image in seen} == {mine, public} and total == 2
        asked, _ = list_images(session, me, ImageFilters(images=[theirs, public_elsewhere]))
        assert asked == []
        in_ac2, _ = list_images(session, Caller(me.account_id, "ac2"))
        assert [image.image_id for image in in_ac2] == [public_elsewhere]


def test_another_accounts_image_cannot_be_changed_or_its_job_read(
    records: Records, own_database: Database
) -> None:
    me, other = records.account(), records.account()
    theirs = records.capture(other)
    with own_database.transaction() as session:
        with pytest.raises(ResourceNotFound, match=theirs.image.image_id):
            delete_images(session, me, [theirs.image.image_id])
        with pytest.raises(ResourceNotFound, match=theirs.job.job_id):
            get_job(session, me, theirs.job.job_id)
        assert list_jobs(session, me) == ([], 0)
        with pytest.raises(ResourceNotFound):  # a job belongs to its zone too
            get_job(session, Caller(other.account_id, "ac2"), theirs.job.job_id)


def test_a_public_image_is_visible_but_not_the_callers_to_change(
    records: Records, own_database: Database
) -> None:
    me, public = records.account(), records.system_image()
    with own_database.transaction() as session:
        with pytest.raises(AccessDenied, match=f"{public} \\(provider system\\)"):
            delete_images(session, me, [public])
        with pytest.raises(AccessDenied, match=public):
            modify_image(session, me, public, "mine now", None)
    assert records.image_state(public) == ("available", "")


def test_a_batch_with_one_image_not_the_callers_changes_none_of_them(
    records: Records, own_database: Database
) -> None:
    me, other = records.account(), records.account()
    mine, theirs = records.image(me), records.image(other)
    with own_database.transaction() as session, pytest.raises(ResourceNotFound, match=theirs):
        delete_images(session, me, [mine, theirs])
    assert records.image_state(mine) == ("available", "")


def test_a_batch_with_one_image_in_a_state_that_forbids_it_changes_none_of_them(
    records: Records, own_database: Database
) -> None:
    # The delete moves what it can in one update and undoes it on a refusal: even
    # a unit that catches the refusal and commits leaves every image as it was.
    me = records.account()
    movable = records.image(me)
    blocked = records.images_in(me, [(ImageStatus.AVAILABLE, TransitionStatus.DELETING)])
    [deleting] = blocked.values()
    with own_database.transaction() as session, pytest.raises(StateConflict, match=deleting):
        delete_images(session, me, [movable, deleting])
    assert records.image_state(movable) == ("available", "")
    assert records.image_state(deleting) == ("available", "deleting")
    with own_database.transaction() as session:
        job = delete_images(session, me, [movable])
    assert job.resource_ids == [movable]
    assert records.image_state(movable) == ("available", "deleting")


# Retention, cease and purge ------------------------------------------------------------


def test_deleted_images_cease_only_once_the_retention_window_has_passed(
    records: Records, own_database: Database
) -> None:
    owner = records.account()
    expired = deleted_image(records, own_database, owner)
    recent = deleted_image(records, own_database, owner)
    kept = records.image(owner)
    age_image(own_database, expired, RETENTION + 1)
    age_image(own_database, kept, RETENTION + 1)
    with own_database.transaction() as session:
        assert cease_expired(session, RETENTION) == [expired]
        assert cease_expired(session, RETENTION) == []
    assert records.image_state(expired) == ("ceased", "")
    assert records.image_state(recent) == ("deleted", "")
    assert records.image_state(kept) == ("available", "")


def test_a_deleted_image_is_recoverable_within_the_window_and_not_after(
    records: Records, own_database: Database
) -> None:
    owner = records.account()
    recent = deleted_image(records, own_database, owner)
    expired = deleted_image(records, own_database, owner)
    age_image(own_database, expired, RETENTION + 1)
    with own_database.transaction() as session, pytest.raises(StateConflict, match=expired):
        recover_images(session, owner, [recent, expired], RETENTION)
    assert records.image_state(recent) == ("deleted", "")
    with own_database.transaction() as session:
        job = recover_images(session, owner, [recent], RETENTION)
        assert (job.action, job.resource_ids) == (JobAction.RECOVER_IMAGES.value, [recent])
    assert records.image_state(recent) == ("deleted", "recovering")


def test_ceased_rows_are_purged_after_the_audit_window_once_their_file_is_freed(
    records: Records, own_database: Database
) -> None:
    owner = records.account()
    image_id = deleted_image(records, own_database, owner)
    with own_database.transaction() as session:
        session.execute(
            update(Image).where(Image.image_id == image_id).values(file_name=f"{image_id}.1.raw")
        )
        assert move_images(session, [image_id], ImageAction.CEASE) == 1
    age_image(own_database, image_id, 2 * RETENTION)
    with own_database.transaction() as session:
        assert purge_ceased(session, RETENTION) == 0, "its file is still held"
        forget_file(session, image_id)
        assert purge_ceased(session, 3 * RETENTION) == 0, "still within the window"
        assert purge_ceased(session, RETENTION) == 1
        assert session.get(Image, image_id) is None


# Idempotency keys -------------------------------------------------------------------


def test_a_repeated_request_id_gets_the_first_capture_and_records_nothing_new(
    records: Records, own_database: Database
) -> None:
    owner = records.account()
    first = records.capture(owner, request_id="req-1")
    again = records.capture(owner, request_id="req-1")
    assert (again.job.job_id, again.image.image_id) == (first.job.job_id, first.image.image_id)
    other = records.capture(records.account(), request_id="req-1")
    assert other.job.job_id != first.job.job_id, "keys are per caller"
    with own_database.reading() as session:
        assert usage_of(session, owner.account_id).images == 1


def test_a_request_id_is_not_replayed_for_another_action_or_zone(
    records: Records, own_database: Database
) -> None:
    owner = records.account()
    first = records.capture(owner, request_id="req-2")
    with own_database.reading() as session:
        with pytest.raises(InvalidParameter, match="request_id"):
            replay(session, owner, "req-2", JobAction.DELETE_IMAGES)
        with pytest.raises(InvalidParameter, match="zone ac1"):
            replay(session, Caller(owner.account_id, "ac2"), "req-2", JobAction.CAPTURE_INSTANCE)
        assert replay(session, owner, "req-2", JobAction.CAPTURE_INSTANCE) is not None
    assert first.job.zone == "ac1"


def test_a_request_id_older_than_a_day_starts_a_new_request(
    records: Records, own_database: Database
) -> None:
    owner = records.account()
    first = records.capture(owner, request_id="req-3")
    with own_database.transaction() as session:
        session.execute(
            update(ClientRequest).values(created_at=utcnow() - timedelta(hours=24, seconds=1))
        )
    again = records.capture(owner, request_id="req-3")
    assert again.job.job_id != first.job.job_id
    with own_database.reading() as session:
        assert replay(session, owner, "req-3", JobAction.CAPTURE_INSTANCE) is not None
