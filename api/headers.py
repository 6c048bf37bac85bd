"""Headers on every response: no version banner, nothing cached, no content sniffing."""

from __future__ import annotations

from aiohttp import web

SERVER_NAME = "imagesvc"


def harden_headers(response: web.StreamResponse) -> None:
    # aiohttp only adds its "Python/x aiohttp/y" banner when no Server header is set.
    response.headers["Server"] = SERVER_NAME
    # Every answer is about one caller's resources, or a token: no cache may keep it.
    response.headers.setdefault("Cache-Control", "no-store")
    response.headers["X-Content-Type-Options"] = "nosniff"


async def on_response_prepare(request: web.Request, response: web.StreamResponse) -> None:
    harden_headers(response)
