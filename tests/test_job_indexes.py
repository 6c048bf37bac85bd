"""The jobs' status indexes hold only the unsettled jobs (migration 0013).

The sweep (jobs not sent in time, runs gone silent), the queue's state and the
orphan sweep look only for pending and working jobs; they still find every one,
and never a settled one. On PostgreSQL each of their statements is planned to
read those partial indexes even as a prepared statement's generic plan, where
a status sent as a parameter would have made it a scan of every job ever made.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, event, text
from sqlalchemy.orm import Session

from imagesvc.bootstrap import Services
from models.images import delete_images
from models.jobs import (
    _claim_and_settle_batch_compiled,
    claim_job,
    copies_in_progress,
    lost_jobs,
    queue_state,
    take_jobs_to_resend,
)
from models.scoping import Caller
from models.tables import utcnow
from tests.support.records import Records
from workers.job_runner import execute_job

pytestmark = pytest.mark.domain

LATER = timedelta(hours=1)


def _delete_job(services: Services, records: Records, caller: Caller) -> str:
    with services.database.transaction() as session:
        return delete_images(session, caller, [records.image(caller)]).job_id


def _one_of_each(services: Services, records: Records) -> tuple[str, str, str]:
    """A settled delete job, a pending one (never sent) and a working one (claimed).
    The settled one runs before the others are made: on PostgreSQL its statement would
    settle every pending delete with it (a group commit)."""
    caller = records.account()
    settled = _delete_job(services, records, caller)
    execute_job(services, settled)
    pending, working = (_delete_job(services, records, caller) for _ in range(2))
    with services.database.transaction() as session:
        assert claim_job(session, working, "a-worker") is not None
    assert records.job(settled).status == "successful"
    return settled, pending, working


def test_the_sweeps_find_every_unsettled_job_and_no_settled_one(
    own_services: Services, records: Records
) -> None:
    settled, pending, working = _one_of_each(own_services, records)
    later = utcnow() + LATER

    with own_services.database.transaction() as session:
        lost = [job.job_id for job in lost_jobs(session, 0, later)]
        state = queue_state(session, later)
        copies = copies_in_progress(session)
        resent = [job.job_id for job in take_jobs_to_resend(session, 0, later)]

    assert lost == [working]
    assert (state.pending, state.working) == (1, 1)
    assert copies.job_ids == frozenset()  # delete jobs copy nothing
    assert resent == [pending]
    assert settled not in lost + resent


# What each statement reads: a plan naming neither partial index read the whole table.
SWEEP_STATEMENTS: dict[str, Callable[[Session], object]] = {
    "lost_jobs": lambda session: lost_jobs(session, 0, utcnow() + LATER),
    "queue_state": queue_state,
    "copies_in_progress": copies_in_progress,
    "take_jobs_to_resend": lambda session: take_jobs_to_resend(session, 0, utcnow() + LATER),
}


def _sent(engine: Engine, run: Callable[[Session], object]) -> list[tuple[str, dict[str, Any]]]:
    """The SELECTs (SQL and parameters) that ``run`` sends in a transaction rolled back."""
    sent: list[tuple[str, dict[str, Any]]] = []

    def record(conn: object, cursor: object, sql: str, params: Any, *args: object) -> None:
        if sql.lstrip().upper().startswith("SELECT"):
            sent.append((sql, dict(params or {})))

    event.listen(engine, "before_cursor_execute", record)
    try:
        with Session(engine) as session:
            run(session)
            session.rollback()
    finally:
        event.remove(engine, "before_cursor_execute", record)
    return sent


def _untyped(value: object) -> str:
    return "NULL" if value is None else "'" + str(value).replace("'", "''") + "'"


def _generic_plan(
    engine: Engine, sql: str, params: dict[str, Any], mode: str = "force_generic_plan"
) -> str:
    """PostgreSQL's plan for ``sql`` prepared, planned without looking at its parameters
    (or, with ``mode`` ``force_custom_plan``, for these values)."""
    names: list[str] = []

    def numbered(match: re.Match[str]) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    prepared = re.sub(r"%\((\w+)\)s", numbered, sql)
    # Untyped literals: each takes the type PostgreSQL gave its parameter when preparing.
    arguments = ", ".join(_untyped(params[name]) for name in names)
    with engine.connect() as connection:
        connection.execute(text(f"SET plan_cache_mode = {mode}"))
        connection.execute(text("SET enable_seqscan = off"))  # a few rows: any index would do
        connection.exec_driver_sql(f"PREPARE probe AS {prepared}")
        execute = f"EXPLAIN EXECUTE probe({arguments})" if names else "EXPLAIN EXECUTE probe"
        lines = "\n".join(row[0] for row in connection.exec_driver_sql(execute))
        connection.exec_driver_sql("DEALLOCATE probe")
        connection.rollback()
    return lines


@pytest.mark.parametrize("name", sorted(SWEEP_STATEMENTS))
def test_on_postgresql_the_sweeps_read_the_unsettled_indexes_even_in_a_generic_plan(
    own_services: Services, records: Records, name: str
) -> None:
    engine = own_services.database.engine
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite plans each statement as it comes, its values included")
    _one_of_each(own_services, records)

    (sql, params), *_ = _sent(engine, SWEEP_STATEMENTS[name])
    plan = _generic_plan(engine, sql, params)

    assert "ix_jobs_unsettled_status_" in plan, plan


def test_on_postgresql_a_delete_jobs_statement_finds_its_images_by_primary_key(
    own_services: Services, records: Records
) -> None:
    """Both image moves of the one-statement settle (a delete job runs the recover move too,
    on no ids) read ``pk_images``: through the status index, the recover move read every
    deleted image, a cost that grew with each delete until PostgreSQL analysed the table.
    The message's own job is found by its key, not among every pending job; the other
    pending jobs a group commit takes, through the partial index of unsettled jobs."""
    engine = own_services.database.engine
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite moves a job's images by their ids, one statement per action")
    caller = records.account()
    for _ in range(3):  # some deleted images, and the statement prepared by psycopg meanwhile
        execute_job(own_services, _delete_job(own_services, records, caller))
    job_id = _delete_job(own_services, records, caller)
    compiled = _claim_and_settle_batch_compiled(engine.dialect)
    values = {"b_job_id": job_id, "b_worker": "w", "b_host": "", "b_now": utcnow()}
    params = dict(compiled.construct_params(values) or {})

    for mode in ("force_custom_plan", "force_generic_plan"):
        plan = _generic_plan(engine, compiled.string, params, mode)
        assert plan.count(" on pk_images") == 2 and "ix_images_status" not in plan, plan
        own, others = plan.split("CTE others")[0], plan.split("CTE others")[1].split("CTE held")[0]
        assert "using pk_jobs on jobs" in own and "ix_jobs_unsettled" not in own, plan
        assert "using ix_jobs_unsettled_status_send_requested_at on jobs" in others, plan
