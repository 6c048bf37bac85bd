"""The job pipeline: delete jobs finished end to end per second, against bare Celery.

Run ``python -m bench pipeline`` with PostgreSQL at ``--database-url`` and Redis at
``--redis-url``. On a scratch database and queues of its own it starts, for each
worker concurrency, two workers with the same settings side by side:

- ``imagesvc worker`` as an operator runs it (prefork, ``acks_late``,
  ``reject_on_worker_lost``, prefetch 1, JSON), started by ``bench.pipeline_worker``, which
  only names its unacknowledged messages' keys after its queue, and
- bare Celery (``bench.bare_celery``): the same configuration and command line, whose
  task does nothing.

**End to end**, for imagesvc, runs from the first of N delete jobs being sent to the
last of them being ``successful`` in the database and the last message acknowledged. The
jobs are committed first, as the API commits them (``models.images.delete_images``, one
image each; the images themselves are made by one ``generate_series`` insert), then sent
one after the other by ``JobQueue.send``, the API's and the sweep's sender, while the
workers already run them; every 10 ms the bench asks whether any job is still pending or
working (one index entry answers), then whether the broker still holds any of the
messages, queued or unacknowledged. Both are needed: a message's statement also settles
up to ``GROUP_COMMIT_JOBS`` other pending jobs (a group commit), so the jobs are all
settled while messages are still queued, each of which then costs a worker a read. The
API's own request handling is not in it: that is the writes benchmark's part. For bare
Celery the same sender sends N no-op tasks, and the run ends when the broker holds
none of them any more, neither queued nor unacknowledged (``acks_late``: a message is
acknowledged after its task has run).

The two sides alternate, round after round, so that both meet the same noise from
the rest of a shared machine; the medians are compared. It prints both rates and the
ratio (target >= 0.5) and, unless ``--quick``, rewrites its section of
``docs/benchmarks.md`` with a plot in ``docs/img/``. ``--quick`` runs 100 jobs once
at the default concurrency, as ``.ci/run`` does. ``--trace`` instead runs a few jobs
in this process and counts what each one costs the database (``bench.pipeline_trace``).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import redis
from sqlalchemy import func, select, text

from bench import bare_celery, pipeline_report, pipeline_trace
from bench.pipeline_cpu import CpuMeter, process_tree
from bench.scale import _environment, _scratch_database
from imagesvc.bootstrap import Services, services_for
from imagesvc.settings import Settings
from models.accounts import create_account
from models.images import delete_images
from models.jobs import unsettled
from models.migrate import upgrade
from models.scoping import Caller
from models.states import JobStatus
from models.tables import Job
from workers.job_queue import JobQueue, host_queue

TARGET = 0.5
DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379/0"
CONCURRENCY = 2  # Settings.worker_concurrency's default
SWEEP = (1, 2, 4)
ZONE = "ac1"
POLL_S = 0.01
RUN_TIMEOUT_S = 300.0
SIDES = ("bare", "imagesvc")

_IMAGES = """
INSERT INTO images (image_id, zone, owner, image_name, description, size, virtual_size,
    byte_size, disk_format, checksum, processor_type, platform, os_family, visibility,
    provider, recommended_type, default_user, default_passwd, status, transition_status,
    create_time, status_time)
SELECT :prefix || lpad(to_hex(i), 8, '0'), :zone, :owner, 'bench-' || i, '', 1, 1048576,
    1048576, 'raw', md5(i::text), '64bit', 'linux', 'ubuntu', 'private', 'self', 'c1m2',
    'root', '', 'available', '', now(), now()
