"""Running a job: claim it, do the work, record the outcome in one transaction.

Every step is a compare-and-set on the job and image rows, fenced by the
run's attempt number: a duplicate delivery does nothing, a run given up for
lost cannot settle the job another run now owns, and a job is never
finished twice. Each run writes files (and store objects) named by its
attempt, so two runs never touch each other's copies.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session

from imagesvc.bootstrap import Services
from models.db import IDLE_PING_S
from models.images import size_in_gb
from models.job_failures import FailedRun, fail_and_give_back
from models.jobs import (
    BATCH_MOVES,
    ClaimedRun,
    SettledRun,
    claim_and_settle_batch,
    claim_job,
    hold_job,
    lock_pending_job,
    move_job,
    settle_job,
    settle_pending_job,
)
from models.states import ImageAction, JobAction, JobPhase, JobStatus
from models.tables import Image, Job
from models.transitions import move_images
from workers import job_metrics
from workers.disk import (
    CopyPhase,
    DiskError,
    DiskFormat,
    StoredDisk,
    detect_format,
    partial_dir,
    store_disk,
)
from workers.heartbeat import Heartbeat, Superseded
from workers.held_connection import HeldConnection
from workers.image_store import ImageStore, StoreError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClaimedJob:
    job_id: str
    action: JobAction
    zone: str
    resource_ids: list[str]
    attempt: int
    owner: str = ""
    request_id: str | None = None


class JobFailure(Exception):
    """An expected failure: the job fails with this code and message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def execute_job(services: Services, job_id: str) -> None:
    """Run one job if it is still pending; a no-op for any other status.

    A job with no disk work (delete, recover) is claimed, run and settled in one
    transaction: a crash or a lost database anywhere in it leaves the job pending,
    to be sent again by the sweep, and nothing half done; on PostgreSQL that transaction
    also settles other pending deletes and recovers (a group commit), each logged and
    counted here as its own run. A job with disk work is
    claimed in a transaction of its own, then run under a heartbeat. Either way one
    line is logged when the run settles the job, with the outcome; a run with disk
    work also logs one when it starts.
    """
    started = time.monotonic()
    if _SETTLED_HERE.take(job_id):  # settled by this process's group commit: a settled job
        # stays settled, so the database is not asked; the job's own line is logged already.
        log.debug(
            "job %s was settled by this process; nothing to do", job_id, extra={"job_id": job_id}
        )
        return
    try:
        claimed = _with_reconnect(lambda: _claim_and_settle(services, job_id))
    except Exception as exc:
        if isinstance(exc, DBAPIError) and _connection_lost(exc):
            raise  # the database stayed away: the job stays pending, and is sent again
        # Rolled back whole. Step by step, the run fails as it always did: an error
        # fails the job (InternalError); a database error leaves it working, and the
        # sweep runs it again until it has used its attempts (WorkerLost).
        fields = {"job_id": job_id}
        log.exception("job not settled at once; running it step by step", extra=fields)
        claimed = _with_reconnect(lambda: _claim(services, job_id))
    if not claimed:
        _nothing_to_do(services, job_id)
        return
    seconds = time.monotonic() - started
    for job, outcome in claimed:
        if outcome is None:  # disk work: claimed alone, run under its heartbeat
            _run_claimed(services, job)
            continue
        job_metrics.job_ran_at_once(job.action)
        _report(job, outcome, seconds)
        if job.job_id != job_id:  # its own message is still to come
            _SETTLED_HERE.add(job.job_id)


def _nothing_to_do(services: Services, job_id: str) -> None:
    host = services.settings.compute_host
    fields = {"job_id": job_id, "host": host}
    log.info("job %s is not pending for host %s; nothing to do", job_id, host, extra=fields)


