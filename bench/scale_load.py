"""Load for the scale benchmark: wrk when installed, else an asyncio client.

Both report requests per second and the p50 and p99 latency of one run of
``connections`` concurrent keep-alive connections hammering one URL.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import shutil
import statistics
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import aiohttp

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}
_PERCENTILE = re.compile(r"^\s*(50|99)%\s+([\d.]+)(us|ms|s)\s*$", re.MULTILINE)
_RATE = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
_ERRORS = re.compile(r"Non-2xx or 3xx responses: (\d+)")
_REQUESTS = re.compile(r"^\s*(\d+) requests in", re.MULTILINE)


@dataclass(frozen=True)
class Load:
    """One run's throughput (requests/s), latency percentiles (ms), requests served
    and the server process's CPU time per request (ms; 0 when not measured)."""

    rps: float
    p50: float
    p99: float
    requests: int = 0
    cpu_ms: float = 0.0


def run_load(
    url: str,
    token: str,
    connections: int,
    seconds: float,
    pid: int | None = None,
    cores: str | None = None,
) -> Load:
    """Hammer ``url`` for ``seconds``; refuses to report a run with failed requests.

    With ``pid``, also the CPU time that process spent per request: unlike
    requests per second, it hardly depends on what else the machine runs. With
    ``cores`` (``taskset``'s list), wrk runs on those CPUs only.
    """
    cpu_before = cpu_seconds(pid) if pid else 0.0
    if shutil.which("wrk"):
        load = _wrk(url, token, connections, seconds, cores)
    else:
        load = asyncio.run(_asyncio_load(url, token, connections, seconds))
    if not pid or not load.requests:
        return load
    cpu_ms = (cpu_seconds(pid) - cpu_before) * 1e3 / load.requests
    return dataclasses.replace(load, cpu_ms=cpu_ms)


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of process ``pid`` (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _answer(url: str, token: str) -> str:
    """What one more request to ``url`` gets now: wrk counts failures, it does not say
    what they were."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return f"one more request now gets {response.status}"
    except urllib.error.HTTPError as refused:
        return f"one more request now gets {refused.code}: {refused.read()[:300]!r}"
    except OSError as error:
        return f"one more request now fails: {error}"


def _wrk(url: str, token: str, connections: int, seconds: float, cores: str | None) -> Load:
    threads = min(2, connections)
    duration = f"-d{max(1, round(seconds))}s"  # wrk takes whole seconds
    pinned = ["taskset", "-c", cores] if cores else []
    command = [*pinned, "wrk", f"-t{threads}", f"-c{connections}", duration, "--latency"]
    command += ["-H", f"Authorization: Bearer {token}", url]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    if failed := _ERRORS.search(output):
        raise RuntimeError(f"{failed.group(1)} failed requests to {url}; {_answer(url, token)}")
    percentiles = {p: float(v) * _UNITS[unit] for p, v, unit in _PERCENTILE.findall(output)}
    rate, requests = _RATE.search(output), _REQUESTS.search(output)
    if rate is None or requests is None or len(percentiles) != 2:
        raise RuntimeError(f"cannot read wrk's output:\n{output}")
    return Load(float(rate.group(1)), percentiles["50"], percentiles["99"], int(requests.group(1)))


async def _asyncio_load(url: str, token: str, connections: int, seconds: float) -> Load:
    latencies: list[float] = []
    headers = {"Authorization": f"Bearer {token}"}
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def client() -> None:
            while (start := time.perf_counter()) < deadline:
                async with session.get(url) as response:
                    await response.read()
                    if response.status != 200:
                        raise RuntimeError(f"{url}: {response.status}")
                latencies.append((time.perf_counter() - start) * 1e3)

        began = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(connections)))
        elapsed = time.perf_counter() - began
    cuts = statistics.quantiles(latencies, n=100)
    return Load(len(latencies) / elapsed, cuts[49], cuts[98], len(latencies))
