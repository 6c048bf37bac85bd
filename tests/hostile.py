"""Harness for the hostile-input tests: a real ``imagesvc api`` process on a port of its own.

Requests are sent as bytes on a socket (``asyncio.open_connection``) when
they must be malformed, stalled or exact, and with aiohttp's client
otherwise. Each deployment has its own database, data dir and queue, so that
its throttling counters and rows are its own.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
from base64 import b64encode
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from imagesvc.bootstrap import Services, bootstrap
from imagesvc.settings import Settings
from models.accounts import Credentials, create_account
from models.instances import NewInstance, add_instance
from models.migrate import upgrade
from models.states import InstanceStatus
from tests.support.databases import scratch_database
from tests.support.deployment import make_settings
from tests.support.processes import ServiceProcess
from workers.system_images import inspect_disk

# Small, so that the stall tests take seconds; production defaults are 15 s.
HOSTILE_SETTINGS: dict[str, Any] = {"header_timeout": 2.0, "body_timeout": 2.0}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Answer:
    """One HTTP response, as bytes on the wire said it."""

    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def __repr__(self) -> str:
        return f"Answer({self.status}, {self.body[:300]!r})"


def assert_contract_error(answer: Answer, status: int, ret_code: int) -> dict[str, Any]:
    """A ``{ret_code, message}`` JSON error with the contract's status, and no trace."""
    assert answer.status == status, answer
    assert (answer.header("content-type") or "").startswith("application/json"), answer.headers
    body = answer.json
    assert set(body) == {"ret_code", "message"} and body["ret_code"] == ret_code, body
    assert body["message"] and "Traceback" not in body["message"], body
    return dict(body)


def basic(api_key: str, secret: str) -> str:
    return "Basic " + b64encode(f"{api_key}:{secret}".encode()).decode()


@dataclass
class Deployment:
    """An API process and the parts to look at what it stored."""

    settings: Settings
    services: Services
    port: int
    tmp: Path
    api: ServiceProcess | None = None
    clients: list[Credentials] = field(default_factory=list)

    def start_api(self) -> ServiceProcess:
        self.api = ServiceProcess(self.settings, "api", "--port", str(self.port))
        self.api.wait_for_output("Running on", timeout=60)
        return self.api

    @property
    def output(self) -> str:
        assert self.api is not None
        return "".join(self.api.output)

    # accounts ----------------------------------------------------------------

    def new_account(self) -> Credentials:
        with self.services.database.transaction() as session:
            credentials = create_account(session, f"hostile-{secrets.token_hex(3)}")
        self.clients.append(credentials)
        return credentials

    async def token(self, credentials: Credentials) -> str:
        answer = await self.request(
            "POST",
            "/v2/oauth2/token",
            headers={
                "Authorization": basic(credentials.api_key, credentials.secret),
                "Content-Type": "application/x-www-form-urlencoded",
            },
            body=b"grant_type=client_credentials",
        )
        assert answer.status == 200, answer
        return str(answer.json["access_token"])

    async def tenant(self) -> tuple[Credentials, str]:
        credentials = self.new_account()
        return credentials, await self.token(credentials)

    def add_instance(self, owner: str, disk: Path) -> str:
        disk_format, disk_size = inspect_disk(disk)
        new = NewInstance(
            zone="ac1",
            owner=owner,
            disk_path=str(disk),
            disk_format=disk_format.value,
            disk_size=disk_size,
            status=InstanceStatus.STOPPED,
        )
        with self.services.database.transaction() as session:
            return add_instance(session, new).instance_id

    # requests ----------------------------------------------------------------

    async def request(
        self,
        method: str,
        path: str,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
        local_addr: str | None = None,
        timeout: float = 30.0,
    ) -> Answer:
        """One request, sent as exact bytes: the head as given, plus Host and Content-Length."""
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        for name, value in (headers or {}).items():
            head += f"{name}: {value}\r\n"
        if body or method in ("POST", "PUT"):
            head += f"Content-Length: {len(body)}\r\n"
        raw = head.encode("utf-8", "surrogateescape") + b"\r\n" + body
        return await self.raw(raw, local_addr=local_addr, timeout=timeout)

    async def raw(
        self, data: bytes, local_addr: str | None = None, timeout: float = 30.0
    ) -> Answer:
        """Send ``data`` as is and read the one response (the server closes after it)."""
        reader, writer = await self.connect(local_addr)
        try:
            writer.write(data)
            await writer.drain()
            return await asyncio.wait_for(read_answer(reader), timeout)
        finally:
            writer.close()

    async def connect(
        self, local_addr: str | None = None
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        local = (local_addr, 0) if local_addr else None
        return await asyncio.open_connection("127.0.0.1", self.port, local_addr=local)

    async def session_get(self, path: str, token: str = "") -> tuple[int, Any]:
        """A well-behaved client's GET, through aiohttp's client."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{self.port}{path}", headers=headers) as response,
        ):
            return response.status, await response.json(content_type=None)


async def read_answer(reader: asyncio.StreamReader) -> Answer:
    """Parse one HTTP/1.1 response with a Content-Length (every response of this service)."""
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionResetError("the server closed the connection without answering")
    status = int(status_line.split()[1])
    headers: dict[str, str] = {}
    while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    body = await reader.readexactly(length) if length else b""
    return Answer(status, headers, body)


@contextmanager
def deployment(tmp_path: Path, **overrides: Any) -> Iterator[Deployment]:
    """A deployment of its own (database, data dir, queue) and a running API process."""
    with scratch_database(tmp_path) as url:
        settings = make_settings(tmp_path / "var", url, **{**HOSTILE_SETTINGS, **overrides})
        settings.ensure_dirs()
        upgrade(url)
        services = bootstrap(settings)
        deployed = Deployment(settings, services, free_port(), tmp_path)
        try:
            deployed.start_api()
            yield deployed
        finally:
            if deployed.api is not None:
                deployed.api.stop()
            services.close()
            _forget_queue(settings)


def _forget_queue(settings: Settings) -> None:
    if settings.broker_url.startswith("redis"):
        import redis

        client = redis.Redis.from_url(settings.broker_url)
        client.delete(settings.queue)
        for key in client.scan_iter(f"{settings.queue}:*"):
            client.delete(key)
        client.close()