class RecentJobs:
    """The last ``size`` job ids this process settled for another job's message (a group
    commit): a settled job never moves again, so its own message needs no statement."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._ids: OrderedDict[str, None] = OrderedDict()

    def add(self, job_id: str) -> None:
        self._ids[job_id] = None
        if len(self._ids) > self._size:
            self._ids.popitem(last=False)

    def take(self, job_id: str) -> bool:
        """Whether the job is one of them; forgotten then (its one message has come)."""
        if job_id not in self._ids:
            return False
        del self._ids[job_id]
        return True


_SETTLED_HERE = RecentJobs(4096)


def _run_claimed(services: Services, job: ClaimedJob) -> None:
    """Run a job whose claim is committed, under its heartbeat, and report how it ended."""
    started = time.monotonic()
    log.info("job started", extra=_job_fields(job) | {"attempt": job.attempt})
    job_metrics.job_started(job.action)
    try:
        settled = _run(services, job)
    finally:
        job_metrics.job_stopped(job.action)
    if settled:
        _report_outcome(services, job, time.monotonic() - started)


def _run(services: Services, job: ClaimedJob) -> bool:
    """Do the job's work; False if another run took the job over meanwhile."""
    interval = services.settings.heartbeat_interval
    try:
        with Heartbeat(services.database, job.job_id, job.attempt, interval) as heartbeat:
            _HANDLERS[job.action](services, job, heartbeat)
    except Superseded:
        log.warning("job run stopped: another run owns the job", extra=_run_fields(job))
        return False
    except DBAPIError:
        # The database went away mid-job: the job stays working, its heartbeat
        # stops, and the sweep gives it to another run once the database is back.
        log.exception("job run lost its database", extra=_run_fields(job))
        raise
    except Exception:
        log.exception("job run failed unexpectedly", extra=_run_fields(job))
        abandon(services, job, "InternalError", "internal error; see the worker log")
    return True


# How long a job waits for a lost database connection to come back, try after try.
RECONNECT_DELAYS_S = (0.1, 0.5, 2.0)

# The jobs one message's transaction claimed (a job with disk work: alone, its outcome None)
# or settled (a delete or recover: on PostgreSQL, with others of the group commit).
Claimed = list[tuple["ClaimedJob", "_Outcome | None"]]


def _with_reconnect(attempt: Callable[[], Claimed]) -> Claimed:
    """``attempt`` (one transaction), tried again while the database connection is lost.

    A worker's connections are not checked before every use: the first statement
    after a restart of PostgreSQL fails, its pool then drops every old connection, and
    the transaction, rolled back whole, is simply run again on a new one.
    """
    for delay in RECONNECT_DELAYS_S:
        try:
            return attempt()
        except DBAPIError as exc:
            if not _connection_lost(exc):
                raise
            log.warning("database connection lost (%s); trying again in %.1f s", exc, delay)
        time.sleep(delay)
    return attempt()


def _connection_lost(exc: DBAPIError) -> bool:
    """The connection broke or could not be made (or the server gave up on the transaction,
    a deadlock say): the same transaction may simply be run again."""
    return exc.connection_invalidated or isinstance(exc, OperationalError)


def _claim_and_settle(services: Services, job_id: str) -> Claimed:
    """Hold the pending job; one with no disk work is claimed and settled in the same
    transaction, its row written once (pending to its outcome); any other is claimed.

    On PostgreSQL a delete or recover is first tried as one statement (one round trip),
    which also settles up to ``GROUP_COMMIT_JOBS`` other pending deletes and recovers
    (a group commit: each is reported here as its own run); a message whose job is no
    longer pending costs that one statement's read, and a job it does not take that is
    still pending (a capture) takes the general path.
    """
    host = services.settings.compute_host
    engine = services.database.engine
    if engine.dialect.name == "postgresql":
        worker = _worker_name(host, os.getpid())
        batch = _held_connection(engine).run(
            lambda connection: claim_and_settle_batch(connection, job_id, worker, host)
        )
        if not batch.general_path:  # settled here, or nothing to do (read, never written)
            return [(_claimed_job(one.run), _outcome_of(one)) for one in batch.settled]
    with services.database.transaction() as session:
        run = lock_pending_job(session, job_id, host)
        if run is None:
            return []
        if JobAction(run.action) not in BATCH_MOVES:  # disk work: claim, commit, then run
            return _claim_held(session, services, job_id)
        job = _claimed_job(run)
        worker = _worker_name(host, os.getpid())
        return [(job, _settle_from_pending(session, job, worker))]


def _outcome_of(settled: SettledRun) -> _Outcome:
    return _Outcome(settled.status, settled.error_code, settled.error_message, 0)


_HELD = threading.local()


def _held_connection(engine: Engine) -> HeldConnection:
    """This thread's own autocommit connection of ``engine`` for one-statement settles: a
    prefork pool process has one thread, but a connection used by two threads at once
    (a threads pool, or two deliveries run side by side) corrupts the driver's state."""
    held: dict[Engine, HeldConnection] = _HELD.__dict__.setdefault("by_engine", {})
    if engine not in held:
        held[engine] = HeldConnection(engine, IDLE_PING_S)
    return held[engine]


