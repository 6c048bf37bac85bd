"""Fixtures: one scratch database and one real worker process per test session.

Tests stay independent by acting as fresh accounts: every query is scoped
to its caller, so one test's images are invisible to another's.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import time
import urllib.request
from base64 import b64encode
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from api.app import create_app
from imagesvc.bootstrap import Services, services_for
from imagesvc.settings import Settings
from models.accounts import create_account
from models.db import Database
from models.images import CaptureRequest, capture_instance
from models.instances import NewInstance, add_instance, instance_info
from models.migrate import upgrade
from models.quotas import Quota
from models.scoping import Caller
from models.states import InstanceStatus, JobStatus
from models.tables import Instance
from tests.support import (
    TEST_REDIS_URL,
    ServiceProcess,
    check_redis,
    make_settings,
    scratch_database,
)
from workers.system_images import inspect_disk

MiB = 1 << 20
UNLIMITED = Quota(images=10**6, gb=10**6)
TERMINAL = {s.value for s in JobStatus if s.is_terminal}


@pytest.fixture(scope="session")
def service_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    check_redis()
    data_dir = tmp_path_factory.mktemp("imagesvc")
    with scratch_database(data_dir) as url:
        settings = make_settings(data_dir, url)
        settings.ensure_dirs()
        upgrade(url)
        yield settings
        if TEST_REDIS_URL:
            import redis

            client = redis.Redis.from_url(TEST_REDIS_URL)
            # The shared queue and every compute host's queue (<queue>.host.<name>).
            for key in client.scan_iter(f"{settings.queue}*"):
                client.delete(key)


@pytest.fixture(scope="session")
def services(service_settings: Settings) -> Iterator[Services]:
    """The parts the service's own entry points use, built by the one composition root."""
    with services_for(service_settings) as services:
        yield services


@pytest.fixture(scope="session")
def database(services: Services) -> Database:
    return services.database


@pytest.fixture(scope="session")
def worker(service_settings: Settings) -> Iterator[ServiceProcess]:
    process = ServiceProcess(service_settings, "worker", "--concurrency", "2")
    process.wait_for_output(" ready.")
    yield process
    process.stop()


@pytest.fixture
async def client(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    service_settings: Settings,
    worker: ServiceProcess,
) -> TestClient[Any, Any]:
    return await aiohttp_client(create_app(service_settings))


@dataclass
class Reply:
    status: int
    body: Any

    def __repr__(self) -> str:
        return f"Reply({self.status}, {self.body!r})"


@dataclass
class Tenant:
    """An account with a token, calling the API the way its clients do."""

    client: TestClient[Any, Any]
    database: Database
    account_id: str
    token: str
    zone: str = "ac1"
    disks: Path = field(default_factory=Path)

    @property
    def base(self) -> str:
        return f"/v2/zone/{self.zone}"

    async def call(self, method: str, path: str, **kwargs: Any) -> Reply:
        headers = {"Authorization": f"Bearer {self.token}", **kwargs.pop("headers", {})}
        url = path if path.startswith("/v2/oauth2") else self.base + path
        async with self.client.request(method, url, headers=headers, **kwargs) as response:
            body = await response.json(content_type=None)
            return Reply(response.status, body)

    async def curl(self, method: str, path: str, body: str) -> Reply:
        """As the API document's curl examples do: a JSON text sent as a form."""
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        return await self.call(method, path, data=body.encode(), headers=headers)

    async def wait_job(self, job_id: str, timeout: float = 60.0) -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + timeout
        seen: list[str] = []
        while True:
            reply = await self.call("GET", f"/job/{job_id}")
            assert reply.status == 200, reply
            if not seen or seen[-1] != reply.body["status"]:
                seen.append(reply.body["status"])
            if reply.body["status"] in TERMINAL:
                reply.body["seen"] = seen
                return dict(reply.body)
            assert asyncio.get_running_loop().time() < deadline, f"job stuck: {reply.body}"
            await asyncio.sleep(0.05)

    async def image(self, image_id: str) -> dict[str, Any]:
        reply = await self.call("GET", "/images", params={"images": image_id})
        assert reply.status == 200 and reply.body["total_count"] == 1, reply
        return dict(reply.body["images"][0])

    def add_instance(self, disk: Path, status: str = "stopped", **attrs: Any) -> str:
        disk_format, disk_size = inspect_disk(disk)
        new = NewInstance(
            zone=self.zone,
            owner=self.account_id,
            disk_path=str(disk),
            disk_format=disk_format.value,
            disk_size=disk_size,
            status=InstanceStatus(status),
            **attrs,
        )
        with self.database.transaction() as session:
            return add_instance(session, new).instance_id

    def record_capture(self, disk: Path) -> tuple[str, str]:
        """A capture recorded as the API records it, but never sent to a worker."""
        instance_id = self.add_instance(disk)
        with self.database.reading() as session:
            instance = instance_info(session.get_one(Instance, instance_id))
        caller = Caller(self.account_id, self.zone)
        with self.database.transaction() as session:
            wanted = CaptureRequest(instance.instance_id, instance, "recorded")
            capture = capture_instance(session, caller, wanted, UNLIMITED)
            return capture.job.job_id, capture.image.image_id

    async def capture(self, instance_id: str, name: str = "img") -> Reply:
        return await self.call(
            "POST", "/images", json={"instance": instance_id, "image_name": name}
        )

    async def captured_image(self, disk: Path, name: str = "img") -> str:
        """Capture a new instance of ``disk`` and wait until the image is available."""
        reply = await self.capture(self.add_instance(disk), name)
        assert reply.status == 202, reply
        job = await self.wait_job(reply.body["job_id"])
        assert job["status"] == "successful", job
        return str(reply.body["image_id"])


