"""Captures run on their instance's compute host, and the operator can see where each ran.

The session's worker serves host ``local``. The multi-host deployment at the
end runs its own API, two schedulers and one worker per host, on distinct
disk directories, with real processes; once on a store directory they share, once on a
real S3 server, and every image's object in the store must match its checksum.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text

from imagesvc.bootstrap import Services
from imagesvc.settings import Settings
from models.instances import NewInstance, add_instance
from models.jobs import fail_job
from models.migrate import upgrade
from models.states import JobStatus
from models.tables import Instance, Job
from tests.chaos import ChaosEnv, chaos_deployment, show_summaries
from tests.support.backends import require_qemu_img
from tests.support.databases import scratch_database
from tests.support.disks import MiB, make_raw_disk
from tests.support.processes import ServiceProcess, run_imagesvc
from tests.support.s3_server import s3_store_server
from tests.support.tenants import Tenant
from workers.system_images import inspect_disk


def job_show(settings: Settings, job_id: str) -> dict[str, Any]:
    result = run_imagesvc(settings, "job", "show", job_id, "--json")
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def instance_host(services: Services, instance_id: str) -> str:
    with services.database.reading() as session:
        instance = session.get(Instance, instance_id)
        assert instance is not None
        return instance.host


async def test_an_operator_sees_the_host_and_worker_of_a_job_and_a_tenant_does_not(
    tenant: Tenant, raw_disk: Path, service_settings: Settings, services: Services
) -> None:
    added = run_imagesvc(
        service_settings,
        "instance", "add", "--zone", "ac1", "--owner", tenant.account_id,
        "--disk", str(raw_disk), "--json",
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    instance_id = json.loads(added.stdout)["instance_id"]
    assert instance_host(services, instance_id) == "local", "--host defaults to local"
    reply = await tenant.capture(instance_id)
    assert reply.status == 202, reply
    seen = await tenant.wait_job(reply.body["job_id"])
    assert seen["status"] == "successful", seen
    assert not {"host", "worker", "attempts"} & (set(seen) | set(reply.body))

    shown = job_show(service_settings, reply.body["job_id"])
    assert (shown["status"], shown["host"], shown["attempts"]) == ("successful", "local", 1)
    assert shown["worker"].startswith(f"local/{socket.gethostname()}:"), shown
    assert shown["owner"] == tenant.account_id


def test_job_show_names_a_job_it_does_not_know(service_settings: Settings) -> None:
    result = run_imagesvc(service_settings, "job", "show", "j-nosuchjob", "--json")
    assert result.returncode == 2
    assert "job j-nosuchjob not found" in result.stderr


def test_instance_add_refuses_a_host_that_is_no_host_name(
    tenant: Tenant, raw_disk: Path, service_settings: Settings
) -> None:
    for bad in ("../etc", "x" * 65):
        result = run_imagesvc(
            service_settings,
            "instance", "add", "--zone", "ac1", "--owner", tenant.account_id,
            "--disk", str(raw_disk), "--host", bad, "--json",
        )  # fmt: skip
        assert result.returncode == 2, (bad, result.stdout)
        assert "--host" in result.stderr and "not a host name" in result.stderr, result.stderr


async def test_a_worker_never_claims_a_capture_of_another_host(
    tenant: Tenant, raw_disk: Path, services: Services, worker: ServiceProcess
) -> None:
    instance_id = tenant.add_instance(raw_disk, host="elsewhere")
    reply = await tenant.capture(instance_id)
    assert reply.status == 202, reply
    job_id = reply.body["job_id"]
    try:
        # Delivered by mistake to this (host local) worker, on both of its queues.
        assert services.job_queue.send(job_id)
        assert services.job_queue.send(job_id, "local")
        refusal = f"job {job_id} is not pending for host local"
        worker.wait_for_output(refusal)
        deadline = time.monotonic() + 30
        while sum(refusal in line for line in worker.output) < 2:
            assert time.monotonic() < deadline, worker.log()
            time.sleep(0.05)
        with services.database.reading() as session:
            job = session.get(Job, job_id)
            assert job is not None
            waiting = (job.status, job.host, job.attempts, job.worker)
        assert waiting == ("pending", "elsewhere", 0, "")
    finally:
        with services.database.transaction() as session:
            fail_job(session, job_id, "Test", "host elsewhere has no worker in this test")


def test_the_upgrade_puts_existing_instances_and_captures_on_host_local(tmp_path: Path) -> None:
    with scratch_database(tmp_path) as url:
        upgrade(url, "0004")
        _insert_earlier_release_rows(url)
        upgrade(url, "0010")
        from sqlalchemy import create_engine

        engine = create_engine(url)  # the bare schema, as the migration left it
        try:
            with engine.connect() as connection:
                assert connection.scalar(select(Instance.host)) == "local"
                rows = connection.execute(select(Job.job_id, Job.host))
                hosts = {row.job_id: row.host for row in rows}
        finally:
            engine.dispose()
    assert hosts == {"j-capture": "local", "j-import": "local", "j-delete": ""}


def _insert_earlier_release_rows(url: str) -> None:
    from sqlalchemy import create_engine

    engine = create_engine(url)
    now = "2026-11-27 10:00:00+00:00"
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO accounts (account_id, name, api_key, secret_hash, created_at)"
                " VALUES ('usr-old', 'old', 'key-old', 'hash', :now)"
            ),
            {"now": now},
        )
        connection.execute(
            text(
                "INSERT INTO instances (instance_id, zone, owner, instance_name, status,"
                " disk_path, disk_format, disk_size, os_family, platform, processor_type,"
                " default_user, recommended_type, create_time) VALUES ('i-old', 'ac1',"
                " 'usr-old', '', 'stopped', '/srv/old.raw', 'raw', 0, 'linux', 'linux',"
                " '64bit', 'root', '', :now)"
            ),
            {"now": now},
        )
        for job_id, action in (
            ("j-capture", "CaptureInstance"),
            ("j-import", "ImportImage"),
            ("j-delete", "DeleteImages"),
        ):
            connection.execute(
                text(
                    "INSERT INTO jobs (job_id, zone, owner, action, status, resource_ids,"
                    " progress, attempts, create_time, status_time, worker) VALUES"
                    " (:job_id, 'ac1', 'usr-old', :action, 'pending', '[]', 0, 0, :now, :now, '')"
                ),
                {"job_id": job_id, "action": action, "now": now},
            )
    engine.dispose()


# The multi-host deployment ---------------------------------------------------------


def start_host_worker(env: ChaosEnv, host: str) -> ServiceProcess:
    # Threads, so the worker recorded on the job is this process's own pid.
    worker = env.start("worker", "--host", host, "--pool", "threads", "--concurrency", "2")
    worker.wait_for_output(" ready.", timeout=60)
    return worker


def add_host_instance(env: ChaosEnv, host: str, name: str) -> str:
    """An instance on ``host``, its disk in that host's own directory."""
    disks = env.tmp / f"host-{host}"
    disks.mkdir(exist_ok=True)
    disk = make_raw_disk(disks / f"{name}.raw", size=16 * MiB, data=8 * MiB)
    disk_format, disk_size = inspect_disk(disk)
    new = NewInstance("ac1", env.account_id, str(disk), disk_format.value, disk_size, host=host)
    with env.database.transaction() as session:
        return add_instance(session, new).instance_id


