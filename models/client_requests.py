"""Client idempotency: a caller repeating a ``request_id`` within 24 h gets the same job.

The key is written in the same transaction as the job it names, before
anything else, so of two concurrent requests with one key the second fails
on the key (:class:`DuplicateRequest`) and is answered with the first's job.
"""

from __future__ import annotations

from datetime import timedelta
from typing import cast

from sqlalchemy import String, Table, bindparam, delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from models.errors import InvalidParameter
from models.scoping import Caller
from models.statements import Db, insert_values, inserting, new_row, statements_of
from models.states import JobAction
from models.tables import ClientRequest, Job, UTCDateTime, utcnow

REQUEST_TTL = timedelta(hours=24)

_REQUESTS = cast(Table, ClientRequest.__table__)
_JOBS = cast(Table, Job.__table__)
_THIS_KEY = (
    _REQUESTS.c.owner == bindparam("owner", type_=String),
    _REQUESTS.c.request_id == bindparam("request_id", type_=String),
)
_KEY = select(*_REQUESTS.c).where(*_THIS_KEY)
_JOB = select(*_JOBS.c).where(_JOBS.c.job_id == bindparam("job_id", type_=String))
_EXPIRED_KEY = delete(_REQUESTS).where(
    *_THIS_KEY, _REQUESTS.c.created_at <= bindparam("cutoff", type_=UTCDateTime())
)


class DuplicateRequest(Exception):
    """Another request with the same request_id committed first: replay it."""


def replay(db: Db, caller: Caller, request_id: str, action: JobAction) -> Job | None:
    """The job an earlier request with this id made, if within the last 24 h."""
    statements = statements_of(db)
    row = statements.first(_KEY, {"owner": caller.account_id, "request_id": request_id})
    if row is None or row.created_at <= utcnow() - REQUEST_TTL:
        return None
    job_row = statements.first(_JOB, {"job_id": row.job_id})
    job = Job(**job_row._mapping) if job_row is not None else None
    if row.action != action.value or job is None or job.zone != caller.zone:
        where = job.zone if job else "another zone"
        raise InvalidParameter(
            f"invalid parameter 'request_id': {request_id} was used for a "
            f"{row.action} request in zone {where}"
        )
    return job


def remember(db: Db, caller: Caller, request_id: str, action: JobAction, job_id: str) -> None:
    """Record the key for ``job_id``; DuplicateRequest if a concurrent request took it."""
    statements = statements_of(db)
    key = {"owner": caller.account_id, "request_id": request_id}
    statements.count(_EXPIRED_KEY, {**key, "cutoff": utcnow() - REQUEST_TTL})
    new = new_row(ClientRequest, **key, action=action.value, job_id=job_id)
    try:
        statements.count(inserting(_REQUESTS), insert_values(_REQUESTS, new))
    except IntegrityError as exc:
        raise DuplicateRequest(request_id) from exc


def forget_expired(session: Session) -> int:
    stmt = delete(ClientRequest).where(ClientRequest.created_at <= utcnow() - REQUEST_TTL)
    return int(session.execute(stmt).rowcount)  # type: ignore[attr-defined]
