"""Instructions per request, the API's and the bare server's, under callgrind.

Run ``python -m bench instructions`` (PostgreSQL at ``--database-url``, valgrind
installed). On a shared machine, CPU time per request wanders by a tenth from one
run to the next, more than most changes to the request path are worth; the count
of instructions a process executes does not (valgrind's callgrind counts them,
whatever else the machine runs: two runs agree within 0.2 %). It creates a
scratch database of ``--size`` images (``bench.scale_data``), starts each server
under callgrind, warms it up, then counts the instructions of ``--requests``
requests of ``--case`` from 8 connections, as ``bench.scale`` sends them.
``--write capture`` (or ``delete``) counts writes instead, against
``bench.bare_writes``: 8 accounts capture distinct stopped instances (or delete
distinct images) that ``bench.writes`` seeds before each server.

``--tree DIR`` (repeatable) also measures the API of another checkout of the
repository on the same database (``git worktree add /tmp/old HEAD~1``, a checkout
whose migrations are the same): an A/B of a change, one process after the other.
What it cannot see is time spent in the kernel (the same system calls on both
sides) and what cache misses cost.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import aiohttp

from bench import scale_data, writes
from bench.scale import (
    CASES,
    CONNECTIONS,
    _environment,
    _free_port,
    _wait_for_port,
    add_server_options,
    bare_listing_command,
    scratch_deployment,
)
from imagesvc.settings import Settings
from models.db import Database

REPOSITORY = Path(__file__).resolve().parent.parent
# Requests sent before counting starts: pools filled, statements prepared, caches warm.
WARM_UP_REQUESTS = 200
# callgrind runs a program about 50 times slower; starting the API takes that long too.
START_TIMEOUT_S = 300.0

# Sends ``count`` requests to the server at the base URL given.
Load = Callable[[str, int], None]


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("valgrind is not installed (Debian: apt-get install valgrind)", file=sys.stderr)
        return 2
    # Terminated, still stop the servers and drop the scratch database.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with ExitStack() as stack:
        settings, database = scratch_deployment(stack, args)
        env = {**os.environ, **_environment(settings)}
        if args.write:
            api_load, bare = _writes(stack, args, settings, database)
        else:
            api_load, bare = _listing(args, settings, database)
        counts: dict[str, float] = {}
        for tree in (REPOSITORY, *args.tree):
            name = "api" if tree == REPOSITORY else f"api of {tree}"
            command = [_python(tree), "-m", "imagesvc", "api"]
            tree_env = {**env, "PYTHONPATH": str(tree)}
            counts[name] = _per_request(
                command, tree_env, tree, api_load, args.requests, _dump_in(args, name)
            )
            print(f"{name}: {counts[name] / 1e3:,.1f} k instructions per request", flush=True)
        command, load = bare
        bare_count = _per_request(
            command, dict(os.environ), REPOSITORY, load, args.requests, _dump_in(args, "bare")
        )
        print(f"bare: {bare_count / 1e3:,.1f} k instructions per request", flush=True)
        for name, count in counts.items():
            print(f"bare / {name}: {bare_count / count:.3f}")
    return 0


def _listing(
    args: argparse.Namespace, settings: Settings, database: Database
) -> tuple[Load, tuple[list[str], Load]]:
    """The listing loads of ``--case`` for the API and for the bare listing server."""
    caller = scale_data.create_caller(database)
    print(f"generating {args.size:,} images ...", flush=True)
    scale_data.grow_to(database, scale_data.CALLER_IMAGES, args.size)
    path = f"/v2/zone/{scale_data.ZONE}/{CASES[args.case]}"

    def load(token: str) -> Load:
        return lambda base, count: asyncio.run(_send(f"{base}{path}", token, count))

    command = bare_listing_command(settings.database_url, caller.account_id)
    return load(caller.token), (command, load(""))


def _writes(
    stack: ExitStack, args: argparse.Namespace, settings: Settings, database: Database
) -> tuple[Load, tuple[list[str], Load]]:
    """The write load of ``--write``, for the API and for ``bench.bare_writes``."""
    clients, callers = writes.new_clients(stack, database, CONNECTIONS)
    bench = writes.Bench(database, clients, {}, {}, args.redis_url, settings.queue)
    stack.callback(writes._drop_queues, args.redis_url, settings.queue)
    load = _WriteLoad(bench, args.write, WARM_UP_REQUESTS + args.requests)
    return load, (writes.bare_writes_command(settings.database_url, callers), load)


class _WriteLoad:
    """Captures (or deletes) from ``CONNECTIONS`` accounts, each on targets of its own:
    seeded afresh (the tables emptied first) whenever a new server is loaded."""

    def __init__(self, bench: writes.Bench, operation: str, per_server: int) -> None:
        self.bench = bench
        self.operation = operation
        self.per_client = math.ceil(per_server / CONNECTIONS) + 1
        self.server = ""
        self.targets: list[Iterator[str]] = []

    def __call__(self, base: str, count: int) -> None:
        if base != self.server:
            seeded = writes._seed(self.bench, self.operation, CONNECTIONS, self.per_client)
            self.server, self.targets = base, [iter(t) for t in seeded]
        asyncio.run(self._send(f"{base}/v2/zone/{writes.ZONE}/images", count))

    async def _send(self, url: str, requests: int) -> None:
        """``requests`` writes, each client on its own targets; each must be a 202."""
        left = requests
        plan = {"method": "POST" if self.operation == "capture" else "DELETE", "base": url}
        async with aiohttp.ClientSession() as session:

            async def client(token: str, targets: Iterator[str]) -> None:
                nonlocal left
                headers = {"Authorization": f"Bearer {token}"}
                while left > 0:
                    left -= 1
                    async with writes._request(session, plan, next(targets), headers) as response:
                        body = await response.read()
                        if response.status != 202:
                            raise RuntimeError(f"{url}: {response.status} {body[:200]!r}")

            clients = self.bench.clients
            await asyncio.gather(
                *(client(c.token, t) for c, t in zip(clients, self.targets, strict=True))
            )


def _dump_in(args: argparse.Namespace, name: str) -> Path | None:
    """Where ``--keep-dumps`` keeps the dump of the server called ``name``."""
    directory: Path | None = args.keep_dumps
    if directory is None:
        return None
    return directory / f"callgrind.out.{name.replace('/', '_').replace(' ', '-')}"


def _per_request(
    command: list[str],
    env: dict[str, str],
    cwd: Path,
    load: Load,
    requests: int,
    keep: Path | None = None,
) -> float:
    """Instructions ``command``'s server executes per request of ``load``, once warm."""
    port = _free_port()
    with _under_callgrind([*command, "--port", str(port)], env, cwd) as (process, out):
        _wait_for_port(port, process, timeout=START_TIMEOUT_S)
        base = f"http://127.0.0.1:{port}"
        load(base, WARM_UP_REQUESTS)
        _callgrind_control("--instr=on", process.pid)
        load(base, requests)
        _callgrind_control("--dump", process.pid)
        dumps = sorted(out.glob("callgrind.out.*.*"))
        if not dumps:
            raise RuntimeError("callgrind wrote no dump")
        if keep is not None:
            keep.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(dumps[-1], keep)
            print(f"callgrind's dump: {keep}", flush=True)
        return _total_instructions(dumps[-1]) / requests