def capture(env: ChaosEnv, instance_id: str) -> str:
    reply = env.client().call("POST", "/v2/zone/ac1/images", {"instance": instance_id})
    assert reply.status == 202, reply
    return str(reply.body["job_id"])


def ran_on(env: ChaosEnv, job_id: str, worker: ServiceProcess, host: str) -> None:
    """The job succeeded on ``host``, run by ``worker`` (a threads pool: its own pid)."""
    with env.database.reading() as session:
        job = session.get(Job, job_id)
        assert job is not None
        ran = (job.status, job.host, job.worker)
    assert ran == ("successful", host, f"{host}/{socket.gethostname()}:{worker.process.pid}")


def resent_at(env: ChaosEnv, job_id: str) -> Any:
    with env.database.reading() as session:
        return session.scalar(select(Job.send_requested_at).where(Job.job_id == job_id))


@pytest.fixture(params=["file", "s3"])
def multi_host(
    request: pytest.FixtureRequest, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> Iterator[ChaosEnv]:
    """A scratch deployment whose store every host reaches: the data dir's directory (a
    filesystem they all mount), or a bucket of its own on a real S3 server (``.ci/run``'s,
    or the test's own)."""
    with ExitStack() as stack:
        overrides = {}
        if request.param == "s3":
            require_qemu_img()  # an S3 store keeps compact qcow2 copies
            server = stack.enter_context(s3_store_server(tmp_path / "s3"))
            overrides["store_url"] = f"s3://{server.new_bucket()}/multi-host"
        try:
            yield stack.enter_context(chaos_deployment(tmp_path, **overrides))
        finally:
            show_summaries(capsys)


def test_two_hosts_each_capture_their_own_and_a_host_without_worker_waits(
    multi_host: ChaosEnv,
) -> None:
    env = multi_host
    env.start("scheduler")
    env.start("scheduler")
    worker_a, worker_b = start_host_worker(env, "a"), start_host_worker(env, "b")
    env.start_api()
    env.sign_up()
    on_a = [add_host_instance(env, "a", f"a{n}") for n in range(2)]
    on_b = [add_host_instance(env, "b", f"b{n}") for n in range(2)]

    first = {capture(env, on_a[0]): (worker_a, "a"), capture(env, on_b[0]): (worker_b, "b")}
    for job_id, (worker, host) in first.items():
        env.wait_for_status(job_id, {"successful", "failed"})
        ran_on(env, job_id, worker, host)

    worker_b.stop()
    late_b = capture(env, on_b[1])
    late_a = capture(env, on_a[1])
    env.wait_for_status(late_a, {"successful"})
    ran_on(env, late_a, worker_a, "a")
    # Host b has no worker: the sweep sends b's job again, to b only. Sent to host a's
    # worker by mistake too, it is refused there.
    sent = resent_at(env, late_b)
    assert env.services.job_queue.send(late_b, "a") and env.services.job_queue.send(late_b)
    worker_a.wait_for_output(f"job {late_b} is not pending for host a")
    deadline = time.monotonic() + 60
    while resent_at(env, late_b) == sent:
        assert time.monotonic() < deadline, "the sweep never sent the waiting job again"
        time.sleep(0.1)
    assert env.job_status(late_b) == JobStatus.PENDING.value

    worker_b = start_host_worker(env, "b")
    env.wait_for_status(late_b, {"successful", "failed"})
    ran_on(env, late_b, worker_b, "b")
    outcome = env.settle(f"multi-host on {env.services.store.url}", [*first, late_a, late_b])
    outcome.assert_clean()
    assert outcome.succeeded == 4
    assert len(env.stored_names()) == 4
    assert env.objects_unlike_their_checksums() == []
