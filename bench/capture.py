"""``python -m bench capture``: capture time against copying the disk with standard tools.

It makes its own disks, starts the service on PostgreSQL + Redis (its own random database
and queue, its own API and worker processes, all removed afterwards), and times each case
several times, alternating with its baseline, the page cache warm for both:

- imagesvc: from ``POST /images`` to the job's ``successful`` (request, dispatch, claim,
  copy, checksum, fsync, commit), as a client sees it;
- raw baseline: ``cp --sparse=always SRC DST && sync DST``;
- qcow2 baseline: ``qemu-img convert -O qcow2 SRC DST && sync DST``;
- S3 cases (a raw disk captured into an S3 store, served by an ``rclone serve s3`` the
  bench starts, so stored as qcow2): ``qemu-img convert -O qcow2`` + ``sync`` + boto3's
  ``upload_file`` of the qcow2 to the same server (``bench/_s3_store.py``).

It prints min and median with their ratio, and the worker's peak resident size during the
20 GiB case; without ``--quick`` it also rewrites its section of ``docs/benchmarks.md`` with
the table and plots (``docs/img/capture-*.png``). ``--quick`` (one 64 MiB disk, one run,
into each store) only checks that the bench still works. ``--ab DIR`` also starts the service
from another checkout (say, the previous commit: ``git worktree add DIR REV``) and alternates
it too, so old and new are compared in the same run; it prints both and writes no doc.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import scale_report
from bench._s3_store import S3Store

MiB = 1 << 20
GiB = 1 << 30
REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "benchmarks.md"
IMG = REPO / "docs" / "img"
START, END = "<!-- bench:capture:start -->", "<!-- bench:capture:end -->"
POLL = 0.005  # seconds between job polls: small next to the times measured
S3_PREFIX = "images"  # the S3 service's store: s3://bench/images


@dataclass(frozen=True)
class Case:
    name: str
    label: str
    disk_format: str  # raw | qcow2
    virtual: int
    data: int
    extents: int  # the data is split in this many extents, spread over the disk
    target: float | None = None  # max imagesvc/baseline ratio; None: a plot point only
    runs: int = 5
    store: str = "file"  # file: the data dir's directory; s3: a bucket of rclone serve s3


CASES = [
    Case("raw-2g", "raw, 2 GiB virtual, 1 GiB data", "raw", 2 * GiB, GiB, 8, 1.25),
    Case("raw-20g", "raw, 20 GiB virtual, 200 MiB data in 4 extents", "raw", 20 * GiB,
         200 * MiB, 4, 2.0),
    Case("qcow2-2g", "qcow2, 2 GiB virtual, 1 GiB data", "qcow2", 2 * GiB, GiB, 8, 1.25),
    Case("raw-100g", "raw, 100 GiB virtual, 1 GiB data", "raw", 100 * GiB, GiB, 8),
    Case("raw-2g-256m", "raw, 2 GiB virtual, 256 MiB data", "raw", 2 * GiB, 256 * MiB, 8, runs=3),
    Case("raw-2g-512m", "raw, 2 GiB virtual, 512 MiB data", "raw", 2 * GiB, 512 * MiB, 8, runs=3),
    Case("raw-20g-1g", "raw, 20 GiB virtual, 1 GiB data", "raw", 20 * GiB, GiB, 8, runs=3),
    Case("s3-raw-2g", "raw, 2 GiB virtual, 1 GiB data, into S3 (as qcow2)", "raw", 2 * GiB, GiB,
         8, store="s3"),
]  # fmt: skip
QUICK = Case("raw-64m", "raw, 64 MiB virtual, 16 MiB data", "raw", 64 * MiB, 16 * MiB, 2, runs=1)
QUICK_S3 = Case("s3-raw-64m", "raw, 64 MiB virtual, 16 MiB data, into S3 (as qcow2)", "raw",
                64 * MiB, 16 * MiB, 2, runs=1, store="s3")  # fmt: skip
RSS_CASE = "raw-20g"
LARGE_VS = ("raw-100g", "raw-2g", 1.5)  # imagesvc on the first within 1.5x of the second


@dataclass
class Result:
    case: Case
    imagesvc: list[float] = field(default_factory=list)
    baseline: list[float] = field(default_factory=list)
    other: list[float] = field(default_factory=list)  # the --ab checkout's service

    def ratio(self, pick: Callable[[list[float]], float]) -> float:
        return pick(self.imagesvc) / pick(self.baseline)


# --------------------------------------------------------------------------- disks


def make_disk(case: Case, pool: Path, directory: Path) -> Path:
    """A sparse disk of the case's virtual size with its data, copied from the random pool."""
    raw = directory / f"{case.name}.raw"
    step = case.virtual // case.extents
    piece = case.data // case.extents
    with raw.open("wb") as disk, pool.open("rb") as random_bytes:
        disk.truncate(case.virtual)
        for index in range(case.extents):
            offset = index * step + step // 4
            copied = 0
            while copied < piece:
                step_copied = os.copy_file_range(
                    random_bytes.fileno(), disk.fileno(), piece - copied,
                    index * piece + copied, offset + copied,
                )  # fmt: skip
                if step_copied == 0:
                    raise RuntimeError("the random pool is too small")
                copied += step_copied
    if case.disk_format == "raw":
        return raw
    qcow2 = directory / f"{case.name}.qcow2"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, qcow2], check=True)
    raw.unlink()
    return qcow2