def _claim(services: Services, job_id: str) -> Claimed:
    """Claim the job in a transaction of its own: its run comes after the commit."""
    with services.database.transaction() as session:
        return _claim_held(session, services, job_id)


def _claim_held(session: Session, services: Services, job_id: str) -> Claimed:
    """Take the job if it is pending and runs on this worker's compute host (or on any)."""
    host = services.settings.compute_host
    run = claim_job(session, job_id, _worker_name(host, os.getpid()), host)
    return [] if run is None else [(_claimed_job(run), None)]


def _claimed_job(run: ClaimedRun) -> ClaimedJob:
    return ClaimedJob(
        run.job_id,
        JobAction(run.action),
        run.zone,
        run.resource_ids,
        run.attempts,
        owner=run.owner,
        request_id=run.request_id,
    )


@functools.cache
def _worker_name(host: str, pid: int) -> str:
    """How the job row names the process that runs it (a pool process: named once)."""
    return f"{host}/{socket.gethostname()}:{pid}"


# Jobs whose resource ids are [the image, its source] and that copy a disk into the store.
COPYING_ACTIONS = frozenset({JobAction.CAPTURE_INSTANCE, JobAction.IMPORT_IMAGE})


def _job_fields(job: ClaimedJob) -> dict[str, object]:
    """What a job's log lines carry: enough to find it, its owner and its images."""
    copies = job.action in COPYING_ACTIONS
    fields: dict[str, object] = {
        "job_id": job.job_id,
        "action": job.action.value,
        "owner": job.owner,
        "image_ids": job.resource_ids[:1] if copies else job.resource_ids,
    }
    if job.action is JobAction.CAPTURE_INSTANCE:
        fields["instance_id"] = job.resource_ids[1]
    elif job.action is JobAction.IMPORT_IMAGE:
        fields["disk"] = job.resource_ids[1]
    if job.request_id:
        fields["request_id"] = job.request_id
    return fields


def _run_fields(job: ClaimedJob) -> dict[str, object]:
    return {"job_id": job.job_id, "action": job.action.value, "attempt": job.attempt}


@dataclass(frozen=True)
class _Outcome:
    status: JobStatus
    error_code: str | None
    error_message: str | None
    copied: int


def _report_outcome(services: Services, job: ClaimedJob, seconds: float) -> None:
    """One line, and the metrics, for how this run left its job (read back from the row)."""
    outcome = _outcome(services, job)
    if outcome is None:
        log.warning("job run superseded: another run settles the job", extra=_run_fields(job))
        return
    _report(job, outcome, seconds)


def _report(job: ClaimedJob, outcome: _Outcome, seconds: float) -> None:
    """The one line, and the metrics, of a job this run settled."""
    job_metrics.job_finished(job.action, outcome.status, seconds, outcome.copied)
    fields = _job_fields(job) | {
        "status": outcome.status.value,
        "bytes": outcome.copied,
        "duration_s": round(seconds, 3),
        "attempt": job.attempt,
    }
    if outcome.status is JobStatus.SUCCESSFUL:
        log.info("job finished", extra=fields)
        return
    fields |= {"error_code": outcome.error_code, "error": outcome.error_message}
    if outcome.status is JobStatus.FAILED:
        job_metrics.job_failed(job.action, outcome.error_code or "")
    internal = outcome.error_code == "InternalError"
    log.log(logging.ERROR if internal else logging.WARNING, "job failed", extra=fields)


def _outcome(services: Services, job: ClaimedJob) -> _Outcome | None:
    """The job's final status and the bytes its capture stored; None if this run did not
    settle it (a later run owns it, or it is still working)."""
    with services.database.reading() as session:
        row = session.get(Job, job.job_id)
        if row is None or row.attempts != job.attempt or not JobStatus(row.status).is_terminal:
            return None
        copied = 0
        if job.action in COPYING_ACTIONS and row.status == JobStatus.SUCCESSFUL:
            image = session.get(Image, job.resource_ids[0])
            copied = image.byte_size if image is not None else 0
        return _Outcome(JobStatus(row.status), row.error_code, row.error_message, copied)


def capture_name(image_id: str, attempt: int, disk_format: DiskFormat) -> str:
    """The store object one run of a capture writes: named by the image and the run."""
    return f"{image_id}.{attempt}.{disk_format.value}"


