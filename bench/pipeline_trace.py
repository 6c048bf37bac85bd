"""What one job costs the database: ``python -m bench pipeline --trace N [--profile FILE]``.

Runs the messages of N committed delete jobs through ``workers.job_runner.execute_job``
in this process, one after the other, as a worker's pool process runs them (metrics to
files, log lines formatted, to /dev/null), and counts per message, from SQLAlchemy's
events: the statements by verb, the ``BEGIN``/``COMMIT``/``ROLLBACK`` of writing
transactions (psycopg sends each as a round trip of its own), connection checkouts,
liveness pings (``SELECT 1`` before use) and the threads started. On PostgreSQL a
message's statement also settles up to ``GROUP_COMMIT_JOBS`` other pending jobs, so most
later messages find theirs settled (one read). PostgreSQL's own count of the transactions
it committed in the scratch database (``pg_stat_database``)
checks the first. With ``--profile`` the run is profiled (cProfile) and the functions
that took most time are printed.
"""

from __future__ import annotations

import cProfile
import os
import pstats
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event, text

from bench.pipeline_cpu import CpuMeter
from imagesvc.bootstrap import Services
from imagesvc.logs import configure_logging
from imagesvc.metrics import write_metrics_to_dir
from imagesvc.settings import Settings
from workers.job_runner import execute_job
from workers.tasks import worker_services

# PostgreSQL writes a backend's statistics within a second of it going idle.
STATS_DELAY_S = 2.0


def run(settings: Settings, job_ids: list[str], profile: str | None) -> None:
    """Run the jobs with a worker process's parts, as ``imagesvc worker`` builds them."""
    write_metrics_to_dir(settings)
    services = worker_services(settings)
    try:
        with open(os.devnull, "w") as devnull:
            configure_logging(settings, stream=devnull)
            counts, server_transactions = _count(services, job_ids, profile)
    finally:
        services.close()
    jobs = len(job_ids)  # the one that warmed up is out of the list
    # With a group commit most messages find their job settled by another's statement:
    # the figures are per message, and its cost is spread over the jobs one statement settles.
    print(f"per delete job's message, over {jobs} messages run by execute_job in one process:")
    for name, count in sorted(counts.items()):
        print(f"  {name:>24}: {count / jobs:5.2f}")
    print(f"  {'server transactions':>24}: {server_transactions / jobs:5.2f} (pg_stat_database)")
    if profile:
        stats = pstats.Stats(profile)
        stats.sort_stats("tottime").print_stats(25)
        stats.sort_stats("cumulative").print_stats(40)


def _server_processes(engine: Engine) -> list[int]:
    """The PostgreSQL processes serving the pool's connections (not the observer's)."""
    with engine.connect() as connection:
        return [int(connection.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())]


def _count(services: Services, job_ids: list[str], profile: str | None) -> tuple[Counter[str], int]:
    counts: Counter[str] = Counter()
    engine = services.database.engine
    execute_job(services, job_ids.pop())  # a connection in the pool, and its server process
    serving = _server_processes(engine)
    backend = CpuMeter(lambda: serving)
    with _server_transactions(engine) as server, _counting(engine, counts):
        profiler = cProfile.Profile(time.process_time)  # CPU: waits on the server are not ours
        if profile:
            profiler.enable()
        backend.start()
        cpu, wall = time.process_time(), time.perf_counter()
        for job_id in job_ids:
            execute_job(services, job_id)
        counts["wall ms, one after another"] = round((time.perf_counter() - wall) * 1000)
        counts["CPU ms, this process"] = round((time.process_time() - cpu) * 1000)
        counts["CPU ms, PostgreSQL"] = round(backend.stop() * 1000)
        profiler.disable()
    if profile:
        profiler.dump_stats(profile)
    return counts, server[0]


@contextmanager
def _counting(engine: Engine, counts: Counter[str]) -> Iterator[None]:
    """Count what ``engine`` sends, and the threads started, while the block runs."""

    def statement(conn: Any, cursor: Any, sql: str, *args: Any) -> None:
        counts[f"statement {sql.split(None, 1)[0].upper()}"] += 1

    def begin(conn: Any) -> None:
        if conn.get_execution_options().get("isolation_level") != "AUTOCOMMIT":
            counts["BEGIN"] += 1

    def commit(conn: Any) -> None:
        if conn.get_execution_options().get("isolation_level") != "AUTOCOMMIT":
            counts["COMMIT"] += 1

    def rollback(conn: Any) -> None:
        counts["ROLLBACK"] += 1

    def checkout(*args: Any) -> None:
        counts["connection checkouts"] += 1

    listeners: list[tuple[Any, str, Callable[..., None]]] = [
        (engine, "before_cursor_execute", statement),
        (engine, "begin", begin),
        (engine, "commit", commit),
        (engine, "rollback", rollback),
        (engine.pool, "checkout", checkout),
    ]
    for target, name, listener in listeners:
        event.listen(target, name, listener)
    dialect, thread_start = engine.dialect, threading.Thread.start
    ping = dialect.do_ping

    def counted_ping(dbapi_connection: Any) -> bool:
        counts["pings (SELECT 1)"] += 1
        return bool(ping(dbapi_connection))

    def counted_start(self: threading.Thread) -> None:
        counts["threads started"] += 1
        thread_start(self)

    dialect.do_ping = counted_ping  # type: ignore[method-assign]
    threading.Thread.start = counted_start  # type: ignore[method-assign]
    try:
        yield
    finally:
        threading.Thread.start = thread_start  # type: ignore[method-assign]
        dialect.do_ping = ping  # type: ignore[method-assign]
        for target, name, listener in listeners:
            event.remove(target, name, listener)


@contextmanager
def _server_transactions(engine: Engine) -> Iterator[list[int]]:
    """Yields a list whose one item is, after the block, the transactions PostgreSQL
    committed or rolled back in this database meanwhile (this count's own excepted)."""
    observer = create_engine(engine.url, isolation_level="AUTOCOMMIT")
    query = text(
        "SELECT xact_commit + xact_rollback FROM pg_stat_database"
        " WHERE datname = current_database()"
    )
    result = [0]
    with observer.connect() as connection:
        time.sleep(STATS_DELAY_S)
        before = int(connection.execute(query).scalar_one())
        yield result
        time.sleep(STATS_DELAY_S)
        after = int(connection.execute(query).scalar_one())
    observer.dispose()
    result[0] = after - before - 1  # the first count was a transaction too
    engine.pool.dispose()
