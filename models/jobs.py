"""Jobs: creation, compare-and-set moves, and the caller's queries."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    ARRAY,
    CTE,
    ColumnElement,
    Connection,
    CursorResult,
    Integer,
    Row,
    Select,
    String,
    Table,
    Text,
    Update,
    and_,
    any_,
    bindparam,
    case,
    func,
    literal,
    literal_column,
    null,
    select,
    true,
    update,
)
from sqlalchemy import cast as sql_cast
from sqlalchemy.engine import Dialect
from sqlalchemy.engine.interfaces import Compiled
from sqlalchemy.orm import Session

from models import ids
from models.accounts import BEARER, bearer_account
from models.errors import ResourceNotFound
from models.reads import Listed, Listing, Reads, listed_as_bearer
from models.scoping import Caller, one_of, owned_job_range, owned_jobs
from models.statements import Db, insert_values, inserting, statements_of
from models.states import IMAGE_MOVES, JOB_MOVES, ImageAction, JobAction, JobStatus
from models.tables import Image, Job, utcnow

# The host of a job with no disk work: any worker may run it (the shared queue).
ANY_HOST = ""

_JOBS = cast(Table, Job.__table__)  # the runs' moves are Core statements on it
_IMAGES = cast(Table, Image.__table__)


def new_job(
    db: Db,
    caller: Caller,
    action: JobAction,
    resource_ids: list[str],
    status: JobStatus = JobStatus.PENDING,
    job_id: str | None = None,
    host: str = ANY_HOST,
) -> Job:
    """Record a job; ``host`` names the compute host whose workers must run it.

    One Core ``INSERT`` (models/statements.py), on a Session or on the API's write
    path; the Job returned is not in any session: it reads as the row inserted."""
    job = job_row(caller, action, resource_ids, status, job_id, host)
    statements_of(db).count(inserting(_JOBS), insert_values(_JOBS, job))
    return job


def job_row(
    caller: Caller,
    action: JobAction,
    resource_ids: list[str],
    status: JobStatus = JobStatus.PENDING,
    job_id: str | None = None,
    host: str = ANY_HOST,
) -> Job:
    """The row :func:`new_job` inserts (for a caller that inserts it in a statement
    of its own: ``inserting(Job.__table__)``, ``insert_values``)."""
    now = utcnow()
    done = now if status.is_terminal else None
    return Job(
        job_id=job_id or ids.job_id(),
        zone=caller.zone,
        owner=caller.account_id,
        action=action.value,
        status=status.value,
        resource_ids=resource_ids,
        progress=100 if status.is_terminal else 0,
        create_time=now,
        status_time=now,
        begin_time=done,
        finished_time=done,
        send_requested_at=None if status.is_terminal else now,
        request_id=caller.request_id,
        host=host,
    )


def move_job(
    session: Session,
    job_id: str,
    target: JobStatus,
    *,
    attempt: int | None = None,
    **values: Any,
) -> bool:
    """Move a job to ``target`` if its current status allows it; False if not.

    With ``attempt``, only that run of the job may move it: a worker that was
    given up for lost and comes back cannot settle a job another run now owns.
    """
    fence = () if attempt is None else (_JOBS.c.attempts == attempt,)
    stmt = _move_statement(job_id, target, fence, values)
    result: CursorResult[Any] = session.execute(stmt)  # type: ignore[assignment]
    return result.rowcount == 1


def _move_statement(
    job_id: str,
    target: JobStatus,
    conditions: Sequence[ColumnElement[bool]],
    values: dict[str, Any],
) -> Update:
    """The compare-and-set behind every move: the status table's sources plus ``conditions``.

    A Core statement on the table: the ORM's bulk-update machinery would only add
    work to a statement that touches no loaded object.
    """
    sources = JOB_MOVES[target]
    now = utcnow()
    values.setdefault("status_time", now)
    if target.is_terminal:
        values.setdefault("finished_time", now)
    jobs = _JOBS.c
    return (
        update(_JOBS)
        .where(jobs.job_id == job_id, jobs.status.in_([s.value for s in sources]), *conditions)
        .values(status=target.value, **values)
    )


@dataclass(frozen=True)
class ClaimedRun:
    """What a run needs of the job it claimed, as the claim's ``UPDATE`` returned it."""

    job_id: str
    action: str
    zone: str
    owner: str
    resource_ids: list[str]
    attempts: int  # this run's number: every later move of the run is fenced by it
    request_id: str | None
    host: str


