"""A job with no disk work is claimed, run and settled in one transaction, still fenced.

The runner is called as a worker's pool process calls it, on real rows; the
failures are real ones: a trigger that makes the database refuse a statement
half-way through, and (PostgreSQL) the server ending the worker's connections.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import Engine, event, text
from sqlalchemy.exc import DBAPIError

from imagesvc.bootstrap import Services
from models.images import delete_images, recover_images
from models.jobs import requeue_job
from models.scoping import Caller
from models.states import ImageAction
from models.transitions import move_images
from tests.support.records import Records
from workers.job_runner import execute_job
from workers.tasks import worker_services

pytestmark = pytest.mark.domain


def _delete_job(services: Services, caller: Caller, image_ids: list[str]) -> str:
    """A delete job recorded as the API records it (pending, not sent)."""
    with services.database.transaction() as session:
        return delete_images(session, caller, image_ids).job_id


def _deleting(services: Services, records: Records, count: int) -> tuple[str, list[str]]:
    """A new account's ``count`` available images, and the pending job deleting them."""
    caller = records.account()
    images = [records.image(caller) for _ in range(count)]
    return _delete_job(services, caller, images), images


def _job(records: Records, job_id: str) -> tuple[str, int, str | None]:
    job = records.job(job_id)
    return job.status, job.attempts, job.error_code


@contextmanager
def _commits(engine: Engine) -> Iterator[list[int]]:
    """Counts the transactions ``engine`` commits while the block runs."""
    count = [0]

    def committed(connection: object) -> None:
        count[0] += 1

    event.listen(engine, "commit", committed)
    try:
        yield count
    finally:
        event.remove(engine, "commit", committed)


def test_a_delete_job_is_settled_in_the_transaction_that_claims_it(
    own_services: Services, records: Records
) -> None:
    job_id, images = _deleting(own_services, records, 2)

    with _commits(own_services.database.engine) as commits:
        execute_job(own_services, job_id)

    assert commits == [1]
    assert _job(records, job_id) == ("successful", 1, None)
    assert [records.image_state(image) for image in images] == [("deleted", "")] * 2
    job = records.job(job_id)
    assert job.progress == 100 and job.begin_time is not None and job.finished_time is not None


def test_on_postgresql_a_delete_job_is_one_statement(
    own_services: Services, records: Records
) -> None:
    engine = own_services.database.engine
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite has no data-modifying WITH: its jobs take three statements")
    job_id, images = _deleting(own_services, records, 2)
    statements: list[str] = []

    def sent(connection: object, cursor: object, statement: str, *args: object) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", sent)
    try:
        execute_job(own_services, job_id)
    finally:
        event.remove(engine, "before_cursor_execute", sent)

    assert len(statements) == 1 and statements[0].startswith("WITH")
    assert _job(records, job_id) == ("successful", 1, None)
    assert [records.image_state(image) for image in images] == [("deleted", "")] * 2


def test_a_second_delivery_of_a_settled_job_changes_nothing(
    own_services: Services, records: Records
) -> None:
    job_id, _ = _deleting(own_services, records, 1)
    execute_job(own_services, job_id)
    settled = records.job(job_id).finished_time

    execute_job(own_services, job_id)

    assert _job(records, job_id) == ("successful", 1, None)
    assert records.job(job_id).finished_time == settled


def test_two_deliveries_at_once_settle_the_job_once(
    own_services: Services, records: Records
) -> None:
    job_id, _ = _deleting(own_services, records, 3)
    runs = [threading.Thread(target=execute_job, args=(own_services, job_id)) for _ in range(2)]
    for run in runs:
        run.start()
    for run in runs:
        run.join()
    assert _job(records, job_id) == ("successful", 1, None)


def test_an_image_changed_meanwhile_makes_the_job_done_with_failure(
    own_services: Services, records: Records
) -> None:
    job_id, (kept, deleted) = _deleting(own_services, records, 2)
    with own_services.database.transaction() as session:
        assert move_images(session, [kept], ImageAction.CANCEL_DELETE) == 1

    execute_job(own_services, job_id)

    assert _job(records, job_id) == ("done with failure", 1, "ImagesChanged")
    assert records.image_state(kept) == ("available", "")
    assert records.image_state(deleted) == ("deleted", "")