def make_pool(directory: Path, size: int) -> Path:
    """A file of random bytes the disks' data is copied from."""
    pool = directory / "random.bin"
    with pool.open("wb") as out:
        for _ in range(size // (64 * MiB)):
            out.write(os.urandom(64 * MiB))
    return pool


def warm(path: Path) -> None:
    """Read the file's data extents, so both sides start with the source in the page cache."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size, offset = os.fstat(fd).st_size, 0
        while offset < size:
            try:
                offset = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError:
                return  # only holes left
            end = os.lseek(fd, offset, os.SEEK_HOLE)
            while offset < end:
                offset += len(os.pread(fd, min(16 * MiB, end - offset), offset)) or end
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- the service


class Service:
    """imagesvc's API and one worker on a fresh PostgreSQL database and Redis queue; its
    image store is the data dir's directory, or an S3 store's (``s3``)."""

    def __init__(
        self,
        workdir: Path,
        database_server: str,
        redis_url: str,
        s3: S3Store | None = None,
        repo: Path = REPO,
    ) -> None:
        self.repo = repo  # the checkout whose code the service runs
        self.data_dir = workdir / f"service-{'s3-' if s3 else ''}{secrets.token_hex(2)}"
        self.s3 = s3
        self.database_server = database_server
        self.redis_url = redis_url
        self.database = f"imagesvc_bench_{secrets.token_hex(4)}"
        self.queue = f"bench-{secrets.token_hex(4)}"
        self.port = free_port()
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.env: dict[str, str] = {}
        self.token = ""
        self.account = ""

    def __enter__(self) -> Service:
        from sqlalchemy.engine import make_url

        admin_sql(self.database_server, f'CREATE DATABASE "{self.database}"')
        url = make_url(self.database_server).set(database=self.database)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGESVC_")}
        self.env.update(
            IMAGESVC_DATA_DIR=str(self.data_dir),
            IMAGESVC_DATABASE_URL=url.render_as_string(hide_password=False),
            IMAGESVC_BROKER_URL=self.redis_url,
            IMAGESVC_QUEUE=self.queue,
            IMAGESVC_WORKER_CONCURRENCY="1",
        )
        if self.s3 is not None:
            self.env.update(self.s3.env(S3_PREFIX))
        try:
            self.imagesvc("db", "upgrade")
            self.start("api", "api", "--port", str(self.port))
            self.start("worker", "worker")
            self.wait_healthy()
            self.sign_up()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for name, process in self.processes.items():
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)  # the main process: a warm shutdown
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                print(f"bench: {name} did not stop; killing it", file=sys.stderr)
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        with contextlib.suppress(Exception):
            import redis

            redis.Redis.from_url(self.redis_url).delete(self.queue)
        admin_sql(self.database_server, f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def imagesvc(self, *argv: str) -> dict[str, Any]:
        """An operator command; its JSON output if it printed any."""
        result = subprocess.run(
            [sys.executable, "-m", "imagesvc", *argv],
            env=self.env, cwd=self.repo, capture_output=True, text=True, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            raise RuntimeError(f"imagesvc {' '.join(argv)} failed: {result.stderr[-2000:]}")
        return dict(json.loads(result.stdout)) if "--json" in argv else {}

    def start(self, name: str, *argv: str) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = (self.data_dir / f"{name}.log").open("wb")
        self.processes[name] = subprocess.Popen(
            [sys.executable, "-m", "imagesvc", *argv],
            env=self.env, cwd=self.repo, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited; see {self.data_dir / (name + '.log')}")
            with contextlib.suppress(OSError):
                healthy = self.get("/healthz") == {"database": "ok", "broker": "ok"}
                worker_log = (self.data_dir / "worker.log").read_text(errors="replace")
                if healthy and "ready." in worker_log:
                    return
            time.sleep(0.2)
        raise RuntimeError("the service did not become ready within 60 s")

    def sign_up(self) -> None:
        account = self.imagesvc("account", "create", "bench", "--json")
        self.account = account["account_id"]
        self.imagesvc("account", "set-quota", self.account, "--images", "100000", "--gb",
                      "10000000", "--json")  # fmt: skip
        form = b"grant_type=client_credentials"
        request = urllib.request.Request(f"{self.base}/v2/oauth2/token", data=form)
        basic = f"{account['api_key']}:{account['secret']}".encode()
        request.add_header("Authorization", "Basic " + base64.b64encode(basic).decode())
        with urllib.request.urlopen(request) as response:
            self.token = json.load(response)["access_token"]

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str) -> Any:
        request = urllib.request.Request(self.base + path)
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        with urllib.request.urlopen(request) as response:
            return json.load(response)

    def post(self, path: str, body: dict[str, str]) -> Any:
        request = urllib.request.Request(self.base + path, data=json.dumps(body).encode())
        request.add_header("Authorization", f"Bearer {self.token}")
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request) as response:
            return json.load(response)

    def add_instance(self, disk: Path) -> str:
        added = self.imagesvc("instance", "add", "--zone", "ac1", "--owner", self.account,
                              "--disk", str(disk), "--json")  # fmt: skip
        return str(added["instance_id"])

    def capture(self, instance_id: str) -> float:
        """Seconds from POST /images to the job's success; the stored file is removed after."""
        started = time.perf_counter()
        reply = self.post("/v2/zone/ac1/images", {"instance": instance_id})
        while True:
            job = self.get(f"/v2/zone/ac1/job/{reply['job_id']}")
            if job["status"] not in ("pending", "working"):
                break
            time.sleep(POLL)
        elapsed = time.perf_counter() - started
        if job["status"] != "successful":
            raise RuntimeError(f"capture failed: {job}")
        self.remove_stored(reply["image_id"])  # keep the bench's disk usage to one copy
        return elapsed

    def remove_stored(self, image_id: str) -> None:
        if self.s3 is not None:
            self.s3.remove_prefix(f"{S3_PREFIX}/{image_id}.")
        for stored in (self.data_dir / "images").glob(f"{image_id}.*"):
            stored.unlink()

    def worker_pids(self) -> list[int]:
        """The worker's main process and its pool children."""
        main = self.processes["worker"].pid
        children = Path(f"/proc/{main}/task/{main}/children")
        with contextlib.suppress(OSError):
            return [main, *map(int, children.read_text().split())]
        return [main]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def admin_sql(server: str, statement: str) -> None:
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    engine = create_engine(server, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with engine.connect() as connection:
            connection.execute(text(statement))
    finally:
        engine.dispose()


class RssPeak:
    """Samples the resident size of a set of processes in a thread; keeps the largest."""

    def __init__(self, pids: Callable[[], list[int]]) -> None:
        self._pids = pids
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> RssPeak:  # entered once per measured capture
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            for pid in self._pids():
                self.peak = max(self.peak, rss(pid))


def rss(pid: int) -> int:
    """Resident bytes of a process, 0 if it is gone."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


# --------------------------------------------------------------------------- baselines


def baseline(case: Case, source: Path, directory: Path) -> float:
    """Seconds for the standard tool's copy of ``source`` plus ``sync`` of the copy."""
    target = directory / f"baseline.{case.disk_format}"
    if case.disk_format == "raw":
        copy = ["cp", "--sparse=always", str(source), str(target)]
    else:
        copy = ["qemu-img", "convert", "-O", "qcow2", str(source), str(target)]
    started = time.perf_counter()
    subprocess.run(copy, check=True)
    subprocess.run(["sync", str(target)], check=True)
    elapsed = time.perf_counter() - started
    target.unlink()
    return elapsed


# --------------------------------------------------------------------------- the run


def run_case(
    case: Case,
    disk: Path,
    service: Service,
    rss_peak: RssPeak | None,
    other: Service | None = None,
) -> Result:
    """Alternate imagesvc and its baseline ``case.runs`` times; warm cache before each.

    With ``other`` (``--ab``), that service's capture is a third side, alternated as well.
    """
    result = Result(case)
    instance = service.add_instance(disk)
    other_instance = other.add_instance(disk) if other is not None else ""
    work = disk.parent
    s3 = service.s3

    def measure_baseline() -> float:
        return s3.baseline(disk, work) if s3 is not None else baseline(case, disk, work)

    for run in range(case.runs):
        sides: list[Callable[[], None]] = [
            lambda: result.imagesvc.append(service.capture(instance)),
            lambda: result.baseline.append(measure_baseline()),
        ]
        if other is not None:
            sides.append(lambda: result.other.append(other.capture(other_instance)))
        for side in sides if run % 2 == 0 else sides[::-1]:
            warm(disk)
            if rss_peak is not None and side is sides[0]:
                with rss_peak:
                    side()
            else:
                side()
    return result


BASELINE_TOOLS = {
    "raw": "`cp --sparse=always` + `sync`",
    "qcow2": "`qemu-img convert -O qcow2` + `sync`",
    "s3": "`qemu-img convert -O qcow2` + `sync` + boto3 `upload_file`",
}


def report(results: list[Result], rss_peak: int | None) -> list[str]:
    """The table (markdown) and the verdicts, as lines."""
    lines = [
        "| case | imagesvc min | imagesvc median | baseline | baseline min | baseline median "
        "| ratio of min | ratio of median | target |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        tool = BASELINE_TOOLS[r.case.store if r.case.store == "s3" else r.case.disk_format]
        target = f"≤ {r.case.target}x" if r.case.target else "(plot point)"
        if r.case.name == LARGE_VS[0]:
            target = f"imagesvc ≤ {LARGE_VS[2]}x its time on {LARGE_VS[1]}"
        lines.append(
            f"| {r.case.label} | {min(r.imagesvc):.2f} s | {statistics.median(r.imagesvc):.2f} s "
            f"| {tool} | {min(r.baseline):.2f} s | {statistics.median(r.baseline):.2f} s "
            f"| {r.ratio(min):.2f}x | {r.ratio(statistics.median):.2f}x | {target} |"
        )
    lines.append("")
    by_name = {r.case.name: r for r in results}
    for r in results:
        if r.case.target is not None:
            verdict = "within" if r.ratio(min) <= r.case.target else "NOT within"
            lines.append(f"- {r.case.label}: {r.ratio(min):.2f}x ({verdict} {r.case.target}x)")
    large, small, limit = LARGE_VS
    if large in by_name and small in by_name:
        ratio = min(by_name[large].imagesvc) / min(by_name[small].imagesvc)
        verdict = "within" if ratio <= limit else "NOT within"
        lines.append(
            f"- imagesvc on {by_name[large].case.label} vs {by_name[small].case.label}: "
            f"{ratio:.2f}x ({verdict} {limit}x)"
        )
    for r in results:
        if r.other:
            lines.append(
                f"- A/B, {r.case.label}: this checkout min {min(r.imagesvc):.2f} s, "
                f"the other {min(r.other):.2f} s; ratio of min to the baseline "
                f"{r.ratio(min):.2f}x against {min(r.other) / min(r.baseline):.2f}x"
            )
    if rss_peak is not None:
        verdict = "within" if rss_peak <= 150 * 10**6 else "NOT within"
        lines.append(
            f"- worker peak resident size during the 20 GiB captures: {rss_peak / 10**6:.0f} MB "
            f"({verdict} 150 MB)"
        )
    return lines


# --------------------------------------------------------------------------- the doc


def machine() -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GiB
    fs = subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "--target", tempfile.gettempdir()],
                        capture_output=True, text=True, check=False).stdout.strip()  # fmt: skip
    return (
        f"{os.cpu_count()} x {cpu}, {memory:.0f} GiB RAM, {platform.system()} "
        f"{platform.release()}, temporary files on {fs or 'unknown fs'}, "
        f"Python {platform.python_version()}"
    )


def plots(results: list[Result]) -> list[str]:
    """Draw the PNGs into docs/img; return their markdown references."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    IMG.mkdir(parents=True, exist_ok=True)
    by_name = {r.case.name: r for r in results}
    refs = []
    series: list[tuple[str, str, str, list[str], Callable[[Case], float]]] = [
        ("capture-vs-data.png", "raw disk, 2 GiB virtual", "data (MiB)",
         ["raw-2g-256m", "raw-2g-512m", "raw-2g"], lambda c: c.data / MiB),
        ("capture-vs-virtual.png", "raw disk, 1 GiB data", "virtual size (GiB)",
         ["raw-2g", "raw-20g-1g", "raw-100g"], lambda c: c.virtual / GiB),
    ]  # fmt: skip
    for name, title, xlabel, names, x_of in series:
        points = [by_name[n] for n in names if n in by_name]
        figure, axes = plt.subplots(figsize=(6, 4))
        xs = [x_of(r.case) for r in points]
        axes.plot(xs, [min(r.imagesvc) for r in points], "o-", label="imagesvc (min)")
        axes.plot(xs, [min(r.baseline) for r in points], "s--", label="cp --sparse + sync (min)")
        if name == "capture-vs-virtual.png":
            axes.set_xscale("log")
        axes.set_xticks(xs, [f"{x:g}" for x in xs])
        axes.set(title=f"Capture time, {title}", xlabel=xlabel, ylabel="seconds", ylim=(0, None))
        axes.legend()
        figure.tight_layout()
        figure.savefig(IMG / name, dpi=100)
        plt.close(figure)
        refs.append(f"![capture time: {title}](img/{name})")
    targets = [
        r
        for r in results
        if r.case.target is not None or r.case.name == "raw-100g" or r.case.store == "s3"
    ]
    figure, axes = plt.subplots(figsize=(7, 4))
    ticks = list(range(len(targets)))
    axes.bar([x - 0.2 for x in ticks], [min(r.imagesvc) for r in targets], 0.4, label="imagesvc")
    axes.bar([x + 0.2 for x in ticks], [min(r.baseline) for r in targets], 0.4, label="baseline")
    axes.set_xticks(ticks, [r.case.name for r in targets])
    axes.set(title="Capture time beside the baseline (min of runs)", ylabel="seconds")
    axes.legend()
    figure.tight_layout()
    figure.savefig(IMG / "capture-cases.png", dpi=100)
    plt.close(figure)
    refs.append("![capture time per case, beside its baseline](img/capture-cases.png)")
    return refs


def write_section(body: str, doc: Path = DOC) -> None:
    """Replace this bench's section of the doc (between its markers), creating the doc."""
    doc.parent.mkdir(parents=True, exist_ok=True)
    scale_report.write_section(doc, START, END, body.rstrip())


def document(results: list[Result], lines: list[str], rss_peak: int | None) -> None:
    runs = ", ".join(f"{r.case.name}: {len(r.imagesvc)}" for r in results)
    load = os.getloadavg()
    body = "\n".join([
        "## Capture",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC with `python -m bench capture`, on "
        f"{machine()}; load average at the start {load[0]:.2f}. The machine is shared, so each "
        "case alternates imagesvc with its baseline, side by side in one run, and the ratio "
        "compares the two under the same conditions.",
        "",
        "imagesvc's time runs from `POST /images` to the job's `successful`, as a client polling "
        "the job sees it (request, dispatch through Redis, claim, copy and checksum, fsync, "
        "commit in PostgreSQL). The baseline is the standard tool's copy followed by `sync` of "
        "the copy. The source's data is in the page cache before every run of either side. "
        f"Runs per case: {runs}. Where the time goes, and what was done about it: "
        "[capture-profile.md](capture-profile.md).",
        "",
        *lines,
        "",
        *plots(results),
    ])  # fmt: skip
    write_section(body)


# --------------------------------------------------------------------------- main


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench capture", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one 64 MiB disk, one run, no doc")
    parser.add_argument("--runs", type=int, help="runs per case (default: 5, plot points 3)")
    parser.add_argument("--cases", help="comma-separated case names (default: all)")
    parser.add_argument(
        "--database-url",
        default=os.environ.get(
            "IMAGESVC_BENCH_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
        ),
        help="a PostgreSQL server; the bench creates and drops its own database there",
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("IMAGESVC_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"),
    )
    parser.add_argument("--workdir", type=Path, help="where disks are made (default: a temp dir)")
    parser.add_argument("--no-doc", action="store_true", help="do not rewrite docs/benchmarks.md")
    parser.add_argument(
        "--ab",
        type=Path,
        metavar="DIR",
        help="also run the service of the checkout in DIR, alternated (implies --no-doc)",
    )
    return parser.parse_args(argv)