# The columns of a ClaimedRun, as a claim returns or a lock reads them.
_CLAIMED_COLUMNS = (
    "job_id",
    "action",
    "zone",
    "owner",
    "resource_ids",
    "attempts",
    "request_id",
    "host",
)


def claim_job(
    session: Session, job_id: str, worker: str, host: str | None = None
) -> ClaimedRun | None:
    """Take a pending job for this worker; None if someone else has it or it is done.

    One statement: the compare-and-set returns what the run needs, and holds the
    row until the transaction ends. With ``host``, only a job of that compute host
    (or of any host) is taken: a capture delivered to the wrong host's worker stays
    pending, and the sweep sends it again to its own host.
    """
    values = {"b_job_id": job_id, "b_worker": worker, "b_host": host, "b_now": utcnow()}
    row = session.execute(_CLAIMS[host is not None], values).one_or_none()
    return None if row is None else ClaimedRun(**row._asdict())


def _claim_statement(on_host: bool) -> Update:
    """The claim's compare-and-set, built once: every worker runs it for every job."""
    jobs = _JOBS.c
    now = bindparam("b_now", type_=jobs.status_time.type)
    on_any_or_this_host = (jobs.host.in_((ANY_HOST, bindparam("b_host"))),) if on_host else ()
    started = {
        "begin_time": func.coalesce(jobs.begin_time, now),
        "heartbeat_at": now,
        "worker": bindparam("b_worker"),
        "attempts": jobs.attempts + 1,
        "status_time": now,
    }
    return (
        update(_JOBS)
        .where(
            jobs.job_id == bindparam("b_job_id"),
            _status_in(JOB_MOVES[JobStatus.WORKING]),
            *on_any_or_this_host,
        )
        .values(status=JobStatus.WORKING.value, **started)
        .returning(*(jobs[name] for name in _CLAIMED_COLUMNS))
    )


def _status_in(sources: frozenset[JobStatus]) -> ColumnElement[bool]:
    """``status IN (...)``, an equality for one status (no list to expand per execution),
    for the statements that find their job by primary key: checked on the row the key
    finds, never read through a status index (``status || ''`` matches none), where a plan
    for a pending job could otherwise read every pending job's entry (the partial indexes
    of migration 0013 match ``status = 'pending'``)."""
    status = _JOBS.c.status.concat(literal_column("''"))
    if len(sources) == 1:
        return status == next(iter(sources)).value
    return status.in_(sorted(s.value for s in sources))


_CLAIMS = {on_host: _claim_statement(on_host) for on_host in (False, True)}


def lock_pending_job(session: Session, job_id: str, host: str) -> ClaimedRun | None:
    """Hold a pending job of this compute host (or of any) until the transaction ends,
    without writing it; None if it is not pending or not this host's.

    The run it returns carries the attempt number it will have (one more than the
    row's): a run with no disk work settles the job straight from pending with
    :func:`settle_pending_job`, writing the row once. A second delivery waits for
    the lock, then finds the job no longer pending.
    """
    values = {"b_job_id": job_id, "b_host": host}
    row = session.execute(_LOCK_PENDING, values).one_or_none()
    if row is None:
        return None
    run = row._asdict()
    return ClaimedRun(**run | {"attempts": run["attempts"] + 1})


def _lock_pending_statement() -> Select[Any]:
    """The claim's conditions as a ``SELECT … FOR UPDATE``, built once."""
    jobs = _JOBS.c
    return (
        select(*(jobs[name] for name in _CLAIMED_COLUMNS))
        .where(
            jobs.job_id == bindparam("b_job_id"),
            _status_in(JOB_MOVES[JobStatus.WORKING]),
            jobs.host.in_((ANY_HOST, bindparam("b_host"))),
        )
        .with_for_update()
    )


_LOCK_PENDING = _lock_pending_statement()


# The outcomes a run settles its job with, from working.
SETTLED = (JobStatus.SUCCESSFUL, JobStatus.DONE_WITH_FAILURE)


