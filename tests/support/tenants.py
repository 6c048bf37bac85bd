"""A tenant: an account with a token, calling the in-process API the way its clients do."""

from __future__ import annotations

import secrets
from base64 import b64encode
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from models.accounts import create_account
from models.db import Database
from models.images import CaptureRequest, capture_instance
from models.instances import NewInstance, add_instance, instance_info
from models.quotas import Quota
from models.scoping import Caller
from models.states import InstanceStatus
from models.tables import Instance
from tests.support.contract import TERMINAL, Reply
from tests.support.waiting import wait_for_async
from workers.system_images import inspect_disk

UNLIMITED = Quota(images=10**6, gb=10**6)


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
        """The job once settled, with ``seen``: the statuses it was polled in, in order."""
        seen: list[str] = []

        async def fetch() -> Reply:
            reply = await self.call("GET", f"/job/{job_id}")
            assert reply.status == 200, reply
            if not seen or seen[-1] != reply.body["status"]:
                seen.append(reply.body["status"])
            return reply

        reply = await wait_for_async(
            fetch,
            lambda reply: reply.body["status"] in TERMINAL,
            f"job {job_id} settles",
            timeout=timeout,
        )
        return {**reply.body, "seen": seen}

    async def image(self, image_id: str) -> dict[str, Any]:
        reply = await self.call("GET", "/images", params={"images": image_id})
        assert reply.status == 200 and reply.body["total_count"] == 1, reply
        return dict(reply.body["images"][0])

    def add_instance(self, disk: Path, status: str = "stopped", **attrs: Any) -> str:
        return register_instance(self.database, self.account_id, disk, self.zone, status, **attrs)

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


@dataclass(frozen=True)
class Account:
    """An account's id and credentials, for clients that get their own tokens."""

    account_id: str
    api_key: str
    secret: str


def new_account(database: Database) -> Account:
    with database.transaction() as session:
        credentials = create_account(session, f"user-{secrets.token_hex(3)}")
    return Account(credentials.account_id, credentials.api_key, credentials.secret)


def register_instance(
    database: Database,
    owner: str,
    disk: Path,
    zone: str = "ac1",
    status: str = "stopped",
    **attrs: Any,
) -> str:
    """Register an instance of ``disk``, as ``imagesvc instance add`` does."""
    disk_format, disk_size = inspect_disk(disk)
    new = NewInstance(
        zone=zone,
        owner=owner,
        disk_path=str(disk),
        disk_format=disk_format.value,
        disk_size=disk_size,
        status=InstanceStatus(status),
        **attrs,
    )
    with database.transaction() as session:
        return add_instance(session, new).instance_id


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
