"""The attacker of tests/test_abuse_load.py: 200 concurrent hostile requests, then exit.

Run as ``python -m tests.abuse_flood PORT TOKEN API_KEY``; prints ``attacking``
once every request is under way, and exits 0 when all have been answered,
cut or refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import os
import sys
from base64 import b64encode
from collections.abc import Callable

MiB = 1 << 20
IMAGES = "/v2/zone/ac1/images"
# The attack comes from an address of its own: failed logins throttle that address only.
ATTACKER = "127.0.5.1"


async def hostile(port: int, data: bytes, stall: bool = False) -> None:
    """Send ``data``; keep the connection open (a stall) or read whatever comes back."""
    with contextlib.suppress(OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(ATTACKER, 0))
        try:
            writer.write(data)
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            await asyncio.wait_for(reader.read(), 15 if stall else 10)
        finally:
            writer.close()


def abuse(port: int, token: str, api_key: str) -> list[asyncio.Task[None]]:
    bomb = gzip.compress(bytes(8 * MiB), compresslevel=9) * 128
    bomb_head = f"POST {IMAGES} HTTP/1.1\r\nHost: x\r\nContent-Encoding: gzip\r\n"
    bomb_head += f"Content-Length: {len(bomb)}\r\n\r\n"
    form = b"grant_type=client_credentials"
    kinds: list[Callable[[int], bytes]] = [
        lambda n: bomb_head.encode() + bomb,
        lambda n: (
            (
                f"POST /v2/oauth2/token HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                f"Authorization: {basic(api_key, f'guess-{n}')}\r\n"
                "Content-Type: application/x-www-form-urlencoded\r\n"
                f"Content-Length: {len(form)}\r\n\r\n"
            ).encode()
            + form
        ),
        lambda n: f"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Stall-{n}: ".encode(),
        lambda n: (
            f"POST {IMAGES} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
            'Content-Length: 1000\r\n\r\n{"instance": '
        ).encode(),
        lambda n: (
            f"GET {IMAGES}?images={'[' * 3000} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            f"Authorization: Bearer {token}\r\n\r\n"
        ).encode(),
        lambda n: (
            f"GET {IMAGES}?limit={'9' * 5000} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            f"Authorization: Bearer {token}\r\n\r\n"
        ).encode(),
        lambda n: b"G(T / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n",
        lambda n: b"GET /healthz HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    ]
    stalls = (2, 3)
    return [
        asyncio.ensure_future(hostile(port, kinds[n % len(kinds)](n), n % len(kinds) in stalls))
        for n in range(200)
    ]


def basic(api_key: str, secret: str) -> str:
    return "Basic " + b64encode(f"{api_key}:{secret}".encode()).decode()


async def main(port: int, token: str, api_key: str) -> None:
    tasks = abuse(port, token, api_key)
    print("attacking", flush=True)
    await asyncio.gather(*tasks)


if __name__ == "__main__":
    # A real attacker runs on a machine of its own; here it shares the API's CPUs, so it
    # takes what they leave rather than competing with the server it stands in front of.
    os.nice(19)
    asyncio.run(main(int(sys.argv[1]), sys.argv[2], sys.argv[3]))