def settle_job(
    session: Session,
    job_id: str,
    attempt: int,
    outcome: JobStatus,
    error_code: str | None = None,
    error_message: str | None = None,
) -> bool:
    """This run's working job is done (``successful`` or ``done with failure``), progress
    100; False if the job is not this run's. :func:`move_job` with fixed values, built once."""
    values = _settle_values(job_id, attempt, outcome, error_code, error_message)
    result: CursorResult[Any] = session.execute(_SETTLE, values)  # type: ignore[assignment]
    return result.rowcount == 1


def _settle_values(
    job_id: str,
    attempt: int,
    outcome: JobStatus,
    error_code: str | None,
    error_message: str | None,
) -> dict[str, Any]:
    """The values a settle binds: the job, the attempt it is fenced on, its outcome."""
    if outcome not in SETTLED:
        raise ValueError(f"a run settles its job as one of {SETTLED}, not {outcome}")
    return {
        "b_job_id": job_id,
        "b_attempt": attempt,
        "b_outcome": outcome.value,
        "b_error_code": error_code,
        "b_error_message": error_message,
        "b_now": utcnow(),
    }


def _finished(now: ColumnElement[Any], **outcome: Any) -> dict[str, Any]:
    """What every settle writes besides the status: the outcome's error, and the times."""
    return {"progress": 100, **outcome, "status_time": now, "finished_time": now}


def _claimed_by_this_run(now: ColumnElement[Any]) -> dict[str, Any]:
    """What a run settling a pending job at once stamps, as a claim would have."""
    jobs = _JOBS.c
    return {
        "attempts": jobs.attempts + 1,
        "worker": bindparam("b_worker"),
        "begin_time": func.coalesce(jobs.begin_time, now),
        "heartbeat_at": now,
    }


# A settle whose outcome's error the run gives, as bound values.
_BOUND_ERROR: dict[str, Any] = {
    "error_code": bindparam("b_error_code"),
    "error_message": bindparam("b_error_message"),
}


def _settle_statement() -> Update:
    jobs = _JOBS.c
    now = bindparam("b_now", type_=jobs.status_time.type)
    sources = {source for outcome in SETTLED for source in JOB_MOVES[outcome]}
    return (
        update(_JOBS)
        .where(
            jobs.job_id == bindparam("b_job_id"),
            _status_in(frozenset(sources)),
            jobs.attempts == bindparam("b_attempt"),
        )
        .values(status=bindparam("b_outcome"), **_finished(now, **_BOUND_ERROR))
    )


_SETTLE = _settle_statement()


def settle_pending_job(
    session: Session,
    job_id: str,
    attempt: int,
    worker: str,
    outcome: JobStatus,
    error_code: str | None = None,
    error_message: str | None = None,
) -> bool:
    """Claim and settle in one write a job this transaction holds pending
    (:func:`lock_pending_job`): the run's attempt is counted, its worker and times
    stamped as a claim does, and the outcome recorded as :func:`settle_job` does.

    ``attempt`` is this run's number (:func:`lock_pending_job`'s): only a job still
    pending on the one before moves; False otherwise (the lock makes that a broken
    invariant).
    """
    values = _settle_values(job_id, attempt - 1, outcome, error_code, error_message)
    values["b_worker"] = worker
    result: CursorResult[Any] = session.execute(_SETTLE_PENDING, values)  # type: ignore[assignment]
    return result.rowcount == 1


def _settle_pending_statement() -> Update:
    jobs = _JOBS.c
    now = bindparam("b_now", type_=jobs.status_time.type)
    return (
        update(_JOBS)
        .where(
            jobs.job_id == bindparam("b_job_id"),
            _status_in(JOB_MOVES[JobStatus.WORKING]),
            jobs.attempts == bindparam("b_attempt"),
        )
        .values(
            status=bindparam("b_outcome"),
            **_claimed_by_this_run(now),
            **_finished(now, **_BOUND_ERROR),
        )
    )


_SETTLE_PENDING = _settle_pending_statement()


def fail_job(
    session: Session, job_id: str, code: str, message: str, attempt: int | None = None
) -> bool:
    return move_job(
        session, job_id, JobStatus.FAILED, attempt=attempt, error_code=code, error_message=message
    )


