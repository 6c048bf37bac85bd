"""GET /images and GET /jobs at 10,000 to 1,000,000 images, against a bare baseline.

Run ``python -m bench.scale`` (or ``python -m bench scale``) with PostgreSQL at
``--database-url``. It creates a scratch database, grows it to each size with
``bench.scale_data``, and for every listing case measures the API and the bare
aiohttp + asyncpg server (``bench.bare_listing``) side by side, alternating
runs so that both meet the same noise from the rest of the machine. It prints
the two ratios of issue 9 (p50 at the largest size over p50 at 10,000; API
throughput over the bare server's) and, unless ``--quick``, writes plots under
``docs/img/``, its section of ``docs/benchmarks.md`` and ``docs/query-plans.md``.

``--quick`` measures 10,000 images only, a few cases, one second each.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import socket
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

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from bench import scale_data, scale_report
from bench.scale_load import Load, run_load
from imagesvc.bootstrap import services_for
from imagesvc.settings import Settings
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
    latency: dict[str, dict[int, dict[str, Load]]] = field(default_factory=dict)
    sweep: dict[int, dict[int, dict[str, Load]]] = field(default_factory=dict)
    plans: dict[str, str] = field(default_factory=dict)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    # Terminated, still stop the servers and drop the scratch database.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sizes = [10_000] if args.quick else args.sizes
    cases = QUICK_CASES if args.quick else tuple(CASES)
    seconds, rounds = (1.0, 1) if args.quick else (args.seconds, args.rounds)
    results = Results(time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), sizes)
    with _scratch_database(args.database_url, keep=args.keep) as url, ExitStack() as stack:
        settings = Settings(
            database_url=url,
            broker_url=args.redis_url,
            data_dir=Path(stack.enter_context(tempfile.TemporaryDirectory())),
            queue=f"bench-{secrets.token_hex(4)}",
        )
        upgrade(url)
        with services_for(settings) as services:
            caller = scale_data.create_caller(services.database)
            api = stack.enter_context(_api_server(settings))
            bare = stack.enter_context(_bare_server(url, caller.account_id))
            present = scale_data.CALLER_IMAGES
            for size in sizes:
                print(f"growing to {size:,} images ...", flush=True)
                scale_data.grow_to(services.database, present, size)
                present = size
                for case in cases:
                    loads = _side_by_side(
                        api, bare, CASES[case], caller.token, CONNECTIONS, seconds, rounds
                    )
                    results.latency.setdefault(case, {})[size] = loads
                    _print_load(case, size, loads)
                if size in (sizes[0], sizes[-1]) and not args.quick:
                    results.sweep[size] = _sweep(api, bare, caller.token, seconds, rounds)
            if not args.quick:
                results.plans = scale_report.plans(services.database, caller.account_id)
    verdict = _print_ratios(results)
    if not args.quick:
        scale_report.write(results, Path(args.docs))
    return 0 if verdict or args.quick else 1


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.scale",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="10,000 images, under a minute")
    parser.add_argument(
        "--database-url",
        default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
        help="a PostgreSQL server whose user may create databases",
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--seconds", type=float, default=3.0, help="length of one run")
    parser.add_argument("--rounds", type=int, default=2, help="alternations bare/API per case")
    parser.add_argument("--docs", default="docs", help="where benchmarks.md and img/ live")
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    return parser.parse_args(argv)


def _side_by_side(
    api: str, bare: str, path: str, token: str, connections: int, seconds: float, rounds: int
) -> dict[str, Load]:
    """Bare, API, bare, API...: the median of each side's runs."""
    runs: dict[str, list[Load]] = {"bare": [], "api": []}
    for _ in range(rounds):
        for side, base in (("bare", bare), ("api", api)):
            runs[side].append(run_load(f"{base}/v2/zone/ac1/{path}", token, connections, seconds))
    return {side: _median(loads) for side, loads in runs.items()}


def _median(loads: list[Load]) -> Load:
    return Load(
        statistics.median(load.rps for load in loads),
        statistics.median(load.p50 for load in loads),
        statistics.median(load.p99 for load in loads),
    )


def _sweep(
    api: str, bare: str, token: str, seconds: float, rounds: int
) -> dict[int, dict[str, Load]]:
    """The default list's throughput against the number of concurrent connections."""
    out = {}
    for connections in SWEEP:
        out[connections] = _side_by_side(
            api, bare, CASES["default"], token, connections, seconds, rounds
        )
        _print_load(f"default c={connections}", 0, out[connections])
    return out


def _print_load(case: str, size: int, loads: dict[str, Load]) -> None:
    api, bare = loads["api"], loads["bare"]
    at = f" at {size:>9,}" if size else ""
    print(
        f"{case:>18}{at}: api {api.rps:7.1f}/s p50 {api.p50:7.2f} ms p99 {api.p99:7.2f} ms"
        f" | bare {bare.rps:7.1f}/s p50 {bare.p50:7.2f} ms | ratio {api.rps / bare.rps:.2f}",
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
def _api_server(settings: Settings) -> Iterator[str]:
    """``imagesvc api`` as an operator runs it, on a free port."""
    port = _free_port()
    env = {**os.environ, **_environment(settings)}
    command = [str(Path(sys.executable).parent / "imagesvc"), "api", "--port", str(port)]
    with _process(command, env, port) as base:
        yield base


@contextmanager
def _bare_server(url: str, owner: str) -> Iterator[str]:
    port = _free_port()
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    command = [
        sys.executable,
        "-m",
        "bench.bare_listing",
        "--dsn",
        dsn,
        "--owner",
        owner,
        "--port",
        str(port),
    ]
    with _process(command, dict(os.environ), port) as base:
        yield base


def _environment(settings: Settings) -> dict[str, str]:
    return {
        "IMAGESVC_DATABASE_URL": settings.database_url,
        "IMAGESVC_BROKER_URL": settings.broker_url,
        "IMAGESVC_DATA_DIR": str(settings.data_dir),
        "IMAGESVC_QUEUE": settings.queue,
        "IMAGESVC_ZONES": ",".join(settings.zones),
    }


@contextmanager
def _process(command: list[str], env: dict[str, Any], port: int) -> Iterator[str]:
    process = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=Path(__file__).parent.parent,
    )
    try:
        _wait_for_port(port, process)
        yield f"http://127.0.0.1:{port}"
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
