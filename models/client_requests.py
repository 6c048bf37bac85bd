"""Client idempotency: a caller repeating a ``request_id`` within 24 h gets the same job.

The key is written in the same transaction as the job it names, before
anything else, so of two concurrent requests with one key the second fails
on the key (:class:`DuplicateRequest`) and is answered with the first's job.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from models.errors import InvalidParameter
from models.scoping import Caller
from models.states import JobAction
from models.tables import ClientRequest, Job, utcnow

REQUEST_TTL = timedelta(hours=24)


class DuplicateRequest(Exception):
    """Another request with the same request_id committed first: replay it."""


def replay(session: Session, caller: Caller, request_id: str, action: JobAction) -> Job | None:
    """The job an earlier request with this id made, if within the last 24 h."""
    row = session.get(ClientRequest, (caller.account_id, request_id))
    if row is None or row.created_at <= utcnow() - REQUEST_TTL:
        return None
    job = session.get(Job, row.job_id)
    if row.action != action.value or job is None or job.zone != caller.zone:
        where = job.zone if job else "another zone"
        raise InvalidParameter(
            f"invalid parameter 'request_id': {request_id} was used for a "
            f"{row.action} request in zone {where}"
        )
    return job


def remember(
    session: Session, caller: Caller, request_id: str, action: JobAction, job_id: str
) -> None:
    """Record the key for ``job_id``; DuplicateRequest if a concurrent request took it."""
    session.execute(
        delete(ClientRequest).where(
            ClientRequest.owner == caller.account_id,
            ClientRequest.request_id == request_id,
            ClientRequest.created_at <= utcnow() - REQUEST_TTL,
        )
    )
    session.add(
        ClientRequest(
            owner=caller.account_id, request_id=request_id, action=action.value, job_id=job_id
        )
    )
    try:
        session.flush()
    except IntegrityError as exc:
        raise DuplicateRequest(request_id) from exc


def forget_expired(session: Session) -> int:
    stmt = delete(ClientRequest).where(ClientRequest.created_at <= utcnow() - REQUEST_TTL)
    return int(session.execute(stmt).rowcount)  # type: ignore[attr-defined]