def selected(args: argparse.Namespace) -> list[Case]:
    if args.quick:
        return [QUICK, QUICK_S3]
    cases = CASES
    if args.cases:
        wanted = set(args.cases.split(","))
        cases = [c for c in CASES if c.name in wanted]
    if args.runs:
        cases = [Case(**{**c.__dict__, "runs": args.runs}) for c in cases]
    return cases


@contextlib.contextmanager
def workdir(given: Path | None) -> Iterator[Path]:
    if given is not None:
        given.mkdir(parents=True, exist_ok=True)
        yield given
        return
    with tempfile.TemporaryDirectory(prefix="imagesvc-bench-") as path:
        yield Path(path)


def run_cases(
    cases: list[Case],
    disks: dict[str, Path],
    service: Service,
    results: list[Result],
    other: Service | None = None,
) -> int | None:
    """Run ``cases`` on ``service`` (and ``other``, with ``--ab``) into ``results``; the
    worker's peak RSS if measured."""
    rss_peak = None
    for case in cases:
        peak = RssPeak(service.worker_pids) if case.name == RSS_CASE else None
        print(f"bench capture: {case.label} x {case.runs}", flush=True)
        results.append(run_case(case, disks[case.name], service, peak, other))
        if peak is not None:
            rss_peak = peak.peak
    return rss_peak


