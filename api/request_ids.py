"""Request ids: every response says ``X-Request-Id``; the access log (``api/access_log.py``)
and the job record it.

A caller's valid ``X-Request-Id`` is kept (so its own logs and ours join);
otherwise the API makes one. The header keeps its other role too: on
``POST /images`` and ``DELETE /images/{ids}`` the caller's header is the
idempotency key (``image_routes.request_id_of``), and an id made here never is.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler
from pydantic import TypeAdapter, ValidationError

from api.keys import REQUEST_ID
from api.schemas import RequestId
from models.ids import new_id

HEADER = "X-Request-Id"

_VALID_ID = TypeAdapter(RequestId)


def request_id_of_caller(request: web.Request) -> str | None:
    """The caller's ``X-Request-Id`` if it is a valid request id."""
    try:
        return _VALID_ID.validate_python(request.headers.get(HEADER))
    except ValidationError:
        return None


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = request_id_of_caller(request) or new_id("req-", 16)
    request[REQUEST_ID] = request_id
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        exc.headers[HEADER] = request_id
        raise
    response.headers[HEADER] = request_id
    return response
