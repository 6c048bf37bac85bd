"""The transition tables, as compare-and-set moves on real rows (no HTTP, no worker).

Each table is written out here by hand from the contract, not read from
``models/states.py``, so a wrong entry in the code's table fails a test.
"""

from __future__ import annotations

import itertools

import pytest
from sqlalchemy import select

from models.db import Database
from models.jobs import beat, claim_job, move_job, requeue_job
from models.states import ImageAction, ImageStatus, JobStatus, TransitionStatus
from models.tables import Image
from models.transitions import move_images
from tests.support.records import Records

pytestmark = pytest.mark.domain

A, DEP, SUS = "available", "deprecated", "suspended"
PEN, DEL, CEA = "pending", "deleted", "ceased"

# action: (statuses it starts from, transition it starts from, status after, transition after)
# A status after of None keeps the status.
IMAGE_TABLE: dict[str, tuple[set[str], str, str | None, str]] = {
    "finish capture": ({PEN}, "creating", A, ""),
    "fail capture": ({PEN}, "creating", CEA, ""),
    "delete": ({A, DEP}, "", None, "deleting"),
    "finish delete": ({A, DEP}, "deleting", DEL, ""),
    "cancel delete": ({A, DEP}, "deleting", None, ""),
    "recover": ({DEL}, "", None, "recovering"),
    "finish recover": ({DEL}, "recovering", A, ""),
    "cancel recover": ({DEL}, "recovering", None, ""),
    "cease": ({DEL}, "", CEA, ""),
    "modify": ({PEN, A, DEP, SUS}, "", None, ""),
    "deprecate": ({A}, "", DEP, ""),
    "suspend": ({A, DEP}, "", SUS, ""),
    "resume": ({SUS}, "", A, ""),
    "resume deprecated": ({SUS}, "", DEP, ""),
}

# target: the statuses a job may move to it from
JOB_TABLE: dict[str, set[str]] = {
    "pending": {"working"},
    "working": {"pending"},
    "successful": {"working"},
    "done with failure": {"working"},
    "failed": {"pending", "working"},
}

STATES = list(itertools.product(ImageStatus, TransitionStatus))


def test_the_tables_name_every_action_and_job_status() -> None:
    assert set(IMAGE_TABLE) == {action.value for action in ImageAction}
    assert set(JOB_TABLE) == {status.value for status in JobStatus}


def test_each_image_move_applies_exactly_from_the_states_the_table_allows(
    records: Records, own_database: Database
) -> None:
    """Every action, tried on one image in each (status, transition); each try rolled back."""
    images = records.images_in(records.account(), STATES)
    wrong: list[str] = []
    for action in ImageAction:
        sources, source_transition, target, target_transition = IMAGE_TABLE[action.value]
        allowed = {(s, source_transition) for s in sources}
        with own_database.transaction() as session:
            attempt = session.begin_nested()
            moved = move_images(session, list(images.values()), action)
            rows = session.execute(select(Image.image_id, Image.status, Image.transition_status))
            after = {image_id: (status, transition) for image_id, status, transition in rows}
            attempt.rollback()
        if moved != len(allowed):
            wrong.append(f"{action}: moved {moved} images, the table allows {len(allowed)}")
        for (status, transition), image_id in images.items():
            before = (status.value, transition.value)
            expected = (target or status.value, target_transition) if before in allowed else before
            if after[image_id] != expected:
                wrong.append(f"{action} from {before}: {after[image_id]}, not {expected}")
    assert not wrong, "\n".join(wrong)


def test_a_move_made_on_a_stale_read_changes_nothing(
    records: Records, own_database: Database
) -> None:
    image_id = records.image(records.account())
    with own_database.transaction() as session:
        assert move_images(session, [image_id], ImageAction.BEGIN_DELETE) == 1
    with own_database.transaction() as session:
        assert move_images(session, [image_id], ImageAction.CANCEL_DELETE) == 1
    # A worker that read "deleting" before the cancel must not finish the delete.
    with own_database.transaction() as session:
        assert move_images(session, [image_id], ImageAction.FINISH_DELETE) == 0
    assert records.image_state(image_id) == ("available", "")


@pytest.mark.parametrize("target", list(JobStatus), ids=str)
def test_a_job_move_applies_exactly_from_the_statuses_the_table_allows(
    records: Records, own_database: Database, target: JobStatus
) -> None:
    owner = records.account()
    jobs = {status: records.capture(owner).job.job_id for status in JobStatus}
    with own_database.transaction() as session:
        for status, job_id in jobs.items():
            if status is not JobStatus.PENDING:
                assert move_job(session, job_id, JobStatus.WORKING)
            if status not in (JobStatus.PENDING, JobStatus.WORKING):
                assert move_job(session, job_id, status)

    for status, job_id in jobs.items():
        with own_database.transaction() as session:
            moved = move_job(session, job_id, target)
        assert moved == (status.value in JOB_TABLE[target.value]), (status, target)
        assert records.job(job_id).status == (target if moved else status).value


def test_only_the_current_attempt_moves_its_job(records: Records, own_database: Database) -> None:
    job_id = records.capture(records.account()).job.job_id
    with own_database.transaction() as session:
        first = claim_job(session, job_id, "worker-a")
        assert first is not None and first.attempts == 1
        assert claim_job(session, job_id, "worker-b") is None, "a working job is not claimed twice"
        # The sweep gives the first run up for lost; a second run claims the job.
        assert requeue_job(session, job_id, attempt=1)
        second = claim_job(session, job_id, "worker-b")
        assert second is not None and second.attempts == 2

    with own_database.transaction() as session:
        assert not beat(session, job_id, attempt=1, progress=50)
        assert not requeue_job(session, job_id, attempt=1)
        assert not move_job(session, job_id, JobStatus.SUCCESSFUL, attempt=1)
        assert not move_job(session, job_id, JobStatus.FAILED, attempt=1)
    assert (records.job(job_id).status, records.job(job_id).worker) == ("working", "worker-b")

    with own_database.transaction() as session:
        assert beat(session, job_id, attempt=2, progress=50)
        assert move_job(session, job_id, JobStatus.SUCCESSFUL, attempt=2)
    assert records.job(job_id).status == "successful"