def beat(
    session: Session, job_id: str, attempt: int, progress: int, phase: str | None = None
) -> bool:
    """Record that this run of the job is alive; False if the job is no longer its own."""
    values: dict[str, Any] = {"progress": max(0, min(99, progress))}
    if phase is not None:
        values["phase"] = phase
    return _touch_own_run(session, job_id, attempt, **values)


def hold_job(session: Session, job_id: str, attempt: int) -> bool:
    """Take the job's row for this run until the transaction ends; False if not its own.

    The fenced update locks the row, so the sweep cannot requeue or fail the
    job between this check and the run's commit.
    """
    return _touch_own_run(session, job_id, attempt)


def _touch_own_run(session: Session, job_id: str, attempt: int, **values: Any) -> bool:
    """Stamp the heartbeat if the job is working on ``attempt``; False if it is not."""
    jobs = _JOBS.c
    stmt = (
        update(_JOBS)
        .where(
            jobs.job_id == job_id,
            jobs.status == JobStatus.WORKING.value,
            jobs.attempts == attempt,
        )
        .values(heartbeat_at=utcnow(), **values)
    )
    result: CursorResult[Any] = session.execute(stmt)  # type: ignore[assignment]
    return result.rowcount == 1


def unsettled(*statuses: JobStatus) -> ColumnElement[bool]:
    """``status IN (...)`` of pending or working, the constants written into the SQL: the
    status indexes hold only the unsettled jobs (migration 0013), and PostgreSQL uses a
    partial index only for values it sees when planning, a prepared statement's too."""
    if not statuses or any(status.is_terminal for status in statuses):
        raise ValueError("the status indexes hold only pending and working jobs")
    values = sorted(status.value for status in statuses)
    return Job.status.in_([literal(value, String, literal_execute=True) for value in values])


@dataclass(frozen=True)
class CopiesInProgress:
    """Captures and imports not yet settled: the store files they may be writing."""

    job_ids: frozenset[str]
    image_ids: frozenset[str]


COPYING_ACTIONS = (JobAction.CAPTURE_INSTANCE.value, JobAction.IMPORT_IMAGE.value)


def copies_in_progress(session: Session) -> CopiesInProgress:
    """Pending and working captures and imports: their files are never orphans, however old."""
    stmt = select(Job.job_id, Job.resource_ids).where(
        unsettled(JobStatus.PENDING, JobStatus.WORKING),
        Job.action.in_(COPYING_ACTIONS),
    )
    rows = session.execute(stmt).all()
    return CopiesInProgress(
        frozenset(job_id for job_id, _ in rows),
        frozenset(resources[0] for _, resources in rows if resources),
    )


@dataclass(frozen=True)
class LostJob:
    job_id: str
    action: JobAction
    attempt: int
    resource_ids: list[str]
    host: str = ANY_HOST


@dataclass(frozen=True)
class JobToSend:
    """A pending job and the compute host whose queue it goes to ('' for the shared one)."""

    job_id: str
    host: str = ANY_HOST


def lost_jobs(session: Session, timeout: float, now: datetime | None = None) -> list[LostJob]:
    """Working jobs whose worker has been silent for ``timeout`` seconds."""
    cutoff = (now or utcnow()) - timedelta(seconds=timeout)
    stmt = select(Job).where(unsettled(JobStatus.WORKING), Job.heartbeat_at < cutoff).limit(500)
    return [
        LostJob(job.job_id, JobAction(job.action), job.attempts, list(job.resource_ids), job.host)
        for job in session.scalars(stmt)
    ]


def requeue_job(session: Session, job_id: str, attempt: int) -> bool:
    """Give a lost run's job back to the queue, to be dispatched again at once."""
    return move_job(
        session, job_id, JobStatus.PENDING, attempt=attempt, send_requested_at=utcnow(), progress=0
    )


@dataclass(frozen=True)
class QueueState:
    """The job queue as the database has it, for every worker at once."""

    pending: int
    working: int
    oldest_pending_age: float  # seconds since the longest-waiting pending job became pending


