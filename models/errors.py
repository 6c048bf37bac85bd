"""One error hierarchy for the whole service.

Each error carries its HTTP status and QingCloud ``ret_code``; the API maps
them to responses in one middleware. The message always names the parameter
or resource at fault and never contains a stack trace or a server path.
"""

from __future__ import annotations


class ServiceError(Exception):
    """Internal error."""

    http_status = 500
    ret_code = 5000

    def __init__(self, message: str | None = None) -> None:
        self.message = message or (self.__doc__ or "error").strip()
        super().__init__(self.message)


class InvalidParameter(ServiceError):
    """A parameter is missing or invalid."""

    http_status = 400
    ret_code = 1100


class AuthenticationFailed(ServiceError):
    """Authentication failed: send a valid bearer token."""

    http_status = 401
    ret_code = 1200


class AccessDenied(ServiceError):
    """Access denied."""

    http_status = 403
    ret_code = 1400


class StateConflict(ServiceError):
    """The resource's state does not allow this action."""

    http_status = 409
    ret_code = 1400


class ResourceNotFound(ServiceError):
    """Resource not found."""

    http_status = 404
    ret_code = 2100


class QuotaExceeded(ServiceError):
    """Quota exceeded."""

    http_status = 429
    ret_code = 2500


class ServiceUnavailable(ServiceError):
    """A dependency of the service is unavailable; retry later."""

    http_status = 503
    ret_code = 5100