@contextmanager
def _under_callgrind(
    command: list[str], env: dict[str, str], cwd: Path
) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """``command`` under callgrind, counting nothing until told to; its dumps' directory."""
    with tempfile.TemporaryDirectory() as directory:
        out = Path(directory)
        valgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no"]
        valgrind.append(f"--callgrind-out-file={out}/callgrind.out.%p")
        process = subprocess.Popen(
            [*valgrind, *command],
            env=env,
            cwd=cwd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            yield process, out
        finally:
            process.terminate()
            process.wait(timeout=120)


def _callgrind_control(option: str, pid: int) -> None:
    subprocess.run(["callgrind_control", option, str(pid)], check=True, capture_output=True)


def _total_instructions(dump: Path) -> int:
    for line in dump.read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"no total in {dump}")


async def _send(url: str, token: str, requests: int) -> None:
    """``requests`` GETs of ``url`` from ``CONNECTIONS`` connections; each must be a 200."""
    left = requests
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession(headers=headers) as session:

        async def client() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                async with session.get(url) as response:
                    await response.read()
                    if response.status != 200:
                        raise RuntimeError(f"{url}: {response.status}")

        await asyncio.gather(*(client() for _ in range(CONNECTIONS)))


def _python(tree: Path) -> str:
    """The tree's own virtualenv's Python if it has one, else this one."""
    own = tree / ".venv" / "bin" / "python"
    return str(own) if own.exists() else sys.executable


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.instructions",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_server_options(parser)
    parser.add_argument("--case", choices=list(CASES), default="provider")
    parser.add_argument(
        "--write", choices=list(writes.OPERATIONS), help="count this write instead of a listing"
    )
    parser.add_argument("--size", type=int, default=10_000, help="images in the table")
    parser.add_argument("--requests", type=int, default=1500, help="requests counted")
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    parser.add_argument(
        "--keep-dumps", type=Path, help="copy callgrind's dumps here (for callgrind_annotate)"
    )
    parser.add_argument(
        "--tree", type=Path, action="append", default=[], help="another checkout's API too"
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
