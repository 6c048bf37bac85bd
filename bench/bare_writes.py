"""The baseline of the write bench: a bare aiohttp + asyncpg server doing the same inserts.

No authentication (the bearer token is looked up in a dict the bench hands over),
no validation models, no ORM, no quota, no idempotency key, no broker: one
transaction per request on a pool of asyncpg connections (the API's own pool,
``models.pool``: what pooling costs is not what the ratio compares), and the
JSON of the job.

- ``POST /v2/zone/{zone}/images`` ``{"instance": ...}``: the caller's instance
  (``SELECT``), then ``INSERT`` the pending image and ``INSERT`` its pending job.
- ``DELETE /v2/zone/{zone}/images/{id}``: ``UPDATE`` the caller's available image
  to ``deleting``, then ``INSERT`` its pending job.

It is what a write would cost if it did nothing but talk to PostgreSQL. Run:
``python -m bench.bare_writes --dsn postgresql://... --callers FILE --port N``
(``FILE``: a JSON object, bearer token to account id).
"""

from __future__ import annotations

import argparse
import json
import secrets
import string
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from models.pool import ConnectionPool

CONNECT_TIMEOUT_S = 5.0

POOL = web.AppKey("pool", ConnectionPool)
CALLERS = web.AppKey("callers", dict)

_ALPHABET = string.ascii_lowercase + string.digits

INSTANCE = """
SELECT instance_id, status, disk_size, os_family, platform, processor_type, default_user,
    recommended_type, host
FROM instances WHERE zone = $1 AND owner = $2 AND instance_id = $3
"""
NEW_IMAGE = """
INSERT INTO images (image_id, zone, owner, image_name, description, size, virtual_size,
    byte_size, disk_format, checksum, checksum_algorithm, processor_type, platform, os_family,
    visibility, provider, recommended_type, default_user, default_passwd, status,
    transition_status, source_instance_id, create_time, status_time)
VALUES ($1, $2, $3, $4, '', $5, 0, 0, '', '', '', $6, $7, $8, 'private', 'self', $9, $10, '',
    'pending', 'creating', $11, $12, $12)
"""
BEGIN_DELETE = """
UPDATE images SET transition_status = 'deleting'
WHERE image_id = $1 AND zone = $2 AND owner = $3 AND status = 'available'
    AND transition_status = ''
"""
NEW_JOB = """
INSERT INTO jobs (job_id, zone, owner, action, status, resource_ids, progress, phase, attempts,
    create_time, status_time, send_requested_at, worker, host)
VALUES ($1, $2, $3, $4, 'pending', $5, 0, '', 0, $6, $6, $6, '', $7)
"""


def _new_id(prefix: str) -> str:
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(8))


def _iso(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def _job_out(job: list[Any]) -> dict[str, Any]:
    job_id, zone, owner, action, resources, now = job[:6]
    return {
        "job_id": job_id,
        "action": action,
        "status": "pending",
        "progress": 0,
        "phase": "queued",
        "create_time": _iso(now),
        "begin_time": None,
        "finished_time": None,
        "status_time": _iso(now),
        "zone": zone,
        "resource_ids": json.loads(resources),
        "owner": owner,
        "error": None,
    }


def _owner(request: web.Request) -> str:
    token = request.headers.get("Authorization", "").partition(" ")[2]
    owner = request.app[CALLERS].get(token)
    if owner is None:
        raise web.HTTPUnauthorized()
    return str(owner)


async def capture(request: web.Request) -> web.Response:
    zone, owner = request.match_info["zone"], _owner(request)
    body = await request.json()
    now = datetime.now(UTC)
    image_id, job_id = _new_id("img-"), _new_id("j-")
    async with request.app[POOL].acquire() as connection, connection.transaction():
        row = await connection.fetchrow(INSTANCE, zone, owner, body["instance"])
        if row is None or row["status"] != "stopped":
            raise web.HTTPNotFound()
        size = max(1, -(-row["disk_size"] // 1024**3))
        await connection.execute(
            NEW_IMAGE,
            *(image_id, zone, owner, body.get("image_name", ""), size),
            *(row["processor_type"], row["platform"], row["os_family"]),
            *(row["recommended_type"], row["default_user"], row["instance_id"], now),
        )
        resources = json.dumps([image_id, row["instance_id"]])
        job = [job_id, zone, owner, "CaptureInstance", resources, now, row["host"]]
        await connection.execute(NEW_JOB, *job)
    return web.json_response({**_job_out(job), "image_id": image_id}, status=202)


async def delete(request: web.Request) -> web.Response:
    zone, owner = request.match_info["zone"], _owner(request)
    image_id = request.match_info["ids"]
    now = datetime.now(UTC)
    async with request.app[POOL].acquire() as connection, connection.transaction():
        moved = await connection.execute(BEGIN_DELETE, image_id, zone, owner)
        if moved != "UPDATE 1":
            raise web.HTTPConflict()
        resources = json.dumps([image_id])
        job = [_new_id("j-"), zone, owner, "DeleteImages", resources, now, ""]
        await connection.execute(NEW_JOB, *job)
    return web.json_response(_job_out(job), status=202)


def create_app(dsn: str, callers: dict[str, str]) -> web.Application:
    """The bare server; ``callers`` maps bearer tokens to account ids."""

    async def pool(app: web.Application) -> AsyncIterator[None]:
        # The API's pool (models/pool.py): asyncpg's own costs a proxy and a task per
        # checkout, a reset query per release unless told otherwise, and an idle timer;
        # the baseline pays for its statements, no more, and the same for its pool.
        app[POOL] = ConnectionPool(dsn, 16, connect_timeout=CONNECT_TIMEOUT_S)
        yield
        await app[POOL].close()

    app = web.Application()
    app[CALLERS] = callers
    app.cleanup_ctx.append(pool)
    app.router.add_post("/v2/zone/{zone}/images", capture)
    app.router.add_delete("/v2/zone/{zone}/images/{ids}", delete)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--callers", type=Path, required=True, help="JSON: token -> account")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    callers = json.loads(args.callers.read_text())
    web.run_app(create_app(args.dsn, callers), host="127.0.0.1", port=args.port, print=None)


if __name__ == "__main__":
    main()
