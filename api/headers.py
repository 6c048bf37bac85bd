"""Headers on every response: no version banner, nothing cached, no content sniffing.

Set as each response is finished, by the server's connection handler (api/server.py).
"""

from __future__ import annotations

from aiohttp import web

SERVER_NAME = "imagesvc"


def harden_headers(response: web.StreamResponse) -> None:
    # aiohttp only adds its "Python/x aiohttp/y" banner when no Server header is set.
    response.headers["Server"] = SERVER_NAME
    # Every answer is about one caller's resources, or a token: no cache may keep it.
    response.headers.setdefault("Cache-Control", "no-store")
    response.headers["X-Content-Type-Options"] = "nosniff"
