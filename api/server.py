"""Serving the app: aiohttp's server, answering even malformed HTTP in the contract's JSON.

aiohttp answers a request it cannot parse (a bad method, a header over the
limit, two Content-Lengths) from ``RequestHandler.handle_error``, outside the
app and its middlewares, as text/plain echoing the request. The handler here
answers ``{"ret_code", "message"}`` instead, with a fixed message; and every
response, the app's and these, gets the hardening headers here.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from http import HTTPStatus

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMethod, HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler

from api.access_log import SafeAccessLogger, logged_path, printable
from api.errors import error_response
from api.headers import harden_headers

log = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT_S = 30.0
# A burst of connections beyond the backlog is dropped and retried by clients a second
# later: room for a flood of hostile connections keeps honest ones from waiting behind it.
LISTEN_BACKLOG = 1024


class ContractRequestHandler(RequestHandler):
    """aiohttp's connection handler: errors outside the app answered as the contract says,
    and every answer hardened (api/headers.py)."""

    async def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        """Every response is finished here, the app's and aiohttp's own (a 417 for an
        unknown ``Expect``, a malformed request's): one place, rather than the app's
        ``on_response_prepare`` signal, which cost a coroutine more per request and
        missed aiohttp's answers (docs/listing-profile.md, round 9)."""
        harden_headers(resp)
        return await super().finish_response(request, resp, start_time)

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; cannot send an error")
        if status >= 500:
            self.log_exception("unhandled error on %s", logged_path(request), exc_info=exc)
            response = error_response(500, 5000, "internal error")
        else:
            peer = printable(request.remote or "-")
            log.info("refused a malformed request from %s: %s", peer, _describe(exc))
            response = error_response(status, 1100, _describe(exc))
        response.force_close()
        return response


def _describe(exc: BaseException | None) -> str:
    """A fixed message by kind: never the request's bytes, which the parser's messages echo."""
    if isinstance(exc, BadHttpMethod):
        return "malformed HTTP request: invalid method"
    if isinstance(exc, LineTooLong):
        return "malformed HTTP request: the request line or a header is too long"
    if (
        isinstance(exc, HttpProcessingError)
        and exc.code == HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE
    ):
        return "malformed HTTP request: too many headers"
    return "malformed HTTP request"


class ContractServer(web.Server):
    def __call__(self) -> RequestHandler:
        # Server keeps the handler's keyword arguments in _kwargs; its own __call__ does this.
        return ContractRequestHandler(self, loop=self._loop, **self._kwargs)


class ContractRunner(web.AppRunner):
    """An AppRunner whose connections are handled by :class:`ContractRequestHandler`."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        return ContractServer(
            server.request_handler,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            loop=asyncio.get_running_loop(),
            **server._kwargs,
        )


def serve(app: web.Application, host: str, port: int) -> None:
    """Run ``app`` on ``host:port`` until SIGINT or SIGTERM, then stop gracefully."""
    asyncio.run(_serve(app, host, port))


async def _serve(app: web.Application, host: str, port: int) -> None:
    runner = ContractRunner(
        app, access_log_class=SafeAccessLogger, shutdown_timeout=SHUTDOWN_TIMEOUT_S
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, backlog=LISTEN_BACKLOG).start()
        log.info("Running on http://%s:%d", host, port)  # one line, in the log's format
        await _until_signalled()
    finally:
        await runner.cleanup()


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
