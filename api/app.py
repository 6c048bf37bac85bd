"""The aiohttp application factory."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable

from aiohttp import web
from celery import Celery
from sqlalchemy import text

from api import auth, docs_routes, image_routes, job_routes
from api.access_log import write_access_lines
from api.job_sending import drain_sends
from api.keys import (
    CELERY,
    DATABASE,
    INVENTORY,
    JOB_QUEUE,
    LOGIN_GUARD,
    READS,
    SETTINGS,
    WRITES,
)
from api.limits import MAX_BODY_BYTES
from api.metrics import (
    METRICS_PATH,
    REQUEST_METRICS,
    RequestMetrics,
    flush_request_metrics,
    serve_metrics,
)
from api.middleware import service_middleware
from api.openapi import documented
from api.responses import json
from api.schemas import HealthOut
from api.throttle import FailureCounter, LoginGuard, MemoryFailureCounter, RedisFailureCounter
from imagesvc.bootstrap import bootstrap
from imagesvc.settings import Settings
from models.db import IDLE_PING_S, Database

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 8190
MAX_HEADERS = 64
# After answering a request whose body was not read (a 401, a 413, a 408), aiohttp reads and
# discards the rest for this long before closing, so the client can read its answer.
LINGER_S = 2.0


def create_app(settings: Settings) -> web.Application:
    """The API, with its database and broker opened on startup and closed on cleanup."""
    app = web.Application(
        middlewares=[service_middleware],
        client_max_size=MAX_BODY_BYTES,
        handler_args=_connection_limits(settings),
    )
    app[SETTINGS] = settings
    app[REQUEST_METRICS] = RequestMetrics.create()
    app.cleanup_ctx.append(_resources)
    app.cleanup_ctx.append(_login_guard)
    app.cleanup_ctx.append(drain_sends)
    app.cleanup_ctx.append(flush_request_metrics)
    app.on_cleanup.append(write_access_lines)  # after its last requests were answered
    app.router.add_post(auth.TOKEN_PATH, auth.create_token)
    app.router.add_post(auth.REVOKE_PATH, auth.revoke)
    app.router.add_get("/healthz", healthz)
    app.router.add_get(METRICS_PATH, serve_metrics)
    app.add_routes(by_path([*image_routes.routes, *job_routes.routes]))
    app.add_routes(docs_routes.routes)
    return app


def by_path(routes: Iterable[web.AbstractRouteDef]) -> list[web.AbstractRouteDef]:
    """``routes``, those of one path next to each other, in the order paths first appear.

    aiohttp makes one resource of consecutive routes with the same path, and tries
    resources in order: with the capture's route apart from the listing's, a
    ``GET /images`` tried three resources before its own. Paths stay in the order
    they were defined, so what matches what is unchanged."""
    grouped: dict[str, list[web.AbstractRouteDef]] = {}
    for route in routes:
        path = route.path if isinstance(route, web.RouteDef) else repr(route)
        grouped.setdefault(path, []).append(route)
    return [route for same_path in grouped.values() for route in same_path]


async def _resources(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    settings.ensure_dirs()
    services = bootstrap(settings, ping_idle_after=IDLE_PING_S)
    app[DATABASE] = services.database
    await services.reads.open()
    app[READS] = services.reads
    await services.writes.open()
    app[WRITES] = services.writes
    app[INVENTORY] = services.inventory
    app[CELERY] = services.celery
    app[JOB_QUEUE] = services.job_queue
    yield
    await services.reads.close()
    await services.writes.close()
    await asyncio.to_thread(services.close)


def _connection_limits(settings: Settings) -> dict[str, object]:
    """What one connection may hold: header sizes, and how long it may stall.

    aiohttp closes a connection whose request has not fully arrived when its
    keep-alive timer fires, and that timer starts when the connection opens:
    so ``keepalive_timeout`` bounds both slow headers and idle keep-alive. A
    stalled body is cut by :mod:`api.limits` after ``body_timeout``, plus
    ``LINGER_S`` of lingering: at most 30 s. Bodies are inflated by
    :mod:`api.limits`, never by the parser.
    """
    return {
        "keepalive_timeout": settings.header_timeout,
        "lingering_time": LINGER_S,
        "max_line_size": MAX_HEADER_BYTES,
        "max_field_size": MAX_HEADER_BYTES,
        "max_headers": MAX_HEADERS,
        "auto_decompress": False,
    }


async def _login_guard(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    counter: FailureCounter
    if settings.broker_url.startswith(("redis://", "rediss://")):
        counter = RedisFailureCounter(
            settings.broker_url, settings.throttle_failures, settings.throttle_window
        )
    else:
        counter = MemoryFailureCounter(settings.throttle_failures, settings.throttle_window)
    app[LOGIN_GUARD] = LoginGuard(
        counter,
        settings.queue,
        settings.hash_workers,
        settings.hash_queue,
        settings.hash_per_address,
    )
    yield
    await app[LOGIN_GUARD].close()


@documented(response=HealthOut)
async def healthz(request: web.Request) -> web.Response:
    """Which dependency is down, if any: 200 when all are up, else 503."""
    checks = HealthOut(
        database=await asyncio.to_thread(_database_ok, request.app[DATABASE]),
        broker=await asyncio.to_thread(_broker_ok, request.app[CELERY]),
    )
    healthy = checks.database == checks.broker == "ok"
    return json(checks, status=200 if healthy else 503)


def _database_ok(database: Database) -> str:
    try:
        with database.reading() as session:
            session.execute(text("SELECT 1"))
    except Exception as exc:
        log.warning("health check: database down: %s", exc)
        return "down"
    return "ok"


def _broker_ok(celery: Celery) -> str:
    try:
        with celery.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=1)
    except Exception as exc:
        log.warning("health check: broker down: %s", exc)
        return "down"
    return "ok"
