"""A plain HTTP client for an API in another process, as a user's curl or SDK would call it."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from base64 import b64encode
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

from api.server import ContractRunner
from tests.support.contract import TERMINAL, Reply
from tests.support.processes import ServiceProcess
from tests.support.waiting import wait_for


class Client:
    """Calls ``http://127.0.0.1:port``; a dropped connection or a timeout is status 0."""

    def __init__(self, port: int, token: str = "", zone: str = "ac1") -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.token = token
        self.zone = zone

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 30,
    ) -> Reply:
        """``body`` goes as JSON; ``data`` as it is. The bearer token unless headers say else."""
        sent = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        sent.update(headers or {})
        if body is not None:
            data = json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data, sent, method=method)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return Reply(response.status, json.loads(response.read()))
        except urllib.error.HTTPError as error:
            return Reply(error.code, json.loads(error.read() or b"null"))
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return Reply(0, None)

    def curl(self, method: str, path: str, text: str) -> Reply:
        """As the API document's curl examples do: a JSON text sent as a form."""
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        return self.call(method, path, data=text.encode(), headers=form)

    def sign_in(self, api_key: str, secret: str) -> None:
        """Get a token the SDK's way (Basic credentials, client_credentials) and keep it."""
        basic = b64encode(f"{api_key}:{secret}".encode()).decode()
        reply = self.call(
            "POST",
            "/v2/oauth2/token",
            data=b"grant_type=client_credentials",
            headers={
                "Authorization": f"Basic {basic}",
                "Content-Type": "application/x-www-form-urlencoded",
            },
        )
        assert reply.status == 200, reply
        self.token = reply.body["access_token"]

    def wait_job(self, job_id: str, timeout: float = 60.0) -> dict[str, Any]:
        """The job once it has settled (successful, failed or done with failure)."""
        reply = wait_for(
            lambda: self.call("GET", f"/v2/zone/{self.zone}/job/{job_id}"),
            lambda reply: reply.status != 200 or reply.body["status"] in TERMINAL,
            f"job {job_id} settles",
            timeout,
        )
        assert reply.status == 200, reply
        return dict(reply.body)

    def wait_until_up(self, service: ServiceProcess, timeout: float = 60) -> None:
        """Until ``/healthz`` answers 200 (fails with the service's log)."""
        reply = wait_for(
            lambda: self.call("GET", "/healthz", timeout=2),
            lambda reply: reply.status == 200 or service.process.poll() is not None,
            "the API comes up",
            timeout,
            interval=0.2,
        )
        assert reply.status == 200, f"the API never came up:\n{service.log()}"


class ContractTestServer(TestServer):
    """aiohttp's test server, serving with the API's own connection handler, as
    ``imagesvc api`` does (api/server.py: contract errors, hardened headers)."""

    async def _make_runner(self, **kwargs: Any) -> web.BaseRunner:
        return ContractRunner(self.app, **kwargs)
