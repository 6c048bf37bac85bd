"""GET /images and GET /jobs at 10,000 to 1,000,000 images, against a bare baseline.

Run ``python -m bench.scale`` (or ``python -m bench scale``) with PostgreSQL at
``--database-url``. It creates one scratch database per table size with
``bench.scale_data``, starts the API and the bare aiohttp + asyncpg server
(``bench.bare_listing``) on each, and for every listing case measures them all
in turn, round after round, so that every figure meets the same noise from the
rest of the (shared) machine. It prints
the two ratios of issue 9 (p50 at the largest size over p50 at 10,000; API
throughput over the bare server's) and, unless ``--quick``, writes plots under
``docs/img/``, its section of ``docs/benchmarks.md`` and ``docs/query-plans.md``.

``--quick`` measures 10,000 images only, a few cases, one second each.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from bench import scale_data, scale_report
from bench.scale_load import Load, run_load
from imagesvc.bootstrap import services_for
from imagesvc.settings import Settings
from models.db import Database
from models.migrate import upgrade

SIZES = (10_000, 100_000, 1_000_000)
# The load: wrk -t2 -c8.
CONNECTIONS = 8
SWEEP = (1, 4, 8, 16, 32)
FLATNESS_TARGET = 1.5
THROUGHPUT_TARGET = 0.7

CASES: dict[str, str] = {
    "default": "images",
    "status": "images?status=available",
    "os_family": "images?os_family=ubuntu",
    "visibility": "images?visibility=public",
    "provider": "images?provider=system",
    "processor_type": "images?processor_type=32bit",
    "images": "images?images=img-c00000001,img-c00000002,img-c00000005,img-00000064,img-000000c8",
    "search_word": "images?search_word=UBU",
    "search_word_id": "images?search_word=0000A",
    "offset=5000": "images?limit=100&offset=5000",
    "offset=10000": "images?offset=10000",
    "jobs": "jobs",
}
QUICK_CASES = ("default", "search_word", "offset=10000", "jobs")


@dataclass
class Results:
    """Every measurement of a run: per case and size, the bare and the API loads."""

    started: str
    sizes: list[int]
    seconds: float
    rounds: int
    latency: dict[str, dict[int, dict[str, Load]]] = field(default_factory=dict)
    sweep: dict[int, dict[int, dict[str, Load]]] = field(default_factory=dict)
    plans: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Deployment:
    """One table size: its database, its caller, the API and the bare server on it."""

    size: int
    database: Database
    token: str
    api: str
    bare: str
    # The process serving each of the two base URLs, for its CPU time per request.
    pids: dict[str, int] = field(default_factory=dict, hash=False, compare=False)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    # Terminated, still stop the servers and drop the scratch databases.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sizes = [10_000] if args.quick else sorted(args.sizes)
    cases = QUICK_CASES if args.quick else tuple(args.cases or CASES)
    seconds, rounds = (1.0, 1) if args.quick else (args.seconds, args.rounds)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    results = Results(started, sizes, seconds, rounds)
    with ExitStack() as stack:
        deployments = [_deploy(stack, args, size) for size in sizes]
        _settle(deployments[-1].database, deployments, cases)
        for case in cases:
            for deployment, loads in _interleaved(
                deployments, CASES[case], CONNECTIONS, seconds, rounds
            ).items():
                results.latency.setdefault(case, {})[deployment.size] = loads
                _print_load(case, deployment.size, loads)
        if not args.quick:
            ends = [deployments[0], deployments[-1]]
            for connections in SWEEP:
                by_size = _interleaved(ends, CASES["default"], connections, seconds, rounds)
                for deployment, loads in by_size.items():
                    results.sweep.setdefault(deployment.size, {})[connections] = loads
                    _print_load(f"default c={connections}", deployment.size, loads)
            largest = deployments[-1]
            account_id = scale_data.caller_of(largest.database)
            results.plans = scale_report.plans(largest.database, account_id)
    verdict = _print_ratios(results)
    if not args.quick:
        scale_report.write(results, Path(args.docs))
    return 0 if verdict or args.quick else 1


def _deploy(stack: ExitStack, args: argparse.Namespace, size: int) -> Deployment:
    """A scratch database of ``size`` images, with the API and the bare server on it."""
    settings, database = scratch_deployment(stack, args)
    url = settings.database_url
    caller = scale_data.create_caller(database)
    print(f"generating {size:,} images ...", flush=True)
    scale_data.grow_to(database, scale_data.CALLER_IMAGES, size)
    api, api_pid = stack.enter_context(_api_server(settings))
    bare, bare_pid = stack.enter_context(_bare_server(url, caller.account_id))
    return Deployment(size, database, caller.token, api, bare, {api: api_pid, bare: bare_pid})


def scratch_deployment(stack: ExitStack, args: argparse.Namespace) -> tuple[Settings, Database]:
    """The settings of a migrated scratch database (``--database-url``, ``--keep``),
    ``--redis-url`` and a queue of its own, and that database, closed with ``stack``."""
    url = stack.enter_context(_scratch_database(args.database_url, keep=args.keep))
    settings = Settings(
        database_url=url,
        broker_url=args.redis_url,
        data_dir=Path(stack.enter_context(tempfile.TemporaryDirectory())),
        queue=f"bench-{secrets.token_hex(4)}",
    )
    upgrade(url)
    return settings, stack.enter_context(services_for(settings)).database


def _settle(database: Database, deployments: list[Deployment], cases: tuple[str, ...]) -> None:
    """Flush what generating wrote, then run every case once unmeasured.

    Otherwise the first cases measured meet the checkpoint of a million fresh
    rows and a cold cache, which is the generator's cost, not the listing's.
    """
    with database.engine.connect() as connection:
        connection.execution_options(isolation_level="AUTOCOMMIT").execute(text("CHECKPOINT"))
    for case in cases:
        for deployment in deployments:
            for base in (deployment.bare, deployment.api):
                url = f"{base}/v2/zone/{scale_data.ZONE}/{CASES[case]}"
                run_load(url, deployment.token, CONNECTIONS, 1.0)


def _interleaved(
    deployments: list[Deployment], path: str, connections: int, seconds: float, rounds: int
) -> dict[Deployment, dict[str, Load]]:
    """Each size's bare server and API in turn, ``rounds`` times; the median of each.

    Interleaving sizes and sides makes every figure meet the same noise from
    the rest of the (shared) machine, so both ratios compare like with like.
    """
    for deployment in deployments:
        _require_same_answer(deployment, path)
    runs: dict[tuple[Deployment, str], list[Load]] = {}
    for _ in range(rounds):
        for deployment in deployments:
            for side, base in (("bare", deployment.bare), ("api", deployment.api)):
                url = f"{base}/v2/zone/{scale_data.ZONE}/{path}"
                load = run_load(url, deployment.token, connections, seconds, deployment.pids[base])
                runs.setdefault((deployment, side), []).append(load)
    return {
        deployment: {side: _median(runs[deployment, side]) for side in ("bare", "api")}
        for deployment in deployments
    }


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.scale",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="10,000 images, under a minute")
    add_server_options(parser)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--cases", nargs="+", choices=list(CASES), help="default: all")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of one run")
    parser.add_argument("--rounds", type=int, default=2, help="alternations bare/API per case")
    parser.add_argument("--docs", default="docs", help="where benchmarks.md and img/ live")
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    return parser.parse_args(argv)


def add_server_options(parser: argparse.ArgumentParser) -> None:
    """The PostgreSQL server and Redis a benchmark deploys on."""
    parser.add_argument(
        "--database-url",
        default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
        help="a PostgreSQL server whose user may create databases",
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")


def _require_same_answer(deployment: Deployment, path: str) -> None:
    """The bare server must answer what the API answers, or the comparison means nothing."""
    answers = []
    for base in (deployment.api, deployment.bare):
        request = urllib.request.Request(
            f"{base}/v2/zone/{scale_data.ZONE}/{path}",
            headers={"Authorization": f"Bearer {deployment.token}"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            answers.append(json.load(response))
    api, bare = answers
    if api != bare:
        raise RuntimeError(
            f"{path} at {deployment.size:,}: the bare server answers differently:\n"
            f"API:  {json.dumps(api)[:600]}\nbare: {json.dumps(bare)[:600]}"
        )


def _median(loads: list[Load]) -> Load:
    return Load(
        statistics.median(load.rps for load in loads),
        statistics.median(load.p50 for load in loads),
        statistics.median(load.p99 for load in loads),
        sum(load.requests for load in loads),
        statistics.median(load.cpu_ms for load in loads),
    )


def _print_load(case: str, size: int, loads: dict[str, Load]) -> None:
    api, bare = loads["api"], loads["bare"]
    at = f" at {size:>9,}" if size else ""
    print(
        f"{case:>18}{at}: api {api.rps:7.1f}/s p50 {api.p50:7.2f} ms p99 {api.p99:7.2f} ms"
        f" | bare {bare.rps:7.1f}/s p50 {bare.p50:7.2f} ms | ratio {api.rps / bare.rps:.2f}"
        f" | CPU/request api {api.cpu_ms:.2f} ms bare {bare.cpu_ms:.2f} ms",
        flush=True,
    )


def _print_ratios(results: Results) -> bool:
    """Both of issue 9's listing ratios, each against its target; True if all are met."""
    small, large = results.sizes[0], results.sizes[-1]
    met = True
    print(f"\nflatness: API p50 at {large:,} / p50 at {small:,} (target <= {FLATNESS_TARGET})")
    for case, by_size in results.latency.items():
        ratio = by_size[large]["api"].p50 / by_size[small]["api"].p50
        met &= ratio <= FLATNESS_TARGET or large == small
        print(f"  {case:>18}: {ratio:5.2f}  {_mark(ratio <= FLATNESS_TARGET)}")
    print(f"\nthroughput: API / bare aiohttp+asyncpg (target >= {THROUGHPUT_TARGET})")
    for case, by_size in results.latency.items():
        for size in sorted({small, large}):
            ratio = by_size[size]["api"].rps / by_size[size]["bare"].rps
            met &= ratio >= THROUGHPUT_TARGET
            print(f"  {case:>18} at {size:>9,}: {ratio:5.2f}  {_mark(ratio >= THROUGHPUT_TARGET)}")
    print(
        "\nCPU time per request, bare / API (what the throughput ratio is when both are CPU-bound)"
    )
    for case, by_size in results.latency.items():
        for size in sorted({small, large}):
            api, bare = by_size[size]["api"].cpu_ms, by_size[size]["bare"].cpu_ms
            print(f"  {case:>18} at {size:>9,}: {bare:.2f} / {api:.2f} ms = {bare / api:5.2f}")
    return met


