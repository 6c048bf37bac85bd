"""Any number of schedulers: each keeps its schedule in memory, and the sweeps run safely
side by side, so losing one scheduler loses nothing."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlalchemy import update

from imagesvc.bootstrap import Services
from models.accounts import create_account
from models.images import CaptureRequest, capture_instance
from models.instances import NewInstance, add_instance
from models.jobs import claim_job, take_jobs_to_resend
from models.quotas import Quota
from models.scoping import Caller
from models.sweep_lock import sweep_lock
from models.tables import Job, utcnow
from tests.chaos import ChaosEnv
from tests.support.disks import MiB, make_raw_disk
from tests.support.tenants import Tenant
from workers.system_images import inspect_disk

UNLIMITED = Quota(images=10**6, gb=10**6)


def lost_capture(env: ChaosEnv) -> str:
    """A capture whose worker claimed it and died long ago: only a sweep can rescue it."""
    disk = make_raw_disk(env.tmp / "disk.raw", size=16 * MiB, data=8 * MiB)
    disk_format, disk_size = inspect_disk(disk)
    caller = Caller(env.account_id, "ac1")
    with env.database.transaction() as session:
        new = NewInstance("ac1", env.account_id, str(disk), disk_format.value, disk_size)
        instance_id = add_instance(session, new).instance_id
    instance = env.services.inventory.find("ac1", instance_id)
    with env.database.transaction() as session:
        wanted = CaptureRequest(instance_id, instance, "lost")
        job_id = capture_instance(session, caller, wanted, UNLIMITED).job.job_id
    with env.database.transaction() as session:
        assert claim_job(session, job_id, "local/dead-worker:1", "local") is not None
        long_ago = utcnow() - timedelta(minutes=10)
        session.execute(update(Job).where(Job.job_id == job_id).values(heartbeat_at=long_ago))
    return job_id


def test_a_lost_job_is_rescued_after_one_of_two_schedulers_is_killed(
    chaos: ChaosEnv,
) -> None:
    env = chaos
    first, second = env.start("scheduler"), env.start("scheduler")
    for scheduler in (first, second):
        scheduler.wait_for_output("beat: Starting...")
    env.start_worker()
    env.kill(first)
    with env.database.transaction() as session:
        env.account_id = create_account(session, "schedulers").account_id

    job_id = lost_capture(env)

    env.wait_for_status(job_id, {"successful", "failed"})
    outcome = env.settle("scheduler-killed", [job_id])
    outcome.assert_clean()
    assert outcome.succeeded == 1
    with env.database.reading() as session:
        assert session.get(Job, job_id).attempts == 2  # type: ignore[union-attr]
    schedules = list(env.settings.data_dir.glob("celerybeat-schedule*"))
    assert not schedules, f"schedulers share no schedule file: {schedules}"


def test_a_sweep_takes_its_lock_once_where_the_database_can_lock(services: Services) -> None:
    database = services.database
    postgresql = database.engine.dialect.name == "postgresql"
    with sweep_lock(database, "test-jobs") as mine:
        assert mine
        with sweep_lock(database, "test-jobs") as again, sweep_lock(database, "test-x") as other:
            # PostgreSQL: one pass at a time; SQLite runs one writer at a time anyway.
            assert again is not postgresql
            assert other
    with sweep_lock(database, "test-jobs") as after:
        assert after, "the lock is released when the pass ends"


def test_an_unclaimed_job_is_taken_for_resending_by_one_sweep_only(
    tenant: Tenant, raw_disk: Path, services: Services
) -> None:
    job_id, _ = tenant.record_capture(raw_disk)
    stale = utcnow() - timedelta(hours=1)
    with services.database.transaction() as session:
        session.execute(update(Job).where(Job.job_id == job_id).values(send_requested_at=stale))
    now = utcnow()
    with services.database.transaction() as session:
        first = take_jobs_to_resend(session, 60, now)
    with services.database.transaction() as session:
        second = take_jobs_to_resend(session, 60, now)
    assert [job.job_id for job in first if job.job_id == job_id] == [job_id]
    assert [job.host for job in first if job.job_id == job_id] == ["local"]
    assert job_id not in {job.job_id for job in second}