def queue_state(session: Session, now: datetime | None = None) -> QueueState:
    stmt = (
        select(Job.status, func.count(), func.min(Job.status_time))
        .where(unsettled(JobStatus.PENDING, JobStatus.WORKING))
        .group_by(Job.status)
    )
    rows = {status: (count, oldest) for status, count, oldest in session.execute(stmt)}
    pending, oldest = rows.get(JobStatus.PENDING.value, (0, None))
    age = ((now or utcnow()) - oldest).total_seconds() if oldest is not None else 0.0
    return QueueState(pending, rows.get(JobStatus.WORKING.value, (0, None))[0], max(age, 0.0))


def find_job(session: Session, job_id: str) -> Job:
    """Any account's job, for the operator; ResourceNotFound if there is none."""
    job = session.get(Job, job_id)
    if job is None:
        raise ResourceNotFound(f"job {job_id} not found")
    return job


def get_job(session: Session, caller: Caller, job_id: str) -> Job:
    job = session.scalars(owned_jobs(caller).where(Job.job_id == job_id)).one_or_none()
    if job is None:
        raise ResourceNotFound(f"job {job_id} not found")
    return job


async def get_job_as_bearer(reads: Reads, digest: str, zone: str, job_id: str) -> Listed:
    """:func:`get_job` for the account of the bearer token whose digest is ``digest``,
    the token checked in the same statement (accounts.bearer_account)."""
    values = {"digest": digest, "zone": zone, "job_id": job_id}
    row = await reads.run(lambda connection: connection.fetch_one(_bearer_job(), values))
    account_id = bearer_account(row, digest)
    if row.job_id is None:
        raise ResourceNotFound(f"job {job_id} not found")
    return Listed(account_id, [row], 1)


@functools.cache
def _bearer_job() -> Select[Any]:
    """The bearer token's row (accounts.BEARER), and its account's job ``job_id`` (or nulls)."""
    own = owned_job_range(bindparam("zone", type_=String), BEARER.c.account_id)
    wanted = own & (Job.job_id == bindparam("job_id", type_=String))
    return select(BEARER, *Job.__table__.columns).select_from(BEARER.outerjoin(Job, wanted))


@dataclass(frozen=True)
class JobFilters:
    """What a listing of jobs asks for; every field is optional."""

    jobs: Sequence[str] = ()
    status: Sequence[JobStatus] = ()
    action: Sequence[JobAction] = ()
    offset: int = 0
    limit: int = 10


def list_jobs(
    session: Session, caller: Caller, filters: JobFilters | None = None
) -> tuple[list[Row[Any]], int]:
    """The caller's jobs, newest first, and the filtered total (rows: a page is read-only)."""
    listing = job_listing(caller, filters or JobFilters(), postgresql=_on_postgresql(session))
    rows = list(session.execute(listing.page, listing.values))
    return rows, int(session.scalar(listing.total, listing.values) or 0)


async def list_jobs_as_bearer(reads: Reads, digest: str, zone: str, filters: JobFilters) -> Listed:
    """:func:`list_jobs` for the account of the bearer token whose digest is
    ``digest``: the token's check and the total in one statement, then the page."""
    postgresql = reads.dialect_name == "postgresql"
    wanted, values = _job_listing_values(zone, filters)
    page = _job_statements(wanted, postgresql)[1]
    return await listed_as_bearer(
        reads, digest, _bearer_job_total(wanted, postgresql), page, values
    )