TenantFactory = Callable[[], Awaitable[Tenant]]


async def sign_up(client: TestClient[Any, Any], database: Database, disks: Path) -> Tenant:
    """A new account, with a token got the SDK's way (Basic credentials, client_credentials)."""
    with database.transaction() as session:
        credentials = create_account(session, f"tenant-{secrets.token_hex(3)}")
    basic = b64encode(f"{credentials.api_key}:{credentials.secret}".encode()).decode()
    response = await client.post(
        "/v2/oauth2/token",
        data={"grant_type": "client_credentials"},
        headers={"Authorization": f"Basic {basic}"},
    )
    assert response.status == 200, await response.text()
    token = (await response.json())["access_token"]
    return Tenant(client, database, credentials.account_id, token, disks=disks)


@pytest.fixture
def new_tenant(client: TestClient[Any, Any], database: Database, tmp_path: Path) -> TenantFactory:
    async def make() -> Tenant:
        return await sign_up(client, database, tmp_path)

    return make


@pytest.fixture
async def tenant(new_tenant: TenantFactory) -> Tenant:
    return await new_tenant()


def stored_files(image_dir: Path, image_id: str) -> list[Path]:
    """The files in the store that belong to an image (one run's copy, named by its attempt)."""
    return sorted(image_dir.glob(f"{image_id}.*"))


def stored_file(image_dir: Path, image_id: str) -> Path:
    files = stored_files(image_dir, image_id)
    assert len(files) == 1, f"{image_id} should have exactly one file, has {files}"
    return files[0]


def make_raw_disk(path: Path, size: int = 64 * MiB, regions: int = 3) -> Path:
    """A sparse raw disk with ``regions`` chunks of random data and holes between them."""
    with open(path, "wb") as disk:
        disk.truncate(size)
        step = size // max(regions, 1)
        for index in range(regions):
            disk.seek(index * step + 4096)
            disk.write(os.urandom(min(MiB, step - 4096)))
    return path


@pytest.fixture
def raw_disk(tmp_path: Path) -> Path:
    return make_raw_disk(tmp_path / f"disk-{secrets.token_hex(3)}.raw")


@pytest.fixture
def disk_factory(tmp_path: Path) -> Callable[..., Path]:
    def make(size: int = 64 * MiB, regions: int = 3) -> Path:
        return make_raw_disk(tmp_path / f"disk-{secrets.token_hex(3)}.raw", size, regions)

    return make


@pytest.fixture(scope="session")
def api_url(service_settings: Settings, worker: ServiceProcess) -> Iterator[str]:
    """``imagesvc api`` on a real port, for clients that are separate programs."""
    process, url = serve_api(service_settings)
    yield url
    process.stop()


def serve_api(settings: Settings) -> tuple[ServiceProcess, str]:
    """Start ``imagesvc api`` on a free loopback port; the process and its URL, once it answers."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = ServiceProcess(settings, "api", "--host", "127.0.0.1", "--port", str(port))
    url = f"http://127.0.0.1:{port}"
    _wait_until_listening(process, url)
    return process, url


def _wait_until_listening(process: ServiceProcess, url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.process.poll() is None, f"the API exited:\n{process.log()}"
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"the API never answered at {url}:\n{process.log()}")


@dataclass(frozen=True)
class Account:
    """An account's id and credentials, for clients that get their own tokens."""

    account_id: str
    api_key: str
    secret: str


@pytest.fixture
def account(database: Database) -> Account:
    with database.transaction() as session:
        credentials = create_account(session, f"user-{secrets.token_hex(3)}")
    return Account(credentials.account_id, credentials.api_key, credentials.secret)


def register_instance(database: Database, owner: str, disk: Path, zone: str = "ac1") -> str:
    """Register a stopped instance of ``disk``, as ``imagesvc instance add`` does."""
    disk_format, disk_size = inspect_disk(disk)
    new = NewInstance(
        zone=zone,
        owner=owner,
        disk_path=str(disk),
        disk_format=disk_format.value,
        disk_size=disk_size,
        status=InstanceStatus.STOPPED,
    )
    with database.transaction() as session:
        return add_instance(session, new).instance_id
