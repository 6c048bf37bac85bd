"""Under abuse the API keeps serving: 200 concurrent hostile requests, and honest ones answer.

While gzip bombs, wrong secrets, stalled headers and bodies, deep nesting,
huge numbers and malformed HTTP (``tests/abuse_flood.py``, run as a process
of its own, as an attacker would be) hit a running ``imagesvc api`` all at
once, ``GET /healthz`` and an authenticated ``GET /images`` each answer
within 1 s. That bound is the behaviour issue 10 asks for, so this test
asserts it.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator

import aiohttp
import pytest

from tests.hostile import Deployment, deployment

IMAGES = "/v2/zone/ac1/images"
BOUND_S = 1.0


@pytest.fixture
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with deployment(tmp_path_factory.mktemp("abuse")) as deployed:
        yield deployed


async def timed_get(session: aiohttp.ClientSession, url: str, token: str = "") -> float:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with session.get(url, headers=headers) as response:
        await response.read()
        assert response.status == 200, (url, response.status)
    return loop.time() - started


async def test_healthz_and_images_answer_within_a_second_under_abuse(api: Deployment) -> None:
    credentials, token = await api.tenant()
    victim = api.new_account()
    argv = [str(api.port), token, victim.api_key]
    attack = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.abuse_flood", *argv, stdout=asyncio.subprocess.PIPE
    )
    assert attack.stdout is not None
    assert await attack.stdout.readline() == b"attacking\n"
    base = f"http://127.0.0.1:{api.port}"
    took: list[float] = []
    # A fresh connection per probe, as a new client would open one.
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.sleep(0.2)  # let the attack reach the server first
        for _ in range(5):
            took.append(await timed_get(session, f"{base}/healthz"))
            took.append(await timed_get(session, f"{base}{IMAGES}", token))
            await asyncio.sleep(0.2)
    still_running = attack.returncode is None
    assert await attack.wait() == 0
    assert still_running, "the probes ran while the attack was in progress"
    assert max(took) < BOUND_S, f"slowest honest request took {max(took):.2f} s: {took}"
    right = await api.token(credentials)
    assert right, "the honest tenant can still log in"