def run_capture(services: Services, job: ClaimedJob, heartbeat: Heartbeat) -> None:
    """Copy the source disk into the store and make the image available (capture or import).

    The copy is staged locally, then published; the image is available only once the
    store holds the object durably.
    """
    image_id = job.resource_ids[0]
    heartbeat.phase(JobPhase.COPYING)
    _remove_earlier_runs(services, job, image_id)
    progress = _RunProgress(heartbeat, services.store.uploads)
    try:
        stored = _copy_instance_disk(services, job, progress, image_id)
        _publish(services.store, stored, progress)
    except JobFailure as failure:
        abandon(services, job, failure.code, failure.message)
        return
    heartbeat.phase(JobPhase.RECORDING, at_once=False)
    _finish_capture(services, job, image_id, stored)


@dataclass(frozen=True)
class _RunProgress:
    """A capture's progress: the copy, then (to a store that uploads) the upload, each half."""

    heartbeat: Heartbeat
    uploads: bool

    def copied(self, done: int, total: int) -> None:
        self.heartbeat.progress(done, total * 2 if self.uploads else total)

    def uploaded(self, sent: int, size: int) -> None:
        self.heartbeat.progress(size + sent, size * 2)

    def copy_phase(self, phase: CopyPhase) -> None:
        self.heartbeat.phase(_PHASES[phase])


@dataclass(frozen=True)
class SourceDisk:
    """The disk a capture or an import copies, and how to name it in errors."""

    path: Path
    disk_format: DiskFormat
    label: str


def _source_disk(services: Services, job: ClaimedJob) -> SourceDisk:
    """A capture reads its instance's disk; an import, the file the operator named."""
    source = job.resource_ids[1]
    if job.action is JobAction.IMPORT_IMAGE:
        try:
            return SourceDisk(Path(source), detect_format(Path(source)), f"disk {source}")
        except DiskError as exc:
            raise JobFailure(exc.code, f"import of disk {source} failed: {exc}") from exc
    instance = services.inventory.find(job.zone, source)
    if instance is None:
        raise JobFailure("InstanceNotFound", f"instance {source} no longer exists")
    disk_format = DiskFormat(instance.disk_format)
    return SourceDisk(Path(instance.disk_path), disk_format, f"instance {source}")


def _remove_earlier_runs(services: Services, job: ClaimedJob, image_id: str) -> None:
    """A retry first removes what lost runs of this job left (staged copies, store objects):
    they can never be used. Captures run on their instance's host, so the staged ones are here.
    """
    store = services.store
    staging = store.staging_dir()
    for attempt in range(1, job.attempt):
        (partial_dir(staging / image_id) / f"{job.job_id}.{attempt}.part").unlink(missing_ok=True)
        for disk_format in DiskFormat:
            name = capture_name(image_id, attempt, disk_format)
            (staging / name).unlink(missing_ok=True)
            store.remove(name)


def stored_format(store: ImageStore, source_format: DiskFormat) -> DiskFormat:
    """The format a capture stores: qcow2 in a store it uploads to (only the data travels),
    the source's own format in a directory (a sparse raw file costs only its data there)."""
    return DiskFormat.QCOW2 if store.uploads else source_format


def _copy_instance_disk(
    services: Services, job: ClaimedJob, progress: _RunProgress, image_id: str
) -> StoredDisk:
    """Copy the source disk into the store's staging directory, durably and checksummed."""
    source = _source_disk(services, job)
    output_format = stored_format(services.store, source.disk_format)
    staged = services.store.staging_dir() / capture_name(image_id, job.attempt, output_format)
    try:
        return store_disk(
            source.path,
            source.disk_format,
            staged,
            partial_name=f"{job.job_id}.{job.attempt}",
            on_progress=progress.copied,
            on_phase=progress.copy_phase,
            output_format=output_format,
        )
    except DiskError as exc:
        raise JobFailure(exc.code, f"capture of {source.label} failed: {exc}") from exc


def _publish(store: ImageStore, stored: StoredDisk, progress: _RunProgress) -> None:
    """Make the staged copy the store's object of the same name; the staged file goes."""
    if store.uploads:
        progress.heartbeat.phase(JobPhase.UPLOADING)
    size = stored.byte_size
    try:
        store.publish(stored.path, stored.path.name, lambda sent: progress.uploaded(sent, size))
    except StoreError as exc:
        log.warning("%s", exc)
        raise JobFailure("StoreUnavailable", "the image store is unavailable; try again") from exc
    finally:
        stored.path.unlink(missing_ok=True)  # published (moved away) or never to be used


