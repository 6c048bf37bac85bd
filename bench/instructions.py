"""Instructions per listing request, the API's and the bare server's, under callgrind.

Run ``python -m bench instructions`` (PostgreSQL at ``--database-url``, valgrind
installed). On a shared machine, CPU time per request wanders by a tenth from one
run to the next, more than most changes to the request path are worth; the count
of instructions a process executes does not (valgrind's callgrind counts them,
whatever else the machine runs: two runs agree within 0.2 %). It creates a
scratch database of ``--size`` images (``bench.scale_data``), starts each server
under callgrind, warms it up, then counts the instructions of ``--requests``
requests of ``--case`` from 8 connections, as ``bench.scale`` sends them.

``--tree DIR`` (repeatable) also measures the API of another checkout of the
repository on the same database (``git worktree add /tmp/old HEAD~1``, a checkout
whose migrations are the same): an A/B of a change, one process after the other.
What it cannot see is time spent in the kernel (the same system calls on both
sides) and what cache misses cost.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import aiohttp

from bench import scale_data
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

REPOSITORY = Path(__file__).resolve().parent.parent
# Requests sent before counting starts: pools filled, statements prepared, caches warm.
WARM_UP_REQUESTS = 200
# callgrind runs a program about 50 times slower; starting the API takes that long too.
START_TIMEOUT_S = 300.0


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("valgrind is not installed (Debian: apt-get install valgrind)", file=sys.stderr)
        return 2
    with ExitStack() as stack:
        settings, database = scratch_deployment(stack, args)
        caller = scale_data.create_caller(database)
        print(f"generating {args.size:,} images ...", flush=True)
        scale_data.grow_to(database, scale_data.CALLER_IMAGES, args.size)
        path = f"/v2/zone/{scale_data.ZONE}/{CASES[args.case]}"
        counts: dict[str, float] = {}
        env = {**os.environ, **_environment(settings)}
        for tree in (REPOSITORY, *args.tree):
            name = "api" if tree == REPOSITORY else f"api of {tree}"
            command = [_python(tree), "-m", "imagesvc", "api"]
            tree_env = {**env, "PYTHONPATH": str(tree)}
            counts[name] = _per_request(command, tree_env, tree, path, caller.token, args.requests)
            print(f"{name}: {counts[name] / 1e3:,.1f} k instructions per request", flush=True)
        command = bare_listing_command(settings.database_url, caller.account_id)
        bare = _per_request(command, dict(os.environ), REPOSITORY, path, "", args.requests)
        print(f"bare: {bare / 1e3:,.1f} k instructions per request", flush=True)
        for name, count in counts.items():
            print(f"bare / {name}: {bare / count:.3f}")
    return 0


def _per_request(
    command: list[str], env: dict[str, str], cwd: Path, path: str, token: str, requests: int
) -> float:
    """Instructions ``command``'s server executes per request of ``path``, once warm."""
    port = _free_port()
    with _under_callgrind([*command, "--port", str(port)], env, cwd) as (process, out):
        _wait_for_port(port, process, timeout=START_TIMEOUT_S)
        url = f"http://127.0.0.1:{port}{path}"
        asyncio.run(_send(url, token, WARM_UP_REQUESTS))
        _callgrind_control("--instr=on", process.pid)
        asyncio.run(_send(url, token, requests))
        _callgrind_control("--dump", process.pid)
        dumps = sorted(out.glob("callgrind.out.*.*"))
        if not dumps:
            raise RuntimeError("callgrind wrote no dump")
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
    parser.add_argument("--size", type=int, default=10_000, help="images in the table")
    parser.add_argument("--requests", type=int, default=1500, help="requests counted")
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    parser.add_argument(
        "--tree", type=Path, action="append", default=[], help="another checkout's API too"
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
