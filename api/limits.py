"""What a request may cost the server: body size, encodings, JSON shape, and time.

Every limit refuses with the contract's JSON before the expensive part: a
compressed body is inflated incrementally and only up to the body limit, a
JSON text is refused when it nests deeper than any parameter can, and a body
that stalls is cut after ``IMAGESVC_BODY_TIMEOUT`` seconds.
"""

from __future__ import annotations

import asyncio
import json
import math
import zlib
from typing import Any

from aiohttp import web

from api.keys import SETTINGS
from models.errors import InvalidParameter, ServiceError

MAX_BODY_BYTES = 64 * 1024
# A parameters object holding a list of strings is 3 deep; nothing needs more than 5.
MAX_JSON_DEPTH = 5
SUPPORTED_ENCODINGS = ("identity", "gzip", "x-gzip", "deflate")


class PayloadTooLarge(ServiceError):
    """The request body is larger than the service accepts."""

    http_status = 413
    ret_code = 1100
    # No keep-alive after it: the rest of the body is discarded only while the answer lingers.
    closes_connection = True


class UnsupportedEncoding(ServiceError):
    """The request body's Content-Encoding is not supported."""

    http_status = 415
    ret_code = 1100


class RequestTimeout(ServiceError):
    """The request body did not arrive in time."""

    http_status = 408
    ret_code = 1100
    closes_connection = True


class JsonRejected(ValueError):
    """A JSON text the service will not parse; the message says why."""


def refuse_from_headers(request: web.Request) -> None:
    """Refuse what is too big or undecodable from its headers alone, before anything
    else (api/middleware.py)."""
    length = request.content_length
    if length is not None and length > MAX_BODY_BYTES:
        raise PayloadTooLarge(_too_large())
    _content_coding(request)


async def read_body(request: web.Request) -> bytes:
    """The request body, decompressed, within the size and time limits."""
    try:
        if request.content.is_eof():  # all of it has arrived: no timer to arm
            raw = await request.read()
        else:
            raw = await _read_in_time(request)
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge(_too_large()) from None
    return _decoded(raw, _content_coding(request))


async def _read_in_time(request: web.Request) -> bytes:
    timeout = request.app[SETTINGS].body_timeout
    try:
        async with asyncio.timeout(timeout):
            return await request.read()
    except TimeoutError:
        raise RequestTimeout(f"request body not received within {timeout:g} seconds") from None


def decode_json(text: str) -> Any:
    """Parse ``text`` as JSON; JsonRejected if it is invalid, too deep or has huge numbers."""
    try:
        value = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise JsonRejected("it is nested too deeply") from None
    except JsonRejected:
        raise
    except json.JSONDecodeError as exc:
        raise JsonRejected(f"it is not valid JSON: {exc.msg}") from None
    except ValueError:  # an integer past Python's 4,300-digit conversion limit
        raise JsonRejected("it holds a number with too many digits") from None
    if _depth(value) > MAX_JSON_DEPTH:
        raise JsonRejected("it is nested too deeply")
    return value


def _content_coding(request: web.Request) -> str:
    codings = request.headers.getall("Content-Encoding", [])
    coding = ",".join(codings).strip().lower() or "identity"
    if coding not in SUPPORTED_ENCODINGS:
        raise UnsupportedEncoding(
            "unsupported Content-Encoding: send the body as identity, gzip or deflate"
        )
    return coding


def _decoded(raw: bytes, coding: str) -> bytes:
    if coding == "identity" or not raw:
        return raw
    if coding in ("gzip", "x-gzip"):
        return _inflate(raw, 16 + zlib.MAX_WBITS, coding)
    # HTTP's "deflate" is the zlib format, but some clients send raw deflate.
    zlib_wrapped = len(raw) >= 2 and raw[0] & 0x0F == 8 and (raw[0] << 8 | raw[1]) % 31 == 0
    return _inflate(raw, zlib.MAX_WBITS if zlib_wrapped else -zlib.MAX_WBITS, coding)


def _inflate(raw: bytes, wbits: int, coding: str) -> bytes:
    """Inflate at most one byte past the limit, so a bomb costs 64 KiB, not gigabytes."""
    inflater = zlib.decompressobj(wbits)
    try:
        body = inflater.decompress(raw, MAX_BODY_BYTES + 1)
    except zlib.error:
        raise InvalidParameter(f"request body is not valid {coding} data") from None
    if len(body) > MAX_BODY_BYTES or inflater.unconsumed_tail:
        raise PayloadTooLarge(_too_large())
    if not inflater.eof or inflater.unused_data:
        raise InvalidParameter(f"request body is not valid {coding} data")
    return body


def _too_large() -> str:
    return f"request body is larger than {MAX_BODY_BYTES} bytes"


def _refuse_constant(name: str) -> Any:
    raise JsonRejected(f"it holds {name}, which is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JsonRejected("it holds a number out of range")
    return value


def _depth(value: Any) -> int:
    """How deeply ``value`` nests (a scalar is 1), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth > MAX_JSON_DEPTH:
            break
        if isinstance(item, dict):
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
    return deepest
