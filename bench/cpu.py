"""CPU time per listing request, in place: the API's (and other trees') and the bare server's.

Run ``python -m bench cpu`` (PostgreSQL at ``--database-url``, ``wrk`` and
``taskset`` installed, 2 cores or more). ``bench instructions`` counts what a
request executes and is deterministic, but it cannot see what cache misses cost:
code and data a request touches once (the access line's logging path, round 9 of
docs/listing-profile.md) cost several times what their instructions predict.
This bench times it instead. Each server runs on a core of its own (the last
one), ``wrk`` and PostgreSQL on the others; each server's user + system CPU is
read from ``/proc`` around ``--seconds`` of ``--case`` from 8 connections; the
servers take turns, ``--rounds`` times, and it prints the medians.

Two processes of the same tree differ by a few µs (their memory layouts differ):
``--tree .`` shows by how much, and only larger differences mean anything.
``--tree DIR`` (repeatable) measures the API of another checkout on the same
database, as ``bench instructions`` does: an A/B of a change.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass
from pathlib import Path

from bench import scale_data
from bench.instructions import REPOSITORY, _python
from bench.scale import (
    CASES,
    CONNECTIONS,
    _environment,
    _free_port,
    _process,
    add_server_options,
    bare_listing_command,
    scratch_deployment,
)
from bench.writes import _cpu_seconds

WARM_UP_S = 2  # wrk takes whole seconds


@dataclass(frozen=True)
class Server:
    """A server under measurement: its name, base URL, process and the token it wants."""

    name: str
    base: str
    pid: int
    token: str


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    missing = [tool for tool in ("wrk", "taskset") if shutil.which(tool) is None]
    if missing:
        print(f"not installed: {', '.join(missing)}", file=sys.stderr)
        return 2
    cores = os.cpu_count() or 1
    if cores < 2:
        print("needs 2 cores: one for the servers, one for the load", file=sys.stderr)
        return 2
    server_core, load_cores = str(cores - 1), f"0-{cores - 2}"
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with ExitStack() as stack:
        servers = _servers(stack, args, server_core)
        path = f"/v2/zone/{scale_data.ZONE}/{CASES[args.case]}"
        for server in servers:  # pools filled, statements prepared, caches warm
            _load(server, path, WARM_UP_S, load_cores)
        _pin_postgresql(load_cores)
        samples: dict[str, list[float]] = {server.name: [] for server in servers}
        for _ in range(args.rounds):
            for server in servers:
                used = _cpu_per_request(server, path, args.seconds, load_cores)
                samples[server.name].append(used)
        _print(samples)
    return 0


def _servers(stack: ExitStack, args: argparse.Namespace, core: str) -> list[Server]:
    """The API of this tree and of each ``--tree``, and the bare server, on ``core``."""
    settings, database = scratch_deployment(stack, args)
    caller = scale_data.create_caller(database)
    print(f"generating {args.size:,} images ...", flush=True)
    scale_data.grow_to(database, scale_data.CALLER_IMAGES, args.size)
    env = {**os.environ, **_environment(settings)}
    servers = []
    for tree in (REPOSITORY, *args.tree):
        name = "api" if tree == REPOSITORY else f"api of {tree}"
        command = [_python(tree), "-m", "imagesvc", "api"]
        tree_env = {**env, "PYTHONPATH": str(tree)}
        base, pid = stack.enter_context(_pinned(command, tree_env, tree, core))
        servers.append(Server(name, base, pid, caller.token))
    bare = bare_listing_command(settings.database_url, caller.account_id)
    base, pid = stack.enter_context(_pinned(bare, dict(os.environ), REPOSITORY, core))
    servers.append(Server("bare", base, pid, ""))
    return servers


def _pinned(
    command: list[str], env: dict[str, str], cwd: Path, core: str
) -> AbstractContextManager[tuple[str, int]]:
    """The server ``command`` on CPU ``core``: its base URL and its pid (taskset executes
    the command in its own process)."""
    port = _free_port()
    return _process(["taskset", "-c", core, *command, "--port", str(port)], env, port, cwd)


def _pin_postgresql(cores: str) -> None:
    """PostgreSQL's processes (and so the backends they start) off the servers' core."""
    found = subprocess.run(["pgrep", "-x", "postgres"], capture_output=True, text=True)
    pids = found.stdout.split()
    moved = [
        subprocess.run(["taskset", "-p", "-c", cores, pid], capture_output=True).returncode == 0
        for pid in pids
    ]
    if not pids or not all(moved):
        print("PostgreSQL could not be pinned (it runs elsewhere, or as another user):")
        print("its processes may share the servers' core, which adds noise.", flush=True)


def _cpu_per_request(server: Server, path: str, seconds: int, cores: str) -> float:
    """Microseconds of CPU ``server`` spends per request of ``path``, under load."""
    before = _cpu_seconds(server.pid)
    requests = _load(server, path, seconds, cores)
    return (_cpu_seconds(server.pid) - before) * 1e6 / requests


def _load(server: Server, path: str, seconds: int, cores: str) -> int:
    """``wrk`` on ``cores`` against ``server`` for ``seconds``: the requests it answered."""
    headers = ["-H", f"Authorization: Bearer {server.token}"] if server.token else []
    command = ["taskset", "-c", cores, "wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s"]
    done = subprocess.run(
        [*command, *headers, f"{server.base}{path}"], capture_output=True, text=True, check=True
    )
    if "Non-2xx" in done.stdout or "Socket errors" in done.stdout:
        raise RuntimeError(f"{server.name} refused requests:\n{done.stdout}")
    answered = re.search(r"(\d+) requests in", done.stdout)
    if answered is None or not int(answered.group(1)):
        raise RuntimeError(f"no requests counted:\n{done.stdout}")
    return int(answered.group(1))


def _print(samples: dict[str, list[float]]) -> None:
    bare = statistics.median(samples["bare"])
    for name, values in samples.items():
        used = statistics.median(values)
        spread = f"{min(values):.1f} to {max(values):.1f}"
        print(
            f"{name}: {used:.1f} µs of CPU per request ({spread}); bare / {name}: {bare / used:.2f}"
        )


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench cpu",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_server_options(parser)
    parser.add_argument("--case", choices=sorted(CASES), default="provider")
    parser.add_argument("--size", type=int, default=10_000, help="images in the table")
    parser.add_argument("--seconds", type=int, default=3, help="length of one run")
    parser.add_argument("--rounds", type=int, default=5, help="turns of every server")
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    parser.add_argument(
        "--tree", type=Path, action="append", default=[], help="another checkout's API too"
    )
    return parser.parse_args(argv)
