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
from bench.scale_load import run_load
from imagesvc.settings import Settings

WARM_UP_S = 2  # wrk takes whole seconds


@dataclass(frozen=True)
class Server:
    """A server under measurement: its name, base URL and process."""

    name: str
    base: str
    pid: int


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
        settings, database = scratch_deployment(stack, args)
        caller = scale_data.create_caller(database)
        print(f"generating {args.size:,} images ...", flush=True)
        scale_data.grow_to(database, scale_data.CALLER_IMAGES, args.size)
        servers = _servers(stack, args.tree, settings, caller.account_id, server_core)
        path = f"/v2/zone/{scale_data.ZONE}/{CASES[args.case]}"

        def cpu_per_request(server: Server, seconds: int) -> float:
            """µs of CPU ``server`` spends per request, under ``wrk`` on the other cores."""
            url = f"{server.base}{path}"  # the bare server does not check the token
            load = run_load(url, caller.token, CONNECTIONS, seconds, server.pid, load_cores)
            return load.cpu_ms * 1e3

        for server in servers:  # pools filled, statements prepared, caches warm
            cpu_per_request(server, WARM_UP_S)
        _pin_postgresql(load_cores)
        samples: dict[str, list[float]] = {server.name: [] for server in servers}
        for _ in range(args.rounds):
            for server in servers:
                samples[server.name].append(cpu_per_request(server, args.seconds))
        _print(samples)
    return 0


def _servers(
    stack: ExitStack, trees: list[Path], settings: Settings, owner: str, core: str
) -> list[Server]:
    """The API of this tree and of each of ``trees``, and the bare server, on ``core``."""
    env = {**os.environ, **_environment(settings)}
    servers = []
    for tree in (REPOSITORY, *trees):
        name = "api" if tree == REPOSITORY else f"api of {tree}"
        command = [_python(tree), "-m", "imagesvc", "api"]
        tree_env = {**env, "PYTHONPATH": str(tree)}
        servers.append(Server(name, *stack.enter_context(_pinned(command, tree_env, tree, core))))
    bare = bare_listing_command(settings.database_url, owner)
    servers.append(
        Server("bare", *stack.enter_context(_pinned(bare, dict(os.environ), REPOSITORY, core)))
    )
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