_PHASES = {CopyPhase.COPYING: JobPhase.COPYING, CopyPhase.SYNCING: JobPhase.SYNCING}


class _CaptureOvertaken(Exception):
    """The image or job moved on while the disk was being copied."""


def _finish_capture(services: Services, job: ClaimedJob, image_id: str, stored: StoredDisk) -> None:
    try:
        with services.database.transaction() as session:
            done = move_job(
                session, job.job_id, JobStatus.SUCCESSFUL, attempt=job.attempt, progress=100
            )
            available = done and move_images(
                session,
                [image_id],
                ImageAction.FINISH_CAPTURE,
                size=size_in_gb(stored.virtual_size),
                virtual_size=stored.virtual_size,
                byte_size=stored.byte_size,
                disk_format=stored.disk_format.value,
                checksum=stored.checksum,
                checksum_algorithm=stored.checksum_algorithm,
                file_name=stored.path.name,
            )
            if not available:
                raise _CaptureOvertaken
    except _CaptureOvertaken:
        # Another run or action settled this job or image meanwhile: this copy is nobody's.
        # (If the commit itself failed, whether it happened is unknown: the object stays, and
        # the orphan sweep removes it later if no image row names it.)
        services.store.remove(stored.path.name)
        log.warning("capture job %s attempt %d was superseded", job.job_id, job.attempt)


def run_batch(services: Services, job: ClaimedJob, heartbeat: Heartbeat) -> None:
    """Settle a delete or recover whose claim was committed, in its own transaction: the
    job first, fenced by the run, then its images (``models.jobs.BATCH_MOVES``: deleted
    images keep their files until they are ceased; recovered ones are no longer
    deprecated). A pending one is claimed and settled at once (:func:`_settle_from_pending`).

    A run given up for lost that wakes up finds the job no longer its own and
    changes nothing; its successor settles the job and the images.
    """
    with services.database.transaction() as session:
        if not hold_job(session, job.job_id, job.attempt):
            log.warning("job %s attempt %d was superseded", job.job_id, job.attempt)
            return
        outcome = _move_batch(session, job)
        _settled(job, settle_job(session, job.job_id, job.attempt, *_recorded(outcome)))


def _settle_from_pending(session: Session, job: ClaimedJob, worker: str) -> _Outcome:
    """Move the images, then the job from pending (held by this transaction) straight to
    its outcome: one write of the job's row counts the run and records how it ended."""
    outcome = _move_batch(session, job)
    recorded = settle_pending_job(session, job.job_id, job.attempt, worker, *_recorded(outcome))
    _settled(job, recorded)
    return outcome


def _move_batch(session: Session, job: ClaimedJob) -> _Outcome:
    """Move the images as ``BATCH_MOVES`` says for the job's action, in the caller's
    transaction, which holds the job's row for this run; the outcome that makes of the job.
    (On PostgreSQL a pending job's moves are one statement: ``claim_and_settle_batch``.)"""
    image_action, values = BATCH_MOVES[job.action]
    moved = move_images(session, job.resource_ids, image_action, **values)
    missed = len(job.resource_ids) - moved
    if missed == 0:
        return _Outcome(JobStatus.SUCCESSFUL, None, None, 0)
    message = f"{missed} image(s) changed meanwhile"
    return _Outcome(JobStatus.DONE_WITH_FAILURE, "ImagesChanged", message, 0)


def _recorded(outcome: _Outcome) -> tuple[JobStatus, str | None, str | None]:
    """What the job's row records of an outcome."""
    return outcome.status, outcome.error_code, outcome.error_message


def _settled(job: ClaimedJob, recorded: bool) -> None:
    if not recorded:  # the row is held for this run: only a broken invariant gets here
        raise RuntimeError(f"job {job.job_id} attempt {job.attempt} could not be settled")


def abandon(services: Services, job: ClaimedJob, code: str, message: str) -> None:
    """Fail the job and give its images back, if this run still owns the job."""
    failed = FailedRun(job.job_id, job.action, job.resource_ids, job.attempt, code, message)
    with services.database.transaction() as session:
        fail_and_give_back(session, failed)


Handler = Callable[[Services, ClaimedJob, Heartbeat], None]

_HANDLERS: dict[JobAction, Handler] = {
    JobAction.CAPTURE_INSTANCE: run_capture,
    JobAction.IMPORT_IMAGE: run_capture,
    JobAction.DELETE_IMAGES: run_batch,
    JobAction.RECOVER_IMAGES: run_batch,
}