def main(argv: list[str]) -> int:
    args = parse(argv)
    cases = selected(args)
    with workdir(args.workdir) as work:
        print(f"bench capture: making disks in {work}", flush=True)
        pool = make_pool(work, max(c.data for c in cases) + 64 * MiB)
        disks = {c.name: make_disk(c, pool, work) for c in cases}
        pool.unlink()
        results: list[Result] = []
        rss_peak = None
        file_cases = [c for c in cases if c.store == "file"]
        s3_cases = [c for c in cases if c.store == "s3"]
        with contextlib.ExitStack() as services:
            if file_cases:
                service = services.enter_context(Service(work, args.database_url, args.redis_url))
                other = None
                if args.ab is not None:
                    other = Service(work, args.database_url, args.redis_url, repo=args.ab.resolve())
                    services.enter_context(other)
                rss_peak = run_cases(file_cases, disks, service, results, other)
        if s3_cases:
            with (
                S3Store(work / "s3") as store,
                Service(work, args.database_url, args.redis_url, store) as service,
            ):
                run_cases(s3_cases, disks, service, results)
        lines = report(results, rss_peak)
        print("\n".join(lines))
        if not args.quick and not args.no_doc and args.ab is None:
            document(results, lines, rss_peak)
            print(f"bench capture: wrote {DOC.relative_to(REPO)}")
    return 0
