"""SIGTERM to a worker finishes its running job (Celery's warm shutdown), then exits 0.

The test has its own database, store, queue and worker, so stopping the worker does not
disturb the session's.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from api.app import create_app
from imagesvc.bootstrap import services_for
from imagesvc.settings import Settings
from models.db import Database
from tests.support.contract import parse_time
from tests.support.deployment import deployment_settings, running_worker
from tests.support.disks import GiB, MiB, make_raw_disk, stored_file
from tests.support.processes import ServiceProcess
from tests.support.tenants import Tenant, sign_up
from tests.support.waiting import wait_for_async


@pytest.fixture
def scratch_settings(tmp_path: Path) -> Iterator[Settings]:
    """A service of its own: data dir, database and (with Redis) queue."""
    with deployment_settings(tmp_path / "service") as settings:
        yield settings


@pytest.fixture
def scratch_db(scratch_settings: Settings) -> Iterator[Database]:
    with services_for(scratch_settings) as services:
        yield services.database


@pytest.fixture
def lone_worker(scratch_settings: Settings) -> Iterator[ServiceProcess]:
    with running_worker(scratch_settings, concurrency=1) as worker:
        yield worker


async def wait_until_working(tenant: Tenant, job_id: str, timeout: float = 30.0) -> None:
    reply = await wait_for_async(
        lambda: tenant.call("GET", f"/job/{job_id}"),
        lambda reply: reply.status != 200 or reply.body["status"] != "pending",
        f"job {job_id} starts",
        timeout=timeout,
        interval=0.02,
    )
    assert reply.status == 200, reply
    assert reply.body["status"] == "working", f"the job should still be running: {reply.body}"


async def test_sigterm_lets_the_running_capture_finish_and_the_worker_exit_cleanly(
    scratch_settings: Settings,
    scratch_db: Database,
    lone_worker: ServiceProcess,
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    tmp_path: Path,
) -> None:
    client = await aiohttp_client(create_app(scratch_settings))
    tenant = await sign_up(client, scratch_db, tmp_path)
    disk = make_raw_disk(tmp_path / "large.raw", size=3 * GiB // 2, regions=4, data=600 * MiB)
    reply = await tenant.capture(tenant.add_instance(disk), "big")
    assert reply.status == 202, reply
    job_id, image_id = reply.body["job_id"], reply.body["image_id"]
    await wait_until_working(tenant, job_id)

    signalled = datetime.now(UTC).replace(microsecond=0)
    code = await asyncio.to_thread(lone_worker.stop, signal.SIGTERM, 60.0)
    assert code == 0, f"the worker exited {code}:\n{lone_worker.log()}"

    # The worker is gone: whatever the job is now, no worker will change it.
    job = (await tenant.call("GET", f"/job/{job_id}")).body
    assert job["status"] == "successful", f"{job}\n{lone_worker.log()}"
    assert job["error"] is None and job["progress"] == 100
    assert parse_time(job["begin_time"]) <= signalled <= parse_time(job["finished_time"]), job
    image = await tenant.image(image_id)
    assert (image["status"], image["transition_status"]) == ("available", ""), image
    assert image["size"] == 2
    stored = stored_file(scratch_settings.image_dir, image_id)
    assert stored.stat().st_size == disk.stat().st_size
    partials = scratch_settings.image_dir / ".partial"
    assert not [p for p in partials.rglob("*") if p.is_file()], "the copy left a partial file"
    assert not any(p.is_file() for p in scratch_settings.image_dir.iterdir() if p != stored)
