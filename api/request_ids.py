"""Request ids: every response says ``X-Request-Id``; the access log (``api/access_log.py``)
and the job record it.

A caller's valid ``X-Request-Id`` is kept (so its own logs and ours join);
otherwise the API makes one. The header keeps its other role too: on
``POST /images`` and ``DELETE /images/{ids}`` the caller's header is the
idempotency key (``image_routes.request_id_of``), and an id made here never is.
"""

from __future__ import annotations

import os
import random
import re

from aiohttp import web

from api.keys import REQUEST_ID

HEADER = "X-Request-Id"

# api.schemas.RequestId, as one compiled pattern: it runs on every request.
_VALID_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")

# The ids made here join log lines; they are never a secret nor an idempotency key, so
# they come from a generator seeded from the system's random source (again in a forked
# child, so that two processes never share a sequence), not one system call per request.
_GENERATOR = random.Random()
os.register_at_fork(after_in_child=_GENERATOR.seed)


def new_request_id() -> str:
    """``req-`` and 80 random bits, in 20 lowercase hexadecimal digits."""
    return f"req-{_GENERATOR.getrandbits(80):020x}"


def request_id_of_caller(request: web.Request) -> str | None:
    """The caller's ``X-Request-Id`` if it is a valid request id."""
    caller_id = request.headers.get(HEADER)
    return caller_id if caller_id is not None and _VALID_ID.fullmatch(caller_id) else None


def assign_request_id(request: web.Request) -> str:
    """The request's id, kept or made (api/middleware.py sets it on the answer)."""
    request_id = request_id_of_caller(request) or new_request_id()
    request[REQUEST_ID] = request_id
    return request_id
