"""The one middleware: what every request goes through, in one layer.

In order: the request's id (api/request_ids.py), the limits its headers alone
can refuse (api/limits.py), its bearer token (api/auth.py), the handler; any
failure becomes ``{"ret_code", "message"}`` (api/errors.py, and only there);
the answer carries the id, and the metrics (api/metrics.py) count it with the
status it got. One coroutine rather than one per concern: aiohttp resumes every
layer each time the handler wakes (docs/listing-profile.md, round 6).
"""

from __future__ import annotations

import time

from aiohttp import web
from aiohttp.typedefs import Handler

from api.auth import authenticate_request, check_unchecked_token
from api.errors import error_answer
from api.limits import refuse_from_headers
from api.metrics import REQUEST_METRICS
from api.request_ids import HEADER, assign_request_id


@web.middleware
async def service_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    request_id = assign_request_id(request)
    status = 500
    try:
        try:
            refuse_from_headers(request)
            await authenticate_request(request)
            response = await handler(request)
        except Exception as exc:
            response = await _refused(request, exc)
        status = response.status
    finally:
        request.app[REQUEST_METRICS].record(request, status, time.perf_counter() - started)
    response.headers[HEADER] = request_id
    return response


async def _refused(request: web.Request, exc: Exception) -> web.StreamResponse:
    """The answer to a request that raised ``exc``; a bad token that was not checked
    yet is answered first (auth.check_unchecked_token)."""
    try:
        await check_unchecked_token(request, exc)
    except Exception as refused:
        return error_answer(request, refused)
    return error_answer(request, exc)
