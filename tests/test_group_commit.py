"""Group commit: on PostgreSQL one message's statement settles its own delete or recover
job and other pending ones this worker may run, each as a run of its own would.

The runner is called as a worker's pool process calls it, on real rows. Where an outcome
does not depend on the path (two jobs naming one image, a message whose job is settled)
the test runs on both tiers: SQLite settles one job per message, and every message is
delivered, so the end state must be the same.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import pytest
from sqlalchemy import Engine, event, text, update

from imagesvc.bootstrap import Services
from models.images import delete_images, recover_images
from models.jobs import GROUP_COMMIT_JOBS, new_job
from models.scoping import Caller
from models.states import JobAction
from models.tables import Job, utcnow
from tests.support.records import Records
from workers.job_runner import execute_job

pytestmark = pytest.mark.domain


def _postgresql_only(services: Services) -> None:
    if services.database.engine.dialect.name != "postgresql":
        pytest.skip("SQLite settles one job per message (no data-modifying WITH)")


def _delete_jobs(services: Services, caller: Caller, count: int) -> list[tuple[str, str]]:
    """``count`` pending delete jobs, one image each, recorded as the API records them."""
    images = [Records(services.database).image(caller) for _ in range(count)]
    jobs = []
    for image in images:
        with services.database.transaction() as session:
            jobs.append((delete_images(session, caller, [image]).job_id, image))
    return jobs


@contextmanager
def _statements(engine: Engine) -> Iterator[list[str]]:
    """The statements ``engine`` sends while the block runs."""
    sent: list[str] = []

    def before(connection: object, cursor: object, statement: str, *args: object) -> None:
        sent.append(statement)

    event.listen(engine, "before_cursor_execute", before)
    try:
        yield sent
    finally:
        event.remove(engine, "before_cursor_execute", before)


def test_one_message_settles_several_pending_delete_jobs_each_as_its_own_run(
    own_services: Services, records: Records
) -> None:
    _postgresql_only(own_services)
    caller = records.account()
    jobs = _delete_jobs(own_services, caller, 4)

    with _statements(own_services.database.engine) as sent:
        execute_job(own_services, jobs[2][0])

    assert len(sent) == 1
    for job_id, image in jobs:
        job = records.job(job_id)
        assert (job.status, job.attempts, job.progress, job.error_code) == (
            "successful",
            1,
            100,
            None,
        )
        assert job.worker.startswith(own_services.settings.compute_host + "/")
        assert job.begin_time is not None and job.finished_time == job.status_time
        assert records.image_state(image) == ("deleted", "")


def test_the_other_messages_then_cost_one_read_or_none_and_write_nothing(
    own_services: Services, records: Records
) -> None:
    """A message whose job this process settled for another's message sends nothing (a
    settled job stays settled); any other message whose job is settled (a second delivery;
    on SQLite every one) sends one statement, which reads, and the job's row stays as it
    was (on PostgreSQL: not even a new row version)."""
    caller = records.account()
    jobs = _delete_jobs(own_services, caller, 2)
    for job_id, _ in jobs[:1] if _on_postgresql(own_services) else jobs:
        execute_job(own_services, job_id)
    job_id, image = jobs[1]
    before = _row_version(own_services, job_id)

    with _statements(own_services.database.engine) as first:
        execute_job(own_services, job_id)
    with _statements(own_services.database.engine) as second:
        execute_job(own_services, job_id)

    # (SQLite's general path opens its transaction with BEGIN IMMEDIATE, sent as a statement.)
    reads = [statement for statement in second if not statement.startswith("BEGIN")]
    assert reads == second[-1:]
    assert first == ([] if _on_postgresql(own_services) else second)
    assert _row_version(own_services, job_id) == before
    assert records.job(job_id).status == "successful"
    assert records.image_state(image) == ("deleted", "")


def _on_postgresql(services: Services) -> bool:
    return services.database.engine.dialect.name == "postgresql"


def _row_version(services: Services, job_id: str) -> tuple[object, ...]:
    """What a write of the job's row would change: its values, and on PostgreSQL its xmin."""
    xmin = ", xmin::text" if _on_postgresql(services) else ""
    stmt = text(
        f"SELECT status, attempts, status_time, finished_time{xmin} FROM jobs WHERE job_id = :j"
    )
    with services.database.reading() as session:
        return tuple(session.execute(stmt, {"j": job_id}).one())