FROM generate_series(1, CAST(:count AS bigint)) AS i
"""


@dataclass(frozen=True)
class Level:
    """The runs at one worker concurrency, by side: jobs (or tasks) per second, and the CPU
    milliseconds each cost (the worker's processes; imagesvc's PostgreSQL backends too)."""

    rates: dict[str, list[float]]
    cpu_ms: dict[str, list[float]]


@dataclass
class Results:
    """Every run, by worker concurrency."""

    started: str
    jobs: int
    rounds: int
    load: str
    levels: dict[int, Level] = field(default_factory=dict)

    def median(self, concurrency: int, side: str) -> float:
        return statistics.median(self.levels[concurrency].rates[side])

    def cpu_ms(self, concurrency: int, side: str) -> float:
        return statistics.median(self.levels[concurrency].cpu_ms[side])

    def ratio(self, concurrency: int) -> float:
        return self.median(concurrency, "imagesvc") / self.median(concurrency, "bare")


@dataclass(frozen=True)
class Bench:
    """The scratch database and queues, the account whose images are deleted, and senders."""

    settings: Settings
    bare_settings: Settings
    services: Services
    caller: Caller
    bare_queue: JobQueue
    broker: redis.Redis
    logs: Path
    bare_sleep_ms: float = 0.0  # a diagnosis: the bare task waits this long (never the target's)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    # Terminated, still stop the workers and drop the scratch database.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    levels = [CONCURRENCY] if args.quick else sorted(args.concurrency)
    jobs, rounds = (100, 1) if args.quick else (args.jobs, args.rounds)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    results = Results(started, jobs, rounds, load)
    with ExitStack() as stack:
        bench = _bench(stack, args)
        if args.trace:
            pipeline_trace.run(bench.settings, _delete_jobs(bench, args.trace), args.profile)
            return 0
        for concurrency in levels:
            with _workers(bench, concurrency) as pids:
                _warm_up(bench, pids)
                results.levels[concurrency] = _alternate(bench, pids, jobs, rounds)
            _print_level(results, concurrency)
    if args.bare_sleep_ms:  # a diagnosis: no verdict, no docs
        _print_ratio(results, f"bare Celery tasks waiting {args.bare_sleep_ms:g} ms (no target)")
        return 0
    met = _print_ratio(results)
    if not args.quick:
        pipeline_report.write(results, Path(args.docs))
    return 0 if met or args.quick else 1


def _bench(stack: ExitStack, args: argparse.Namespace) -> Bench:
    url = stack.enter_context(_scratch_database(args.database_url, keep=False))
    upgrade(url)
    data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
    stamp = f"{int(time.time())}"
    settings = Settings(
        database_url=url,
        broker_url=args.redis_url,
        data_dir=data_dir,
        queue=f"bench-pipeline-{stamp}",
    )
    bare_settings = settings.model_copy(update={"queue": f"bench-bare-{stamp}"})
    services = stack.enter_context(services_for(settings))
    with services.database.transaction() as session:
        account_id = create_account(session, "pipeline bench").account_id
    logs = Path(args.logs) if args.logs else data_dir
    logs.mkdir(parents=True, exist_ok=True)
    bare_app = bare_celery.create_app(bare_settings)
    stack.callback(bare_app.close)
    broker = redis.Redis.from_url(args.redis_url)
    stack.callback(broker.close)
    stack.callback(_forget_queues, broker, settings, bare_settings)
    return Bench(
        settings,
        bare_settings,
        services,
        Caller(account_id, ZONE),
        JobQueue(bare_app, bare_settings.queue),
        broker,
        logs,
        args.bare_sleep_ms,
    )


@contextmanager
def _workers(bench: Bench, concurrency: int) -> Iterator[dict[str, int]]:
    """Both workers, started side by side with the same concurrency, stopped on exit;
    yields their main processes' ids by side."""
    python = Path(sys.executable)
    imagesvc = [str(python), "-m", "bench.pipeline_worker", f"--concurrency={concurrency}"]
    bare = [str(python), "-m", "bench.bare_celery", f"--concurrency={concurrency}"]
    bare += [f"--sleep-ms={bench.bare_sleep_ms}"] if bench.bare_sleep_ms else []
    pids: dict[str, int] = {}
    with ExitStack() as stack:
        for name, command, settings in (
            ("imagesvc", imagesvc, bench.settings),
            ("bare", bare, bench.bare_settings),
        ):
            log = bench.logs / f"{name}-worker-{concurrency}.log"
            pids[name] = stack.enter_context(_process(command, settings, log))
        yield pids