def _mark(ok: bool) -> str:
    return "ok" if ok else "MISSED"


@contextmanager
def _scratch_database(admin_url: str, keep: bool) -> Iterator[str]:
    """A new, empty database on the server of ``admin_url``; dropped afterwards."""
    name = f"imagesvc_bench_{secrets.token_hex(4)}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        if not keep:
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def _api_server(settings: Settings) -> Iterator[tuple[str, int]]:
    """``imagesvc api`` as an operator runs it, on a free port."""
    port = _free_port()
    env = {**os.environ, **_environment(settings)}
    command = [str(Path(sys.executable).parent / "imagesvc"), "api", "--port", str(port)]
    with _process(command, env, port) as server:
        yield server


@contextmanager
def _bare_server(url: str, owner: str) -> Iterator[tuple[str, int]]:
    port = _free_port()
    command = [*bare_listing_command(url, owner), "--port", str(port)]
    with _process(command, dict(os.environ), port) as server:
        yield server


def bare_listing_command(url: str, owner: str) -> list[str]:
    """The bare server's command line, but its ``--port``, on the database at ``url``."""
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    return [sys.executable, "-m", "bench.bare_listing", "--dsn", dsn, "--owner", owner]


def _environment(settings: Settings) -> dict[str, str]:
    return {
        "IMAGESVC_DATABASE_URL": settings.database_url,
        "IMAGESVC_BROKER_URL": settings.broker_url,
        "IMAGESVC_DATA_DIR": str(settings.data_dir),
        "IMAGESVC_QUEUE": settings.queue,
        "IMAGESVC_ZONES": ",".join(settings.zones),
    }


@contextmanager
def _process(
    command: list[str], env: dict[str, Any], port: int, cwd: Path = Path(__file__).parent.parent
) -> Iterator[tuple[str, int]]:
    """The server ``command`` listening on ``port``, run in ``cwd`` (this repository):
    its base URL and its pid."""
    process = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=cwd,
    )
    try:
        _wait_for_port(port, process)
        yield f"http://127.0.0.1:{port}", process.pid
    finally:
        process.terminate()
        process.wait(timeout=30)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port} after {timeout:.0f} s")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