def test_a_recover_job_is_settled_at_once_and_an_image_changed_meanwhile_is_named(
    own_services: Services, records: Records
) -> None:
    """Recover, the other job with no disk work, on the same path: its images come back,
    and one that is no longer recovering makes the job done with failure."""
    caller = records.account()
    images = [records.image(caller) for _ in range(3)]
    execute_job(own_services, _delete_job(own_services, caller, images))
    with own_services.database.transaction() as session:
        job_id = recover_images(session, caller, images, retention=3600).job_id
        assert move_images(session, images[:1], ImageAction.CANCEL_RECOVER) == 1

    with _commits(own_services.database.engine) as commits:
        execute_job(own_services, job_id)

    assert commits == [1]
    job = records.job(job_id)
    assert (job.status, job.attempts, job.progress) == ("done with failure", 1, 100)
    assert (job.error_code, job.error_message) == ("ImagesChanged", "1 image(s) changed meanwhile")
    assert [records.image_state(image) for image in images] == [
        ("deleted", ""),
        ("available", ""),
        ("available", ""),
    ]


def _refuse_updates_of(engine: Engine, image_id: str) -> None:
    """A trigger: the database refuses any update of this image, as a failure mid-job."""
    with engine.begin() as connection:
        if engine.dialect.name == "sqlite":
            connection.exec_driver_sql(
                "CREATE TRIGGER refuse_update BEFORE UPDATE ON images"
                f" WHEN OLD.image_id = '{image_id}' BEGIN SELECT RAISE(ABORT, 'refused'); END"
            )
            return
        connection.exec_driver_sql(
            "CREATE FUNCTION refuse_update() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN RAISE EXCEPTION 'refused'; END $$"
        )
        connection.exec_driver_sql(
            "CREATE TRIGGER refuse_update BEFORE UPDATE ON images FOR EACH ROW"
            f" WHEN (OLD.image_id = '{image_id}') EXECUTE FUNCTION refuse_update()"
        )


def _allow_updates(engine: Engine) -> None:
    with engine.begin() as connection:
        connection.exec_driver_sql("DROP TRIGGER refuse_update" + _on_images(engine))


def _on_images(engine: Engine) -> str:
    return "" if engine.dialect.name == "sqlite" else " ON images"


def test_a_failure_half_way_applies_nothing_and_the_job_is_run_again(
    own_services: Services, records: Records
) -> None:
    job_id, (first, refused) = _deleting(own_services, records, 2)
    engine = own_services.database.engine
    _refuse_updates_of(engine, refused)

    with pytest.raises(DBAPIError):
        execute_job(own_services, job_id)

    # The transaction that claimed the job and moved the first image was rolled back
    # whole; run step by step, the job was claimed once (attempt 1, not 2) and is left
    # working, its images untouched, for the sweep, as a run that lost its database.
    assert _job(records, job_id) == ("working", 1, None)
    assert records.image_state(first) == ("available", "deleting")
    _allow_updates(engine)
    with own_services.database.transaction() as session:
        assert requeue_job(session, job_id, attempt=1)  # what the sweep does
    execute_job(own_services, job_id)
    assert _job(records, job_id) == ("successful", 2, None)
    assert [records.image_state(image) for image in (first, refused)] == [("deleted", "")] * 2


def _end_other_connections(engine: Engine) -> None:
    """The server ends every other connection to this database, and they are gone."""
    others = "datname = current_database() AND pid <> pg_backend_pid()"
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as admin:
        ended = admin.execute(
            text(f"SELECT array_agg(pid) FROM pg_stat_activity WHERE {others}")
        ).scalar_one()
        assert ended, "the worker holds a connection"
        admin.execute(
            text("SELECT pg_terminate_backend(pid) FROM unnest(:pids) AS pid"), {"pids": ended}
        )
        gone = text("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(:pids)")
        while admin.execute(gone, {"pids": ended}).scalar_one():
            time.sleep(0.05)


def test_a_worker_runs_on_after_the_server_ends_its_connections(
    own_services: Services, records: Records
) -> None:
    """A worker does not check a connection before each job: the job that meets a dead
    connection is run again on a new one."""
    if own_services.database.engine.dialect.name != "postgresql":
        pytest.skip("a SQLite file has no connection to lose")
    worker = worker_services(own_services.settings)
    try:
        jobs = [_deleting(own_services, records, 1)[0] for _ in range(2)]
        execute_job(worker, jobs[0])  # the worker's pool now holds a connection
        _end_other_connections(own_services.database.engine)

        execute_job(worker, jobs[1])

        assert _job(records, jobs[1]) == ("successful", 1, None)
    finally:
        worker.close()