@contextmanager
def _process(command: list[str], settings: Settings, log: Path) -> Iterator[int]:
    env = {**_inherited(), **_environment(settings)}
    with log.open("w") as output:
        process = subprocess.Popen(
            command, env=env, stdout=output, stderr=output, cwd=Path(__file__).parent.parent
        )
    try:
        yield process.pid
    finally:
        process.terminate()  # Celery's warm shutdown: it finishes what it runs
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _inherited() -> dict[str, str]:
    """The environment without any IMAGESVC_ setting: the bench's settings are the workers'."""
    return {key: value for key, value in os.environ.items() if not key.startswith("IMAGESVC_")}


def _warm_up(bench: Bench, pids: dict[str, int]) -> None:
    """A few jobs and tasks through each worker: both are up and their processes warm."""
    _run_imagesvc(bench, 20, _meter(bench, pids, "imagesvc"))
    _run_bare(bench, 20, _meter(bench, pids, "bare"))


def _alternate(bench: Bench, pids: dict[str, int], jobs: int, rounds: int) -> Level:
    runs: dict[str, Callable[[Bench, int, CpuMeter], float]] = {
        "bare": _run_bare,
        "imagesvc": _run_imagesvc,
    }
    level = Level({side: [] for side in SIDES}, {side: [] for side in SIDES})
    for round_number in range(rounds):
        order = SIDES if round_number % 2 == 0 else SIDES[::-1]
        for side in order:
            meter = _meter(bench, pids, side)
            level.rates[side].append(runs[side](bench, jobs, meter))
            level.cpu_ms[side].append(meter.stop() * 1000 / jobs)
    return level


def _meter(bench: Bench, pids: dict[str, int], side: str) -> CpuMeter:
    """The CPU of a side's worker processes, and for imagesvc of its database's backends."""
    if side == "bare":
        return CpuMeter(lambda: process_tree(pids[side]))
    return CpuMeter(lambda: process_tree(pids[side]) + _backends(bench))


