"""The access log: one line per request, that request data can neither split nor forge.

The rule (docs/security.md): a line holds the client address, the method,
the path **without its query string**, the status, the body size and the
time taken. Query strings are never logged, because clients put secrets in
them; every request-derived value is escaped (control characters, quotes and
backslashes as ``\\xNN``/``\\uNNNN``) and cut to a bounded length.
"""

from __future__ import annotations

import logging
import re
import unicodedata

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse

from api.keys import REQUEST_ID
from api.metrics import KNOWN_METHODS
from imagesvc.logs import write_line

MAX_LOGGED_CHARS = 256
# Printable ASCII but the quote and the backslash: what almost every value is, kept as is.
_PLAIN = re.compile(r"[ !#-\[\]-~]*")


def printable(text: str, limit: int = MAX_LOGGED_CHARS) -> str:
    """``text`` on one line and unambiguous: controls, quotes and backslashes escaped."""
    if len(text) <= limit and _PLAIN.fullmatch(text):
        return text
    escaped = "".join(_escape(char) for char in text[:limit])
    return escaped + ("..." if len(text) > limit else "")


def _escape(char: str) -> str:
    if char in '"\\' or (unicodedata.category(char)[0] in "CZ" and char != " "):
        code = ord(char)
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
    return char


def logged_path(request: BaseRequest) -> str:
    """The request's path as received (still percent-encoded), without the query string."""
    return printable(request.raw_path.partition("?")[0])


class SafeAccessLogger(AbstractAccessLogger):
    """aiohttp's access logger, replaced: no query strings, no raw request bytes."""

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        """One INFO line, written without a LogRecord when only the service's own handler
        would see it (imagesvc/logs.py, write_line): a record and its handling cost
        more than the rest of the line, on every request."""
        if not self.logger.isEnabledFor(logging.INFO):
            return
        version, method = request.version, request.method
        if method not in KNOWN_METHODS:  # any other token the parser let through
            method = printable(method, 16)
        line = (
            f'{printable(request.remote or "-")} "{method} '
            f'{logged_path(request)} HTTP/{version.major}.{version.minor}" '
            f"{response.status} {response.body_length} {time:.3f}s"
        )
        # The request id (api/request_ids.py) joins this line to the job and worker lines;
        # it is the caller's only if valid, so it needs no escaping.
        write_line(self.logger, logging.INFO, line, {"request_id": request.get(REQUEST_ID, "-")})
