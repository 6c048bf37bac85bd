"""POST /images and DELETE /images/{id} accepted per second, against a bare baseline.

Run ``python -m bench writes`` with PostgreSQL and Redis at hand. It creates a
scratch database, starts ``imagesvc api`` as an operator runs it (PostgreSQL +
Redis, its own queue, no worker: the bench measures what the API accepts) and
the bare aiohttp + asyncpg server ``bench.bare_writes``, and loads each in turn
from a client process of its own: every concurrent client is one account with
its own token, capturing distinct stopped instances (``POST /images``) or
deleting distinct available images (``DELETE /images/{id}``) that the bench
writes straight into the tables before each run (and empties after it). Both
sides alternate run by run, so that each meets the same noise from the rest of
the (shared) machine. It prints the accepted requests per second of both, and
their ratio against issue 9's target; unless ``--quick``, it also measures
throughput against concurrency and writes its section of ``docs/benchmarks.md``
and the plot ``docs/img/writes-throughput.png``.

``--quick`` runs 16 clients for one second per side, once: it keeps the bench working.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import redis
from sqlalchemy import text
from sqlalchemy.engine import make_url

from bench.scale import (
    _api_server,
    _free_port,
    _process,
    add_server_options,
    scratch_deployment,
)
from bench.scale_load import cpu_seconds
from bench.scale_report import machine, write_section
from models.accounts import client_record, create_account, issue_token
from models.db import Database
from models.quotas import set_quota

ZONE = "ac1"
CLIENTS = 16
SWEEP = (1, 4, 16, 32)
TARGET = 0.5
OPERATIONS = ("capture", "delete")
# Targets written per run: enough for this many requests per second, whatever the side.
CEILING_PER_SECOND = 2500
START, END = "<!-- bench:writes:start -->", "<!-- bench:writes:end -->"

_INSTANCES = """
INSERT INTO instances (instance_id, zone, owner, instance_name, status, disk_path, disk_format,
    disk_size, os_family, platform, processor_type, default_user, recommended_type,
    create_time, host)
SELECT :prefix || lpad(i::text, 7, '0'), :zone, :owner, 'vm', 'stopped', '/nonexistent', 'raw',
    21474836480, 'ubuntu', 'linux', '64bit', 'root', 'c1m2', now(), 'local'
FROM generate_series(1, :count) AS i
"""
_IMAGES = """
INSERT INTO images (image_id, zone, owner, image_name, description, size, virtual_size,
    byte_size, disk_format, checksum, checksum_algorithm, processor_type, platform, os_family,
    visibility, provider, recommended_type, default_user, default_passwd, status,
    transition_status, create_time, status_time)
SELECT :prefix || lpad(i::text, 7, '0'), :zone, :owner, 'img', '', 20, 21474836480, 1073741824,
    'raw', md5(i::text), 'sha256-chunks-4MiB', '64bit', 'linux', 'ubuntu', 'private', 'self',
    'c1m2', 'root', '', 'available', '', now(), now()
FROM generate_series(1, :count) AS i
"""


@dataclass(frozen=True)
class Client:
    """One concurrent client: an account and its bearer token."""

    account_id: str
    token: str


@dataclass(frozen=True)
class Run:
    """One load run: requests accepted (202) per second, latency percentiles (ms), and the
    server process's CPU time (user + system) per accepted request (ms)."""

    rps: float
    p50: float
    p99: float
    cpu_ms: float


@dataclass
class Results:
    started: str
    seconds: float
    rounds: int
    load_average: float
    # operation -> concurrency -> side ("api" / "bare") -> median run
    runs: dict[str, dict[int, dict[str, Run]]] = field(default_factory=dict)