def _backends(bench: Bench) -> list[int]:
    """The PostgreSQL server processes of the bench's database (its polling's included)."""
    stmt = text("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
    with bench.services.database.reading() as session:
        return list(session.scalars(stmt))


def _run_imagesvc(bench: Bench, count: int, meter: CpuMeter) -> float:
    """Delete jobs per second, from the first send to the last job settled and the last
    message acknowledged (a message's statement may settle other jobs than its own: the
    jobs alone would say nothing of the messages still queued)."""
    job_ids = _delete_jobs(bench, count)
    meter.start()
    started = time.perf_counter()
    for job_id in job_ids:
        bench.services.job_queue.send(job_id)
    _wait_until(lambda: _all_settled(bench), f"{count} delete jobs")
    _wait_until(lambda: _drained(bench, bench.settings), f"{count} delete jobs' messages")
    seconds = time.perf_counter() - started
    _require_successful(bench, job_ids)
    return count / seconds


def _run_bare(bench: Bench, count: int, meter: CpuMeter) -> float:
    """No-op tasks per second, from the first send to the last one acknowledged."""
    meter.start()
    started = time.perf_counter()
    for number in range(count):
        bench.bare_queue.send(f"j-bare{number:08d}")
    _wait_until(lambda: _drained(bench, bench.bare_settings), f"{count} bare tasks")
    return count / (time.perf_counter() - started)


def _delete_jobs(bench: Bench, count: int) -> list[str]:
    """``count`` available images made in one statement, and a committed delete job for each,
    recorded as the API records it."""
    prefix = f"img-{time.time_ns() % 10**12:012x}"[:16]
    values = {"prefix": prefix, "zone": ZONE, "owner": bench.caller.account_id, "count": count}
    with bench.services.database.transaction() as session:
        session.execute(text(_IMAGES), values)
    image_ids = [prefix + format(i, "08x") for i in range(1, count + 1)]
    with bench.services.database.transaction() as session:
        return [delete_images(session, bench.caller, [image]).job_id for image in image_ids]


def _all_settled(bench: Bench) -> bool:
    """No job of the bench's (the database is its own) is still pending or working. One
    index entry answers it: counting them all, a thousand at first, every 10 ms, cost
    PostgreSQL more CPU than the jobs' own statements on a two-core machine."""
    stmt = select(Job.job_id).where(unsettled(JobStatus.PENDING, JobStatus.WORKING)).limit(1)
    with bench.services.database.reading() as session:
        return session.scalar(stmt) is None


def _require_successful(bench: Bench, job_ids: list[str]) -> None:
    stmt = select(Job.status, func.count()).where(Job.job_id.in_(job_ids)).group_by(Job.status)
    with bench.services.database.reading() as session:
        statuses = dict(session.execute(stmt).tuples().all())
    if statuses != {JobStatus.SUCCESSFUL.value: len(job_ids)}:
        raise RuntimeError(f"delete jobs did not all succeed: {statuses}")


def _drained(bench: Bench, settings: Settings) -> bool:
    """The broker holds none of a side's messages, queued or unacknowledged (both workers
    keep the latter under keys named after their queue). A message moves from its queue to
    the unacknowledged ones in two steps: seeing both empty twice in a row rules out
    catching one in between."""
    return _holds_none(bench, settings) and _holds_none(bench, settings)


def _holds_none(bench: Bench, settings: Settings) -> bool:
    queue = settings.queue
    own = host_queue(queue, settings.compute_host)
    queued = bench.broker.llen(queue) + bench.broker.llen(own)
    return queued == 0 and bench.broker.hlen(bare_celery.unacked_key(queue)) == 0


def _wait_until(done: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not done():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not finished after {RUN_TIMEOUT_S:.0f} s")
        time.sleep(POLL_S)


def _forget_queues(broker: redis.Redis, *every: Settings) -> None:
    """Remove the bench's queues and bindings from Redis (they are empty by now)."""
    for settings in every:
        queue = settings.queue
        names = [queue, host_queue(queue, settings.compute_host), *bare_celery.unacked_keys(queue)]
        broker.delete(*names)
        for key in broker.scan_iter(match=f"_kombu.binding.{queue}*"):
            broker.delete(key)


def _print_level(results: Results, concurrency: int) -> None:
    for side in SIDES:
        runs = ", ".join(f"{rate:.0f}" for rate in results.levels[concurrency].rates[side])
        median, cpu = results.median(concurrency, side), results.cpu_ms(concurrency, side)
        print(
            f"concurrency {concurrency} {side:>8}: {median:7.1f}/s, {cpu:5.2f} ms CPU each"
            f" (runs: {runs})",
            flush=True,
        )


def _print_ratio(
    results: Results, against: str = f"bare Celery no-op tasks (target >= {TARGET})"
) -> bool:
    """imagesvc over bare Celery at each concurrency; True if the default one meets 0.5."""
    print(f"\ndelete jobs end to end / {against}")
    for concurrency in sorted(results.levels):
        ratio = results.ratio(concurrency)
        print(f"  concurrency {concurrency}: {ratio:.2f}  {'ok' if ratio >= TARGET else 'MISSED'}")
    default = CONCURRENCY in results.levels and results.ratio(CONCURRENCY)
    return bool(default and default >= TARGET)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser("python -m bench pipeline", formatter_class=formatter)
    parser.description = __doc__
    parser.add_argument("--quick", action="store_true", help="100 jobs, once, concurrency 2")
    for flag, variable, default, meaning in (
        ("--database-url", "DATABASE_URL", DATABASE_URL, "PostgreSQL; its user creates databases"),
        ("--redis-url", "REDIS_URL", REDIS_URL, "the Redis both workers use"),
    ):
        value = os.environ.get(f"IMAGESVC_BENCH_{variable}", default)
        parser.add_argument(flag, default=value, help=f"{meaning} (IMAGESVC_BENCH_{variable})")
    parser.add_argument("--jobs", type=int, default=1000, help="jobs (and tasks) per run")
    parser.add_argument("--rounds", type=int, default=3, help="alternations bare/imagesvc")
    parser.add_argument(
        "--concurrency", type=int, nargs="+", default=list(SWEEP), help="worker concurrencies"
    )
    parser.add_argument("--docs", default="docs", help="where benchmarks.md and img/ live")
    parser.add_argument(
        "--trace", type=int, default=0, metavar="N", help="count N jobs' statements in-process"
    )
    parser.add_argument("--profile", help="with --trace: write a cProfile of the N jobs here")
    parser.add_argument("--logs", help="keep the workers' logs in this directory")
    parser.add_argument(
        "--bare-sleep-ms",
        type=float,
        default=0.0,
        help="diagnosis: bare Celery's task waits this long (docs untouched, no verdict)",
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