def test_two_jobs_naming_one_image_come_out_as_one_after_the_other(
    own_services: Services, records: Records
) -> None:
    """The older job is credited with the image; the younger finds it changed, as it would
    run after the older. On PostgreSQL both are settled by the younger one's message."""
    caller = records.account()
    (older, image), (other, other_image) = _delete_jobs(own_services, caller, 2)
    with own_services.database.transaction() as session:
        younger = new_job(session, caller, JobAction.DELETE_IMAGES, [image, other_image]).job_id

    for job_id in (
        (younger, older, other) if _on_postgresql(own_services) else (older, other, younger)
    ):
        execute_job(own_services, job_id)

    assert (records.job(older).status, records.job(older).error_code) == ("successful", None)
    assert records.job(other).status == "successful"
    job = records.job(younger)
    assert (job.status, job.attempts, job.error_code, job.error_message) == (
        "done with failure",
        1,
        "ImagesChanged",
        "2 image(s) changed meanwhile",
    )
    assert records.image_state(image) == ("deleted", "")


def test_a_job_of_another_host_or_not_yet_due_is_not_taken(
    own_services: Services, records: Records
) -> None:
    _postgresql_only(own_services)
    caller = records.account()
    (own, _), (elsewhere, far_image), (later, later_image) = _delete_jobs(own_services, caller, 3)
    with own_services.database.transaction() as session:
        session.execute(update(Job).where(Job.job_id == elsewhere).values(host="another-host"))
        due = utcnow() + timedelta(hours=1)
        session.execute(update(Job).where(Job.job_id == later).values(send_requested_at=due))

    execute_job(own_services, own)

    assert records.job(own).status == "successful"
    for job_id, image in ((elsewhere, far_image), (later, later_image)):
        job = records.job(job_id)
        assert (job.status, job.attempts, job.worker) == ("pending", 0, "")
        assert records.image_state(image) == ("available", "deleting")


def test_a_group_takes_at_most_its_bound_oldest_first(
    own_services: Services, records: Records
) -> None:
    _postgresql_only(own_services)
    caller = records.account()
    jobs = _delete_jobs(own_services, caller, GROUP_COMMIT_JOBS + 3)
    newest = jobs[-1][0]

    execute_job(own_services, newest)

    statuses = [records.job(job_id).status for job_id, _ in jobs]
    assert statuses == ["successful"] * GROUP_COMMIT_JOBS + ["pending"] * 2 + ["successful"]


def test_recover_jobs_are_settled_together_and_an_image_changed_meanwhile_is_named(
    own_services: Services, records: Records
) -> None:
    caller = records.account()
    jobs = _delete_jobs(own_services, caller, 3)
    for job_id, _ in jobs:
        execute_job(own_services, job_id)
    images = [image for _, image in jobs]
    with own_services.database.transaction() as session:
        recovers = [recover_images(session, caller, [i], retention=3600).job_id for i in images]
        session.execute(
            text("UPDATE images SET transition_status = '' WHERE image_id = :i"), {"i": images[0]}
        )

    execute_job(own_services, recovers[1])
    if _on_postgresql(own_services):  # one message settled all three
        assert all(records.job(job_id).attempts == 1 for job_id in recovers)
    for job_id in recovers:
        execute_job(own_services, job_id)

    failed = records.job(recovers[0])
    assert (failed.status, failed.attempts, failed.error_message) == (
        "done with failure",
        1,
        "1 image(s) changed meanwhile",
    )
    assert [records.job(job_id).status for job_id in recovers[1:]] == ["successful"] * 2
    assert [records.image_state(image) for image in images] == [
        ("deleted", ""),
        ("available", ""),
        ("available", ""),
    ]
