"""Who is calling, in which zone, and running domain code for them: writes on the app's
write path (models/writes.py: on the event loop on PostgreSQL, in a thread on SQLite),
units of work on a Session in a thread, and the listings' reads on the event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Concatenate, ParamSpec, TypeVar

from aiohttp import web
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.keys import ACCOUNT_ID, BEARER_TOKEN, DATABASE, READS, REQUEST_ID, SETTINGS, WRITES
from models.accounts import BEARER, BEARER_LOCKING_QUOTA, bearer_account, token_digest
from models.client_requests import DuplicateRequest
from models.errors import ResourceNotFound
from models.quotas import Quota, quota_from
from models.reads import Listed, Reads
from models.scoping import Caller
from models.statements import Statements

# The bearer token's row (accounts.BEARER), built once: a write's first statement.
_BEARER_ROW = select(BEARER)

P = ParamSpec("P")
R = TypeVar("R")


def caller_of(request: web.Request) -> Caller:
    """The authenticated account and the zone of the path; 404 for an unknown zone."""
    zone = zone_of(request)
    return Caller(account_id=request[ACCOUNT_ID], zone=zone, request_id=request.get(REQUEST_ID))


def zone_of(request: web.Request) -> str:
    """The zone of the path; 404 for an unknown zone."""
    zone = request.match_info["zone"]
    if zone not in request.app[SETTINGS].zones:
        raise ResourceNotFound(f"zone {zone} not found")
    return zone


async def read_as_bearer(
    request: web.Request,
    read: Callable[Concatenate[Reads, str, str, P], Awaitable[Listed]],
    *args: P.args,
    **kwargs: P.kwargs,
) -> Listed:
    """``read(reads, digest, zone, ...)`` for a handler marked ``auth.checks_own_token``:
    it checks the bearer token in its own first statement, on the event loop
    (models/reads.py), and the request is then the token's account's."""
    zone = zone_of(request)
    digest = token_digest(request[BEARER_TOKEN])
    listed = await read(request.app[READS], digest, zone, *args, **kwargs)
    request[ACCOUNT_ID] = listed.account_id
    return listed


async def in_transaction(
    request: web.Request,
    work: Callable[Concatenate[Session, P], R],
    *args: P.args,
    **kwargs: P.kwargs,
) -> R:
    """Run ``work(session, ...)`` in a writing unit of work, in a thread; run once
    more if its connection was lost before the commit (models.db.Database.run_transaction)."""

    def unit(session: Session) -> R:
        return work(session, *args, **kwargs)

    return await asyncio.to_thread(request.app[DATABASE].run_transaction, unit)


async def in_reading(
    request: web.Request,
    work: Callable[Concatenate[Session, P], R],
    *args: P.args,
    **kwargs: P.kwargs,
) -> R:
    """Run ``work(session, ...)`` in a read-only unit of work, in a thread; run once
    more if its connection was lost (models.db.Database.run_reading)."""

    def unit(session: Session) -> R:
        return work(session, *args, **kwargs)

    return await asyncio.to_thread(request.app[DATABASE].run_reading, unit)


async def in_write(
    request: web.Request,
    work: Callable[Concatenate[Statements, P], R],
    *args: P.args,
    **kwargs: P.kwargs,
) -> R:
    """Run ``work(statements, ...)`` in a writing unit of work on the app's write path
    (models.writes.Writes); once more if its connection was lost before the commit."""

    def unit(statements: Statements) -> R:
        return work(statements, *args, **kwargs)

    return await request.app[WRITES].run(unit)


async def in_idempotent_write(
    request: web.Request,
    work: Callable[Concatenate[Statements, P], R],
    *args: P.args,
    **kwargs: P.kwargs,
) -> R:
    """Like :func:`in_write`; a request that lost a race for its ``request_id``
    runs once more, and then finds and returns the winner's job."""
    try:
        return await in_write(request, work, *args, **kwargs)
    except DuplicateRequest:
        return await in_write(request, work, *args, **kwargs)


def as_bearer(
    request: web.Request, work: Callable[Concatenate[Statements, Caller, P], R]
) -> Callable[Concatenate[Statements, P], R]:
    """``work(statements, caller, ...)`` for a write handler marked
    ``auth.checks_own_token``: the unit checks the bearer token in its own first
    statement (one unit of work and one connection per request), and the request
    is then the token's account's. Read now, never cached: a revoked token or a
    disabled account is refused at once. A refused token rolls the unit back
    before it has changed anything."""
    zone = zone_of(request)
    digest = token_digest(request[BEARER_TOKEN])

    def checked(statements: Statements, /, *args: P.args, **kwargs: P.kwargs) -> R:
        row = statements.first(_BEARER_ROW, {"digest": digest})
        return work(statements, _caller(request, zone, row, digest), *args, **kwargs)

    return checked


def as_bearer_holding_quota(
    request: web.Request,
    default: Quota,
    work: Callable[Concatenate[Statements, Caller, Quota, P], R],
) -> Callable[Concatenate[Statements, P], R]:
    """:func:`as_bearer` for a capture: the same first statement also locks the token's
    account row until commit and reads its quota (``default`` where it has none), which
    ``work`` gets: the check and the quota's lock in one round trip."""
    zone = zone_of(request)
    digest = token_digest(request[BEARER_TOKEN])

    def checked(statements: Statements, /, *args: P.args, **kwargs: P.kwargs) -> R:
        row = statements.first(BEARER_LOCKING_QUOTA, {"digest": digest})
        caller = _caller(request, zone, row, digest)
        quota = quota_from(row.quota_images, row.quota_gb, default)
        return work(statements, caller, quota, *args, **kwargs)

    return checked


def _caller(request: web.Request, zone: str, row: Any, digest: str) -> Caller:
    """The caller of a bearer's row (refused: AuthenticationFailed); the request is
    then the token's account's."""
    account_id = bearer_account(row, digest)
    request[ACCOUNT_ID] = account_id
    return Caller(account_id=account_id, zone=zone, request_id=request.get(REQUEST_ID))
