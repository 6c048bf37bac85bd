"""Every failure becomes ``{"ret_code", "message"}`` here, and only here."""

from __future__ import annotations

import logging

from aiohttp import web
from sqlalchemy.exc import DBAPIError, OperationalError

from api.access_log import logged_path, printable
from api.schemas import ErrorOut
from models.errors import ServiceError, ServiceUnavailable

log = logging.getLogger(__name__)

_HTTP_RET_CODES = {
    400: 1100,
    401: 1200,
    403: 1400,
    404: 2100,
    405: 1100,
    408: 1100,
    409: 1400,
    413: 1100,
    415: 1100,
    429: 2500,
}


def error_response(status: int, ret_code: int, message: str) -> web.Response:
    body = ErrorOut(ret_code=ret_code, message=message).model_dump_json()
    return web.Response(status=status, text=body, content_type="application/json")


def service_error_response(error: ServiceError) -> web.Response:
    response = error_response(error.http_status, error.ret_code, error.message)
    if error.http_status == 401:
        challenge = getattr(error, "challenge", 'Bearer realm="imagesvc"')
        response.headers["WWW-Authenticate"] = challenge
    retry_after = getattr(error, "retry_after", None)
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    if getattr(error, "closes_connection", False):
        response.force_close()
    return response


def error_answer(request: web.Request, exc: Exception) -> web.Response:
    """The answer to a request that raised ``exc`` (api/middleware.py): a service
    error's own, an HTTP error's, a 503 for a lost database, else a 500 (logged,
    with its traceback: called from the ``except`` that caught it)."""
    if isinstance(exc, ServiceError):
        return service_error_response(exc)
    if isinstance(exc, web.HTTPException):
        return _http_error(request, exc)
    if isinstance(exc, OperationalError | DBAPIError):
        if exc.connection_invalidated or isinstance(exc, OperationalError):
            log.warning("database unavailable: %s", printable(str(exc.orig), 500))
            return service_error_response(ServiceUnavailable("the database is unavailable"))
        log.exception("database error on %s %s", request.method, logged_path(request))
        return error_response(500, 5000, "internal error")
    log.exception("unhandled error on %s %s", request.method, logged_path(request))
    return error_response(500, 5000, "internal error")


def _http_error(request: web.Request, exc: web.HTTPException) -> web.Response:
    if exc.status == 404:
        message = f"no such path: {request.path}"
    elif exc.status == 405:
        message = f"method {request.method} is not allowed on {request.path}"
    else:
        message = exc.reason
    ret_code = _HTTP_RET_CODES.get(exc.status, 5000 if exc.status >= 500 else 1100)
    response = error_response(exc.status, ret_code, message)
    if exc.status == 405 and "Allow" in exc.headers:
        response.headers["Allow"] = exc.headers["Allow"]
    return response