@dataclass(frozen=True)
class Bench:
    """The scratch deployment: its database, its clients, and both servers."""

    database: Database
    clients: list[Client]
    servers: dict[str, str]
    pids: dict[str, int]
    redis_url: str
    queue: str


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--load"]:
        return _load_main(Path(argv[1]))
    args = _parse(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    concurrencies = (CLIENTS,) if args.quick else tuple(sorted({*SWEEP, CLIENTS}))
    seconds, rounds = (1.0, 1) if args.quick else (args.seconds, args.rounds)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    results = Results(started, seconds, rounds, _load_average())
    with ExitStack() as stack:
        bench = _deploy(stack, args, max(concurrencies))
        for operation in OPERATIONS:  # warm both servers' pools, unmeasured
            for side in bench.servers:
                _measure(bench, operation, CLIENTS, min(seconds, 1.0), side=side)
        for clients in (CLIENTS, *(c for c in concurrencies if c != CLIENTS)):
            for operation in OPERATIONS:
                runs = _alternated(bench, operation, clients, seconds, rounds)
                results.runs.setdefault(operation, {})[clients] = runs
                _print_runs(operation, clients, runs)
    met = _print_ratios(results)
    if not args.quick:
        _write(results, Path(args.docs))
    return 0 if met or args.quick else 1


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench writes",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="16 clients, one second per side")
    add_server_options(parser)
    parser.add_argument("--seconds", type=float, default=5.0, help="length of one run")
    parser.add_argument("--rounds", type=int, default=3, help="alternations bare/API per case")
    parser.add_argument("--docs", default="docs", help="where benchmarks.md and img/ live")
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    return parser.parse_args(argv)


def _deploy(stack: ExitStack, args: argparse.Namespace, clients: int) -> Bench:
    settings, database = scratch_deployment(stack, args)
    url = settings.database_url
    accounts, callers = new_clients(stack, database, clients)
    stack.callback(_drop_queues, args.redis_url, settings.queue)
    started = {
        "bare": stack.enter_context(_bare_server(url, callers)),
        "api": stack.enter_context(_api_server(settings)),
    }
    servers = {side: base for side, (base, _pid) in started.items()}
    pids = {side: pid for side, (_base, pid) in started.items()}
    return Bench(database, accounts, servers, pids, args.redis_url, settings.queue)


def new_clients(stack: ExitStack, database: Database, count: int) -> tuple[list[Client], Path]:
    """``count`` clients, and the file that tells the bare server their tokens' accounts
    (removed with ``stack``)."""
    clients = [_new_client(database, n) for n in range(count)]
    callers = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "callers.json"
    callers.write_text(json.dumps({c.token: c.account_id for c in clients}))
    return clients, callers


def _new_client(database: Database, n: int) -> Client:
    with database.transaction() as session:
        credentials = create_account(session, f"bench writer {n}")
    with database.transaction() as session:
        set_quota(session, credentials.account_id, 2**31 - 1, 2**31 - 1)
        # The bench made this account just now: its secret needs no check.
        client = client_record(session, credentials.api_key)
        token = issue_token(session, client, 24 * 3600)
    return Client(credentials.account_id, token.access_token)


@contextmanager
def _bare_server(url: str, callers: Path) -> Iterator[tuple[str, int]]:
    port = _free_port()
    command = [*bare_writes_command(url, callers), "--port", str(port)]
    with _process(command, dict(os.environ), port) as server:
        yield server


def bare_writes_command(url: str, callers: Path) -> list[str]:
    """The bare server's command line, but its ``--port``, on the database at ``url``."""
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    return [sys.executable, "-m", "bench.bare_writes", "--dsn", dsn, "--callers", str(callers)]


def _alternated(
    bench: Bench, operation: str, clients: int, seconds: float, rounds: int
) -> dict[str, Run]:
    """Bare and API in turn, ``rounds`` times; the median of each side."""
    runs: dict[str, list[Run]] = {side: [] for side in bench.servers}
    for _ in range(rounds):
        for side in bench.servers:
            runs[side].append(_measure(bench, operation, clients, seconds, side=side))
    return {side: _median(side_runs) for side, side_runs in runs.items()}


def _measure(bench: Bench, operation: str, clients: int, seconds: float, *, side: str) -> Run:
    """One run against ``side``, on targets written for it alone; refuses a run with errors."""
    per_client = max(50, math.ceil(seconds * CEILING_PER_SECOND / clients))
    targets = _seed(bench, operation, clients, per_client)
    plan = {
        "method": "POST" if operation == "capture" else "DELETE",
        "base": f"{bench.servers[side]}/v2/zone/{ZONE}/images",
        "seconds": seconds,
        "clients": [
            {"token": client.token, "targets": targets[n]}
            for n, client in enumerate(bench.clients[:clients])
        ],
    }
    with tempfile.NamedTemporaryFile("w", suffix=".json") as file:
        json.dump(plan, file)
        file.flush()
        command = [sys.executable, "-m", "bench.writes", "--load", file.name]
        cpu_before = cpu_seconds(bench.pids[side])
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(done.stderr[-2000:])
        output = done.stdout
        cpu = cpu_seconds(bench.pids[side]) - cpu_before
    outcome = json.loads(output)
    accepted = outcome["accepted"]
    _require_recorded(bench, accepted, f"{operation} on {side}")
    cpu_ms = cpu * 1e3 / max(accepted, 1)
    return Run(accepted / outcome["seconds"], outcome["p50"], outcome["p99"], cpu_ms)


def _seed(bench: Bench, operation: str, clients: int, per_client: int) -> list[list[str]]:
    """Empty the tables of the last run; write each client's instances or images."""
    statement, prefix = (_INSTANCES, "i-") if operation == "capture" else (_IMAGES, "img-")
    with bench.database.engine.begin() as connection:
        connection.execute(text("TRUNCATE images, jobs, instances, client_requests"))
        for n, client in enumerate(bench.clients[:clients]):
            values = {"prefix": f"{prefix}w{n:02d}", "zone": ZONE, "owner": client.account_id}
            connection.execute(text(statement), {**values, "count": per_client})
    with bench.database.engine.connect() as connection:
        connection.execution_options(isolation_level="AUTOCOMMIT").execute(
            text("ANALYZE images, jobs, instances")
        )
    _drop_queues(bench.redis_url, bench.queue)
    return [[f"{prefix}w{n:02d}{i:07d}" for i in range(1, per_client + 1)] for n in range(clients)]


def _require_recorded(bench: Bench, accepted: int, what: str) -> None:
    """Every accepted request left its job row: the two sides did the same work."""
    with bench.database.reading() as session:
        jobs = int(session.scalar(text("SELECT count(*) FROM jobs")) or 0)
    if jobs != accepted:
        raise RuntimeError(f"{what}: {accepted} requests accepted but {jobs} jobs recorded")


def _drop_queues(redis_url: str, queue: str) -> None:
    """The messages the API sent to the bench's queues (no worker consumes them)."""
    client = redis.Redis.from_url(redis_url)
    try:
        names = list(client.scan_iter(match=f"{queue}*"))
        if names:
            client.delete(*names)
    finally:
        client.close()


def _median(runs: list[Run]) -> Run:
    return Run(
        statistics.median(run.rps for run in runs),
        statistics.median(run.p50 for run in runs),
        statistics.median(run.p99 for run in runs),
        statistics.median(run.cpu_ms for run in runs),
    )


def _load_average() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def _print_runs(operation: str, clients: int, runs: dict[str, Run]) -> None:
    api, bare = runs["api"], runs["bare"]
    print(
        f"{operation:>8} c={clients:<3}: api {api.rps:7.1f}/s p50 {api.p50:6.2f} ms "
        f"p99 {api.p99:7.2f} ms cpu {api.cpu_ms:5.2f} ms/req | bare {bare.rps:7.1f}/s "
        f"p50 {bare.p50:6.2f} ms cpu {bare.cpu_ms:5.2f} ms/req | ratio {api.rps / bare.rps:.2f}",
        flush=True,
    )


def _print_ratios(results: Results) -> bool:
    """Issue 9's write ratio at 16 clients, per operation; True if both are met."""
    print(f"\nwrites: API / bare aiohttp+asyncpg accepted/s at c={CLIENTS} (target >= {TARGET})")
    met = True
    for operation, by_clients in results.runs.items():
        runs = by_clients[CLIENTS]
        ratio = runs["api"].rps / runs["bare"].rps
        met &= ratio >= TARGET
        print(f"  {operation:>8}: {ratio:5.2f}  {'ok' if ratio >= TARGET else 'MISSED'}")
    return met


def _write(results: Results, docs: Path) -> None:
    """The plot and this bench's section of docs/benchmarks.md."""
    (docs / "img").mkdir(parents=True, exist_ok=True)
    _plot(results, docs / "img" / "writes-throughput.png")
    write_section(docs / "benchmarks.md", START, END, _section(results))


def _section(results: Results) -> str:
    lines = [
        "## Writes (issue 9)",
        "",
        f"Measured {results.started} on {machine()}, by `python -m bench writes`; load average "
        f"at the start {results.load_average:.2f}. `imagesvc api` on PostgreSQL + Redis (no "
        "worker: what is measured is what the API accepts, jobs committed and sent) against a "
        "bare aiohttp + asyncpg server doing the same statements in one transaction "
        "(`bench/bare_writes.py`: instance lookup, image and job inserts for a capture; image "
        "update and job insert for a delete; its pool is the API's own, `models/pool.py`, so "
        "pooling costs both sides the same). Each client is an account of its own with its "
        "own token, capturing distinct stopped instances or deleting distinct images, written "
        f"into the tables before each run. Both sides alternate, {results.rounds} round(s) of "
        f"{results.seconds:g} s, medians. The profile, the round trips and what changed: "
        "[writes-profile.md](writes-profile.md).",
        "",
        f"| operation | API accepted/s at c={CLIENTS} | p50 | bare accepted/s | p50 | "
        "ratio (target ≥ 0.5) |",
        "|---|---|---|---|---|---|",
    ]
    for operation, by_clients in results.runs.items():
        api, bare = by_clients[CLIENTS]["api"], by_clients[CLIENTS]["bare"]
        lines.append(
            f"| {operation} | {api.rps:.0f} | {api.p50:.1f} ms | {bare.rps:.0f} | "
            f"{bare.p50:.1f} ms | {api.rps / bare.rps:.2f} |"
        )
    lines += ["", "![accepted writes against concurrency](img/writes-throughput.png)"]
    return "\n".join(lines)


def _plot(results: Results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 5))
    for operation, by_clients in results.runs.items():
        counts = sorted(by_clients)
        for side, style in (("api", "-o"), ("bare", "--x")):
            rates = [by_clients[c][side].rps for c in counts]
            axes.plot(counts, rates, style, label=f"{operation}, {side}")
    axes.set_xscale("log", base=2)
    axes.set_xlabel("concurrent clients")
    axes.set_ylabel("requests accepted per second")
    axes.set_ylim(bottom=0)
    axes.grid(True, alpha=0.3)
    axes.legend()
    axes.set_title(f"POST /images and DELETE /images/{{id}} ({results.started})")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


