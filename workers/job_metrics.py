"""What the workers count: jobs started and finished by action, their durations, bytes copied.

The metrics are registered nowhere: a worker writes them to the multiprocess
directory (:mod:`imagesvc.metrics`) and the API's ``GET /metrics`` reads them
from there. Their values live in whichever process runs the job, so the
objects can be module constants: each process has its own files.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# A capture takes seconds to hours; a delete or recover well under a second.
DURATION_BUCKETS = (0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600, float("inf"))

JOBS_STARTED = Counter(
    "imagesvc_jobs_started_total", "Job runs started by a worker", ["action"], registry=None
)
JOBS_FINISHED = Counter(
    "imagesvc_jobs_finished_total",
    "Job runs that settled their job, by the job's final status",
    ["action", "status"],
    registry=None,
)
JOBS_FAILED = Counter(
    "imagesvc_jobs_failed_total",
    "Jobs that failed (status failed), by error code",
    ["action", "code"],
    registry=None,
)
JOBS_RUNNING = Gauge(
    "imagesvc_jobs_running",
    "Jobs being run by live worker processes",
    ["action"],
    registry=None,
    multiprocess_mode="livesum",
)
JOB_DURATION = Histogram(
    "imagesvc_job_duration_seconds",
    "Seconds from a run claiming its job to settling it",
    ["action", "status"],
    buckets=DURATION_BUCKETS,
    registry=None,
)
# Every metric has labels: a labelled child picks its value store (file or memory) when it
# is first used, not at import, so importing this before metrics go to files is harmless.
BYTES_COPIED = Counter(
    "imagesvc_bytes_copied_total",
    "Bytes of image files written by captures",
    ["action"],
    registry=None,
)


def job_started(action: str) -> None:
    JOBS_STARTED.labels(action).inc()
    JOBS_RUNNING.labels(action).inc()


def job_ran_at_once(action: str) -> None:
    """A run claimed, ran and settled its job in one transaction: it was never seen running."""
    JOBS_STARTED.labels(action).inc()


def job_stopped(action: str) -> None:
    """The run ended, settled or not."""
    JOBS_RUNNING.labels(action).dec()


def job_finished(action: str, status: str, seconds: float, copied: int) -> None:
    JOBS_FINISHED.labels(action, status).inc()
    JOB_DURATION.labels(action, status).observe(seconds)
    if copied:
        BYTES_COPIED.labels(action).inc(copied)


def job_failed(action: str, code: str) -> None:
    """A job failed, settled by its run or given up for lost by the sweep."""
    JOBS_FAILED.labels(action, code).inc()


def job_given_up(action: str) -> None:
    """The sweep failed a job whose runs were all lost (``WorkerLost``)."""
    JOBS_FINISHED.labels(action, "failed").inc()
    job_failed(action, "WorkerLost")
