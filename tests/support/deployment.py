"""Deployments for tests: settings, a migrated database and a queue of their own.

The session's shared deployment (``conftest.py``), a module's own one, and
the scratch deployments of the chaos and shutdown tests are all built by
:func:`deployment_settings`. :class:`Deployment` adds processes
(API, worker, scheduler or ``up``) and a tenant calling over HTTP.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import select

from imagesvc.bootstrap import bootstrap
from imagesvc.settings import Settings
from models.accounts import create_account
from models.instances import NewInstance, add_instance
from models.migrate import upgrade
from models.tables import Job
from tests.support.backends import TEST_REDIS_URL, check_redis, drop_queue
from tests.support.databases import scratch_database
from tests.support.http import Client
from tests.support.processes import ServiceProcess, free_port, running
from tests.support.waiting import wait_for
from workers.system_images import inspect_disk


def make_settings(data_dir: Path, database_url: str, **overrides: Any) -> Settings:
    """Settings for a test deployment: its own queue, both zones, quick sweeps."""
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "database_url": database_url,
        "broker_url": TEST_REDIS_URL,
        "queue": f"test-{secrets.token_hex(4)}",
        "zones": "ac1,ac2",
        "sweep_interval": 1.0,
        "dispatch_grace": 3.0,
        "broker_polling_interval": 0.05,
    }
    values.update(overrides)
    return Settings(**values)


@contextmanager
def deployment_settings(data_dir: Path, **overrides: Any) -> Iterator[Settings]:
    """Settings whose database is new and migrated, whose dirs exist; all removed on exit."""
    check_redis()
    data_dir.mkdir(parents=True, exist_ok=True)
    with scratch_database(data_dir) as url:
        settings = make_settings(data_dir, url, **overrides)
        settings.ensure_dirs()
        upgrade(url)
        try:
            yield settings
        finally:
            drop_queue(settings.queue)


D = TypeVar("D", bound="Deployment")


@contextmanager
def scratch_deployment(tmp_path: Path, kind: type[D], **overrides: Any) -> Iterator[D]:
    """A ``kind`` of deployment of its own: a fresh database, queue and data dir; no process
    yet. Its processes are stopped on exit."""
    with deployment_settings(tmp_path / "var", **overrides) as settings:
        deployment = kind(settings, tmp_path)
        try:
            yield deployment
        finally:
            deployment.close()


@contextmanager
def running_worker(settings: Settings, concurrency: int = 2) -> Iterator[ServiceProcess]:
    """An ``imagesvc worker`` process, ready for jobs; stopped (SIGTERM) on exit."""
    with running(settings, " ready.", "worker", "--concurrency", str(concurrency)) as worker:
        yield worker


class Deployment:
    """One deployment: its settings, its parts, its processes and one tenant's token."""

    def __init__(self, settings: Settings, tmp: Path) -> None:
        self.settings = settings
        self.tmp = tmp
        self.services = bootstrap(settings)
        self.database = self.services.database
        self.processes: list[ServiceProcess] = []
        self.account_id, self.token = "", ""
        self.port = free_port()

    # processes -------------------------------------------------------------

    def start(self, *argv: str, settings: Settings | None = None) -> ServiceProcess:
        process = ServiceProcess(settings or self.settings, *argv)
        self.processes.append(process)
        return process

    def start_worker(self, concurrency: int = 2) -> ServiceProcess:
        worker = self.start("worker", "--concurrency", str(concurrency))
        worker.wait_for_output(" ready.", timeout=60)
        return worker

    def start_api(self, settings: Settings | None = None) -> ServiceProcess:
        api = self.start("api", "--port", str(self.port), settings=settings)
        api.wait_for_output("Running on", timeout=60)
        return api

    @staticmethod
    def kill(process: ServiceProcess) -> None:
        """SIGKILL the process and its children (a prefork worker's pool too)."""
        process.kill()

    def close(self) -> None:
        for process in reversed(self.processes):
            process.stop(timeout=90)
        self.services.close()

    def start_deployment(self) -> Client:
        """Scheduler, one worker and the API, and a signed-up tenant's client."""
        self.start("scheduler")
        self.start_worker()
        self.start_api()
        self.sign_up()
        return self.client()

    # the tenant --------------------------------------------------------------

    def client(self) -> Client:
        return Client(self.port, self.token)

    def sign_up(self, name: str = "tenant") -> Client:
        """A new account whose token the deployment's client uses from now on."""
        with self.database.transaction() as session:
            credentials = create_account(session, name)
        self.account_id = credentials.account_id
        client = self.client()
        client.sign_in(credentials.api_key, credentials.secret)
        self.token = client.token
        return client

    def add_instances(self, disk: Path, count: int, zone: str = "ac1") -> list[str]:
        """``count`` stopped instances of the tenant, all with ``disk``."""
        disk_format, disk_size = inspect_disk(disk)
        new = NewInstance(zone, self.account_id, str(disk), disk_format.value, disk_size)
        with self.database.transaction() as session:
            return [add_instance(session, new).instance_id for _ in range(count)]

    # jobs, as the database has them ------------------------------------------

    def job_status(self, job_id: str) -> str:
        with self.database.reading() as session:
            status = session.scalar(select(Job.status).where(Job.job_id == job_id))
            return status or ""

    def wait_for_status(self, job_id: str, wanted: set[str], timeout: float = 60) -> str:
        return wait_for(
            lambda: self.job_status(job_id),
            lambda status: status in wanted,
            f"job {job_id} reaches {sorted(wanted)}",
            timeout,
            interval=0.01,
        )

    def unsettled(self, job_ids: list[str], terminal: frozenset[str], timeout: float) -> list[str]:
        """The jobs of ``job_ids`` still not in a terminal status after (at most) ``timeout``."""
        deadline = time.monotonic() + timeout
        pending = set(job_ids)
        while pending and time.monotonic() < deadline:
            with self.database.reading() as session:
                rows = session.execute(
                    select(Job.job_id, Job.status).where(Job.job_id.in_(pending))
                )
                pending -= {job_id for job_id, status in rows if status in terminal}
            time.sleep(0.2)
        return sorted(pending)


def serve_api(settings: Settings) -> tuple[ServiceProcess, str]:
    """Start ``imagesvc api`` on a free loopback port; the process and its URL, once it answers."""
    port = free_port()
    process = ServiceProcess(settings, "api", "--host", "127.0.0.1", "--port", str(port))
    Client(port).wait_until_up(process, timeout=30)
    return process, f"http://127.0.0.1:{port}"