# The load client, in a process of its own: ``python -m bench.writes --load PLAN``.


def _load_main(plan_file: Path) -> int:
    plan = json.loads(plan_file.read_text())
    print(json.dumps(asyncio.run(_load(plan))))
    return 0


async def _load(plan: dict[str, Any]) -> dict[str, Any]:
    """Every client works through its own targets until the time is up; 202s are counted."""
    latencies: list[float] = []
    refused: dict[str, int] = {}
    seconds = float(plan["seconds"])
    connector = aiohttp.TCPConnector(limit=len(plan["clients"]))
    async with aiohttp.ClientSession(connector=connector) as session:

        async def client(token: str, targets: list[str], deadline: float) -> None:
            headers = {"Authorization": f"Bearer {token}"}
            for target in targets:
                if (start := time.perf_counter()) >= deadline:
                    return
                async with _request(session, plan, target, headers) as response:
                    body = await response.read()
                if response.status == 202:
                    latencies.append((time.perf_counter() - start) * 1e3)
                else:
                    key = f"{response.status} {body[:200]!r}"
                    refused[key] = refused.get(key, 0) + 1

        began = time.perf_counter()
        deadline = began + seconds
        await asyncio.gather(*(client(c["token"], c["targets"], deadline) for c in plan["clients"]))
        elapsed = time.perf_counter() - began
    if refused:
        raise RuntimeError(f"refused requests: {refused}")
    cuts = statistics.quantiles(latencies, n=100)
    return {"accepted": len(latencies), "seconds": elapsed, "p50": cuts[49], "p99": cuts[98]}


def _request(
    session: aiohttp.ClientSession, plan: dict[str, Any], target: str, headers: dict[str, str]
) -> Any:
    if plan["method"] == "POST":
        return session.post(plan["base"], json={"instance": target}, headers=headers)
    return session.delete(f"{plan['base']}/{target}", headers=headers)


if __name__ == "__main__":
    sys.exit(main())