def _on_postgresql(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def job_listing(caller: Caller, filters: JobFilters, *, postgresql: bool = False) -> Listing:
    """The total and the page of :func:`list_jobs`: both read the caller's range of
    the (zone, owner, create_time, job_id) index, whatever the table's size."""
    wanted, values = _job_listing_values(caller.zone, filters)
    values["owner"] = caller.account_id
    total, page = _job_statements(wanted, postgresql)
    return Listing(total, page, values)


# The list filters of a job listing, by parameter name, and the column each one matches.
_JOB_FILTERS = {"jobs": Job.job_id, "status": Job.status, "action": Job.action}


def _job_listing_values(zone: str, filters: JobFilters) -> tuple[frozenset[str], dict[str, Any]]:
    f = filters
    values: dict[str, Any] = {"zone": zone, "offset": f.offset, "limit": f.limit}
    if f.jobs:
        values["jobs"] = list(f.jobs)
    if f.status:
        values["status"] = [s.value for s in f.status]
    if f.action:
        values["action"] = [a.value for a in f.action]
    return frozenset(values.keys() & _JOB_FILTERS.keys()), values


def _job_range(
    wanted: frozenset[str], postgresql: bool, owner: ColumnElement[str]
) -> ColumnElement[bool]:
    own = owned_job_range(bindparam("zone", type_=String), owner)
    filters = (one_of(_JOB_FILTERS[name], name, postgresql) for name in sorted(wanted))
    return and_(own, *filters)


@functools.cache
def _job_statements(wanted: frozenset[str], postgresql: bool) -> tuple[Select[Any], Select[Any]]:
    """The total and the page for one set of filters, built once (values are parameters)."""
    where = _job_range(wanted, postgresql, bindparam("owner", type_=String))
    total = select(func.count()).select_from(Job).where(where)
    page = (
        select(*Job.__table__.columns)
        .where(where)
        .order_by(Job.create_time.desc(), Job.job_id.desc())
        .offset(bindparam("offset", type_=Integer))
        .limit(bindparam("limit", type_=Integer))
    )
    return total, page


@functools.cache
def _bearer_job_total(wanted: frozenset[str], postgresql: bool) -> Select[Any]:
    """The bearer token's row (accounts.BEARER) and its account's total, in one statement."""
    where = _job_range(wanted, postgresql, BEARER.c.account_id)
    total = select(func.count()).select_from(Job).where(where).scalar_subquery()
    return select(BEARER, total.label("total"))


def take_jobs_to_resend(
    session: Session, grace: float, now: datetime | None = None
) -> list[JobToSend]:
    """Pending jobs nobody claimed within ``grace`` seconds; marks them re-dispatched.

    The mark is a compare-and-set on the stale stamp, so of two sweeps running
    at once each job is taken by one only.
    """
    now = now or utcnow()
    cutoff = now - timedelta(seconds=grace)
    stale = (unsettled(JobStatus.PENDING), Job.send_requested_at < cutoff)
    job_ids = list(session.scalars(select(Job.job_id).where(*stale).limit(500)))
    if not job_ids:
        return []
    taken = session.execute(
        update(Job)
        .where(Job.job_id.in_(job_ids), *stale)
        .values(send_requested_at=now)
        .returning(Job.job_id, Job.host)
        .execution_options(synchronize_session=False)
    )
    return [JobToSend(job_id, host) for job_id, host in taken]


@dataclass(frozen=True)
class SettledRun:
    """A delete or recover claimed and settled by one statement: the run and its outcome."""

    run: ClaimedRun
    status: JobStatus
    error_code: str | None
    error_message: str | None


def claim_and_settle_batch(
    connection: Connection, job_id: str, worker: str, host: str
) -> SettledRun | None:
    """PostgreSQL: claim a pending delete or recover job, move its images and settle it,
    in one statement (one round trip, its own transaction on an autocommit connection).

    The same compare-and-sets as step by step: the job is held pending (``FOR UPDATE``;
    a second delivery waits, then finds it no longer pending), each image moves only
    from its action's source states, and the job's row is written once, pending to its
    outcome, counting the run. None if the job is not a pending delete or recover of
    this host (or any): the caller then takes the general path.
    """
    values = {"b_job_id": job_id, "b_worker": worker, "b_host": host, "b_now": utcnow()}
    compiled = _claim_and_settle_batch_compiled(connection.dialect)
    sql, bound = compiled.string, compiled.construct_params(values)
    row = connection.exec_driver_sql(sql, bound).one_or_none()
    if row is None:
        return None
    fields = row._asdict()
    status = JobStatus(fields.pop("status"))
    code, message = fields.pop("error_code"), fields.pop("error_message")
    return SettledRun(ClaimedRun(**fields), status, code, message)


# The image move that settles each batch job, and the values it sets besides the status.
BATCH_MOVES: dict[JobAction, tuple[ImageAction, dict[str, Any]]] = {
    JobAction.DELETE_IMAGES: (ImageAction.FINISH_DELETE, {}),
    JobAction.RECOVER_IMAGES: (ImageAction.FINISH_RECOVER, {"deprecated_at": None}),
}


@functools.cache
def _claim_and_settle_batch_compiled(dialect: Dialect) -> Compiled:
    """The statement compiled once for the process's driver: run as the driver's SQL, a
    delete job spends no time in SQLAlchemy's compiled cache and parameter expansion
    (about a fifth of a worker's CPU per job)."""
    compiled = _claim_and_settle_batch().compile(dialect=dialect)
    if "POSTCOMPILE" in compiled.string:
        raise ValueError("the one-statement settle must not expand parameters per call")
    return compiled


def _one_of(column: ColumnElement[str], values: Sequence[str]) -> ColumnElement[bool]:
    """``column IN (...)`` of constants, each its own parameter: nothing to expand per call."""
    return column.in_([literal(value) for value in values])


@functools.cache
def _claim_and_settle_batch() -> Update:
    """``WITH held AS (SELECT … FOR UPDATE), <one image move per action> UPDATE jobs …
    RETURNING``: built once."""
    jobs = _JOBS.c
    now = bindparam("b_now", type_=jobs.status_time.type)
    held = (
        select(jobs.job_id, jobs.action, jobs.resource_ids, jobs.attempts)
        .where(
            jobs.job_id == bindparam("b_job_id"),
            _status_in(JOB_MOVES[JobStatus.WORKING]),
            jobs.host.in_((ANY_HOST, bindparam("b_host"))),
            _one_of(jobs.action, sorted(action.value for action in BATCH_MOVES)),
        )
        .with_for_update()
        .cte("held")
    )
    moves = [_batch_move(held, action, now) for action in BATCH_MOVES]
    moved = sum((select(func.count()).select_from(m).scalar_subquery() for m in moves), 0)
    wanted = func.json_array_length(held.c.resource_ids)
    missed = wanted - moved
    all_moved = missed == 0
    changed = func.concat(missed, " image(s) changed meanwhile")
    settle = (
        update(_JOBS)
        .where(jobs.job_id == held.c.job_id, jobs.attempts == held.c.attempts)
        .values(
            status=case((all_moved, JobStatus.SUCCESSFUL.value), else_=_DONE_WITH_FAILURE),
            **_claimed_by_this_run(now),
            **_finished(
                now,
                error_code=case((all_moved, null()), else_="ImagesChanged"),
                error_message=case((all_moved, null()), else_=changed),
            ),
        )
        .returning(*(jobs[name] for name in _CLAIMED_COLUMNS), jobs.status)
        .returning(jobs.error_code, jobs.error_message)
    )
    return settle.add_cte(held, *moves)


_DONE_WITH_FAILURE = JobStatus.DONE_WITH_FAILURE.value


def _batch_move(held: CTE, action: JobAction, now: ColumnElement[Any]) -> CTE:
    """The image move that settles ``action``'s jobs, on the held job's images (none if
    the held job is another action's): the compare-and-set of ``models.transitions``."""
    image_action, values = BATCH_MOVES[action]
    move = IMAGE_MOVES[image_action]
    images = _IMAGES.c
    # ``= ANY (<one array>)``, so that the images are found through their primary key:
    # ``IN (SELECT json_array_elements_text(…))`` got a generic plan with a hash join over
    # a sequential scan of every image (4 ms at 3,000 images, against 0.6 ms).
    element = func.json_array_elements_text(held.c.resource_ids).table_valued("value")
    ids = (
        select(func.array_agg(element.c.value))
        .select_from(held)
        .join(element, true())
        .where(held.c.action == action.value)
    )
    target = {} if move.target is None else {"status": move.target.value, "status_time": now}
    return (
        update(_IMAGES)
        .where(
            images.image_id == any_(sql_cast(ids.scalar_subquery(), ARRAY(Text))),
            # The source states are checked on the rows the primary key finds, never read
            # through the status index (``status || ''`` matches no index): the ids are known
            # only as the statement runs, and PostgreSQL's custom plan, reckoning deleted images
            # few until the next ANALYZE, read every deleted image for the recover move that a
            # delete job runs too (on no ids), a cost growing with each image deleted.
            _one_of(
                images.status.concat(literal_column("''")),
                sorted(s.value for s in move.sources),
            ),
            images.transition_status == move.source_transition.value,
        )
        .values(transition_status=move.target_transition.value, **target, **values)
        .returning(images.image_id)
        .cte(f"moved_{action.name.lower()}")
    )
