"""Jobs: creation, compare-and-set moves, and the caller's queries."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Connection,
    CursorResult,
    Integer,
    Row,
    Select,
    String,
    Table,
    Update,
    and_,
    bindparam,
    func,
    literal,
    literal_column,
    select,
    text,
    update,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.engine.interfaces import Compiled
from sqlalchemy.orm import Session

from models import ids
from models.accounts import BEARER, bearer_account
from models.errors import ResourceNotFound
from models.reads import Listed, Listing, Reads, listed_as_bearer
from models.scoping import Caller, one_of, owned_job_range, owned_jobs
from models.statements import Db, insert_values, inserting, new_row, statements_of
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
    return new_row(
        Job,
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


@dataclass(frozen=True)
class SettledBatch:
    """What one message's statement did: the jobs it settled (the message's own first, if
    it settled that one), and the status it read of the message's own job when it did not
    hold it (None when it held it, or when there is no such job)."""

    settled: list[SettledRun]
    own_status: JobStatus | None

    @property
    def general_path(self) -> bool:
        """The message's job is pending but this statement did not take it (a capture, or a
        job whose lock another run released meanwhile): the general path decides."""
        return self.own_status is JobStatus.PENDING


# How many pending deletes and recovers besides its own one message settles at most.
GROUP_COMMIT_JOBS = 16


def claim_and_settle_batch(
    connection: Connection, job_id: str, worker: str, host: str
) -> SettledBatch:
    """PostgreSQL: claim the message's pending delete or recover job and up to
    :data:`GROUP_COMMIT_JOBS` other pending deletes and recovers this worker may run,
    move their images and settle each, in one statement (one round trip and one commit,
    its own transaction on an autocommit connection): a group commit.

    The same compare-and-sets as step by step: the message's job is held pending
    (``FOR UPDATE``; a second delivery waits, then finds it no longer pending); the others
    are pending jobs of any host or this worker's whose send was requested, oldest first,
    that no other run holds (``FOR UPDATE SKIP LOCKED``); each image moves only from its
    action's source states, and is credited to the oldest held job of that action naming
    it, so that a later job naming it too comes out ``done with failure`` as it would
    after the first; each job's row is written once, pending to its own outcome, counting
    its own run. Nothing is taken unless the message's job is.

    When the message's job is not held, the statement only reads its status (no write):
    :attr:`SettledBatch.general_path` says whether it is still pending.
    """
    values = {"b_job_id": job_id, "b_worker": worker, "b_host": host, "b_now": utcnow()}
    compiled = _claim_and_settle_batch_compiled(connection.dialect)
    sql, bound = compiled.string, compiled.construct_params(values)
    settled: list[SettledRun] = []
    own_status: JobStatus | None = None
    for row in connection.exec_driver_sql(sql, bound):
        fields = row._asdict()
        status = JobStatus(fields.pop("status"))
        code, message = fields.pop("error_code"), fields.pop("error_message")
        if not fields.pop("settled_here"):
            own_status = status
            continue
        settled.append(SettledRun(ClaimedRun(**fields), status, code, message))
    settled.sort(key=lambda one: one.run.job_id != job_id)  # the message's own job first
    return SettledBatch(settled, own_status)


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
    compiled = text(_claim_and_settle_batch_sql()).compile(dialect=dialect)
    if "POSTCOMPILE" in compiled.string:
        raise ValueError("the one-statement settle must not expand parameters per call")
    return compiled


def _quoted(values: Sequence[str]) -> str:
    """A list of SQL string constants (the domain's own enum values, never a caller's)."""
    return ", ".join("'" + value.replace("'", "''") + "'" for value in sorted(values))


_HELD_COLUMNS = "job_id, action, resource_ids, attempts, create_time"


def _claim_and_settle_batch_sql() -> str:
    """``WITH own (FOR UPDATE), others (FOR UPDATE SKIP LOCKED), named images (each credited
    to one job), one image move per action, each job's outcome, UPDATE jobs … RETURNING``,
    and the message's own job's status when it was not held. Built once, from the domain's
    constants (``BATCH_MOVES``, ``IMAGE_MOVES``, ``JobStatus``)."""
    pending = JobStatus.PENDING.value
    actions = _quoted([action.value for action in BATCH_MOVES])
    returned = ", ".join(f"jobs.{name}" for name in _CLAIMED_COLUMNS)
    moves = ",\n".join(_batch_move_sql(action) for action in BATCH_MOVES)
    moved = "\n    UNION ALL ".join(
        f"SELECT image_id, '{action.value}' AS action FROM moved_{action.name.lower()}"
        for action in BATCH_MOVES
    )
    # ``credited`` is MATERIALIZED: inlined, it was counted again for each held job (17
    # times 0.06 ms). ``status || ''`` for the message's own job: checked on the row its key
    # finds, never read through a status index. The others are read through the partial index of
    # unsettled jobs (migration 0013), ``status = 'pending'`` and oldest send first.
    return f"""WITH own AS (
  SELECT {_HELD_COLUMNS} FROM jobs
  WHERE job_id = :b_job_id AND status || '' = '{pending}' AND host IN ('{ANY_HOST}', :b_host)
    AND action IN ({actions})
  FOR UPDATE
), others AS (
  SELECT {_HELD_COLUMNS} FROM jobs
  WHERE status = '{pending}' AND send_requested_at <= :b_now
    AND host IN ('{ANY_HOST}', :b_host) AND action IN ({actions})
    AND job_id <> :b_job_id AND EXISTS (SELECT FROM own)
  ORDER BY send_requested_at
  LIMIT {GROUP_COMMIT_JOBS}
  FOR UPDATE SKIP LOCKED
), held AS (
  SELECT {_HELD_COLUMNS} FROM own UNION ALL SELECT {_HELD_COLUMNS} FROM others
), named AS (
  SELECT held.job_id, held.action, named.image_id, row_number() OVER (
    PARTITION BY held.action, named.image_id ORDER BY held.create_time, held.job_id
  ) AS turn
  FROM held CROSS JOIN json_array_elements_text(held.resource_ids) AS named(image_id)
),
{moves},
credited AS MATERIALIZED (
  SELECT named.job_id, count(*) AS moved
  FROM named JOIN (
    {moved}
  ) AS moved ON moved.image_id = named.image_id AND moved.action = named.action
  WHERE named.turn = 1
  GROUP BY named.job_id
), outcome AS (
  SELECT held.job_id, held.attempts,
    json_array_length(held.resource_ids) - coalesce(credited.moved, 0) AS missed
  FROM held LEFT JOIN credited ON credited.job_id = held.job_id
), settled AS (
  UPDATE jobs SET
    status = CASE WHEN outcome.missed = 0 THEN '{JobStatus.SUCCESSFUL.value}'
      ELSE '{JobStatus.DONE_WITH_FAILURE.value}' END,
    attempts = jobs.attempts + 1, worker = :b_worker,
    begin_time = coalesce(jobs.begin_time, :b_now), heartbeat_at = :b_now,
    progress = 100,
    error_code = CASE WHEN outcome.missed = 0 THEN NULL ELSE 'ImagesChanged' END,
    error_message = CASE WHEN outcome.missed = 0 THEN NULL
      ELSE concat(outcome.missed, ' image(s) changed meanwhile') END,
    status_time = :b_now, finished_time = :b_now
  FROM outcome
  WHERE jobs.job_id = outcome.job_id AND jobs.attempts = outcome.attempts
  RETURNING {returned}, jobs.status, jobs.error_code, jobs.error_message
)
SELECT settled.*, true AS settled_here FROM settled
UNION ALL
SELECT {returned}, jobs.status, jobs.error_code, jobs.error_message, false FROM jobs
WHERE jobs.job_id = :b_job_id AND NOT EXISTS (SELECT FROM own)"""


def _batch_move_sql(action: JobAction) -> str:
    """The image move that settles ``action``'s held jobs: the compare-and-set of
    ``models.transitions`` on the images credited to them.

    ``= ANY (<one array>)``, so that the images are found through their primary key
    (``IN (SELECT …)`` got a generic plan over a sequential scan of every image), and the
    source states checked on the rows the key finds, never read through the status index
    (``status || ''``): a custom plan that reckoned deleted images few read every one."""
    image_action, values = BATCH_MOVES[action]
    move = IMAGE_MOVES[image_action]
    sets = [f"transition_status = '{move.target_transition.value}'"]
    if move.target is not None:
        sets += [f"status = '{move.target.value}'", "status_time = :b_now"]
    sets += [f"{column} = NULL" for column, value in values.items() if value is None]
    if any(value is not None for value in values.values()):
        raise ValueError("a batch move sets its extra columns to NULL only")
    sources = _quoted([status.value for status in move.sources])
    return f"""moved_{action.name.lower()} AS (
  UPDATE images SET {", ".join(sets)}
  WHERE image_id = ANY (ARRAY(
      SELECT image_id FROM named WHERE action = '{action.value}' AND turn = 1))
    AND status || '' IN ({sources})
    AND transition_status = '{move.source_transition.value}'
  RETURNING image_id
)"""
