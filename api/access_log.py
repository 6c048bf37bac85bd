"""The access log: one line per request, that request data can neither split nor forge.

The rule (docs/security.md): a line holds the client address, the method,
the path **without its query string**, the status, the body size and the
time taken. Query strings are never logged, because clients put secrets in
them; every request-derived value is escaped (control characters, quotes and
backslashes as ``\\xNN``/``\\uNNNN``) and cut to a bounded length.

Lines are written in batches, at most ``WRITE_EVERY_S`` after their requests were
answered, and when the server stops.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import re
import unicodedata
from time import time as wall_clock

from aiohttp import HttpVersion, web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse

from api.keys import REQUEST_ID
from api.metrics import KNOWN_METHODS
from imagesvc.logs import Line, write_lines

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
    return _without_query(request.raw_path)


def _without_query(raw_path: str) -> str:
    return printable(raw_path.partition("?")[0])


# A request's line is written at most this long after its answer, with the others of
# that time, in one write (docs/operations.md): building, formatting and writing a line
# per request cost more than a listing served from memory (docs/listing-profile.md,
# round 9). Sooner if this many lines wait.
WRITE_EVERY_S = 0.05
MAX_WAITING = 1000

# What a line is made of, taken from the request and its answer when it is answered:
# when, client address, method, path with query, HTTP version, status, body size,
# seconds taken, request id.
Entry = tuple[float, str | None, str, str, HttpVersion, int, int, float, str]


class SafeAccessLogger(AbstractAccessLogger):
    """aiohttp's access logger, replaced: no query strings, no raw request bytes."""

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        """Keep what the request's INFO line needs; :data:`WAITING` writes it shortly.

        aiohttp makes a logger per connection; the lines of every connection wait in
        the one process-wide :data:`WAITING`."""
        if self.logger.isEnabledFor(logging.INFO):
            entry = (
                wall_clock(),
                request.remote,
                request.method,
                request.raw_path,
                request.version,
                response.status,
                response.body_length,
                time,
                # The request id (api/request_ids.py) joins this line to the job and worker
                # lines; it is the caller's only if valid, so it needs no escaping.
                request.get(REQUEST_ID, "-"),
            )
            WAITING.add(self.logger, entry)


class WaitingLines:
    """Access lines kept until the next write: a timer's, after :data:`WRITE_EVERY_S`."""

    def __init__(self) -> None:
        self._entries: list[Entry] = []
        self._logger = logging.getLogger("aiohttp.access")
        self._timer_loop: asyncio.AbstractEventLoop | None = None

    def add(self, logger: logging.Logger, entry: Entry) -> None:
        self._entries.append(entry)
        self._logger = logger
        timer_loop = self._timer_loop
        # No timer since the last write, or one on a loop now closed (a test's). Not
        # get_running_loop() every time: it is a getpid() system call.
        if timer_loop is None or timer_loop.is_closed():
            self._timer_loop = loop = asyncio.get_running_loop()
            loop.call_later(WRITE_EVERY_S, self.write)
        elif len(self._entries) >= MAX_WAITING:
            self.write()

    def write(self) -> None:
        """Write every line waiting; also when the server stops, and at exit."""
        self._timer_loop = None
        entries, self._entries = self._entries, []
        write_lines(self._logger, logging.INFO, [_line(entry) for entry in entries])


def _line(entry: Entry) -> Line:
    created, remote, method, raw_path, version, status, body_length, took, request_id = entry
    if method not in KNOWN_METHODS:  # any other token the parser let through
        method = printable(method, 16)
    message = (
        f'{printable(remote or "-")} "{method} {_without_query(raw_path)} '
        f'HTTP/{version.major}.{version.minor}" '
        f"{status} {body_length} {took:.3f}s"
    )
    return created, message, {"request_id": request_id}


WAITING = WaitingLines()
atexit.register(WAITING.write)


async def write_access_lines(app: web.Application) -> None:
    """Write the lines still waiting: the application's cleanup, when it stops."""
    WAITING.write()
