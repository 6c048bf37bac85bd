"""The chaos harness: real API, worker and scheduler processes, and the invariants.

Each scenario ends by waiting (bounded) for every accepted job to settle,
then checks what must hold whatever was killed or restarted:

- every accepted job ends successful or failed, and a failed job says why;
- image and job states agree (a successful capture's image is usable and
  has its file; a failed capture's image is ceased and has none);
- each file in the store belongs to exactly one non-ceased image row;
- no image was captured twice (one file per image, one image per job).

and prints one line: accepted, succeeded, failed, lost, duplicated, orphans.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import time
import urllib.error
import urllib.request
from base64 import b64encode
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from imagesvc.bootstrap import bootstrap
from imagesvc.settings import Settings
from models.accounts import create_account
from models.instances import NewInstance, add_instance
from models.migrate import upgrade
from models.states import JobAction, JobStatus
from models.tables import Image, Job
from tests.support import ServiceProcess, make_settings, scratch_database
from workers.system_images import inspect_disk

MiB = 1 << 20
SETTLE_TIMEOUT_S = 240.0

# Fast failure detection, so that scenarios finish in seconds, not minutes.
CHAOS_SETTINGS: dict[str, Any] = {
    "heartbeat_interval": 0.5,
    "heartbeat_timeout": 3.0,
    "sweep_interval": 1.0,
    "dispatch_grace": 2.0,
    "max_attempts": 8,
    "orphan_grace": 4.0,
    "quota_images": 100_000,
    "quota_gb": 1_000_000,
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_disk(path: Path, size: int, data: int) -> Path:
    """A sparse raw disk with ``data`` bytes of random content spread in 8 MiB blocks."""
    block = os.urandom(8 * MiB)
    blocks = max(1, data // len(block))
    stride = size // blocks
    with open(path, "wb") as disk:
        disk.truncate(size)
        for index in range(blocks):
            disk.seek(index * stride)
            disk.write(block[: min(len(block), stride)])
    return path


@dataclass
class Reply:
    status: int
    body: Any


class Client:
    """A plain HTTP client; a dropped connection is status 0."""

    def __init__(self, port: int, token: str = "") -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.token = token

    def call(self, method: str, path: str, body: Any = None, timeout: float = 30) -> Reply:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        request = urllib.request.Request(self.base + path, data, headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return Reply(response.status, json.loads(response.read()))
        except urllib.error.HTTPError as error:
            return Reply(error.code, json.loads(error.read() or b"null"))
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return Reply(0, None)


@dataclass
class Outcome:
    scenario: str
    accepted: int
    succeeded: int
    failed: int
    lost: list[str]
    duplicated: list[str]
    orphans: list[str]
    disagreements: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (
            f"chaos {self.scenario}: accepted={self.accepted} succeeded={self.succeeded} "
            f"failed={self.failed} lost={len(self.lost)} duplicated={len(self.duplicated)} "
            f"orphans={len(self.orphans)}"
        )

    def assert_clean(self) -> None:
        assert not self.lost, f"jobs never settled: {self.lost}"
        assert not self.duplicated, f"captured twice: {self.duplicated}"
        assert not self.orphans, f"files nobody owns: {self.orphans}"
        assert not self.disagreements, "\n".join(self.disagreements)


@contextmanager
def scratch_deployment(tmp_path: Path) -> Iterator[ChaosEnv]:
    """A deployment of its own: a fresh database, queue and data dir; no process yet."""
    with scratch_database(tmp_path) as url:
        settings = make_settings(tmp_path / "var", url, **CHAOS_SETTINGS)
        settings.ensure_dirs()
        upgrade(url)
        env = ChaosEnv(settings, tmp_path)
        try:
            yield env
        finally:
            env.close()


class ChaosEnv:
    """One scratch deployment: its own database, queue, data dir and processes."""

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
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.process.pid, signal.SIGKILL)
        process.process.wait(timeout=30)
        process.stop()

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

    def sign_up(self) -> None:
        with self.database.transaction() as session:
            credentials = create_account(session, "chaos")
        self.account_id = credentials.account_id
        basic = b64encode(f"{credentials.api_key}:{credentials.secret}".encode()).decode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/v2/oauth2/token",
            b"grant_type=client_credentials",
            {"Authorization": f"Basic {basic}"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            self.token = json.loads(response.read())["access_token"]

    def add_instances(self, disk: Path, count: int) -> list[str]:
        disk_format, disk_size = inspect_disk(disk)
        with self.database.transaction() as session:
            return [
                add_instance(
                    session,
                    NewInstance("ac1", self.account_id, str(disk), disk_format.value, disk_size),
                ).instance_id
                for _ in range(count)
            ]

    def job_status(self, job_id: str) -> str:
        with self.database.reading() as session:
            job = session.get(Job, job_id)
            return job.status if job else ""

    def wait_for_status(self, job_id: str, wanted: set[str], timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.job_status(job_id)
            if status in wanted:
                return status
            time.sleep(0.01)
        raise AssertionError(f"job {job_id} never reached {wanted}")

    # the invariants ----------------------------------------------------------------

    def settle(self, scenario: str, accepted: list[str]) -> Outcome:
        """Wait for every accepted job to end, then check the invariants."""
        unsettled = self._wait_settled(accepted)
        with self.database.reading() as session:
            jobs = {job.job_id: job for job in session.scalars(_jobs_of(self.account_id))}
            images = {i.image_id: i for i in session.scalars(_images_of(self.account_id))}
        outcome = Outcome(
            scenario,
            accepted=len(accepted),
            succeeded=sum(jobs[j].status == JobStatus.SUCCESSFUL.value for j in accepted),
            failed=sum(jobs[j].status == JobStatus.FAILED.value for j in accepted),
            lost=unsettled,
            duplicated=self._duplicated(images, jobs),
            orphans=self._wait_no_orphans(),
            disagreements=_disagreements(jobs, images, self.settings.image_dir),
        )
        print(outcome.line(), flush=True)
        return outcome

    def _wait_settled(self, job_ids: list[str]) -> list[str]:
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        pending = set(job_ids)
        terminal = {s.value for s in JobStatus if s.is_terminal}
        while pending and time.monotonic() < deadline:
            with self.database.reading() as session:
                rows = session.execute(
                    select(Job.job_id, Job.status).where(Job.job_id.in_(pending))
                )
                pending -= {job_id for job_id, status in rows if status in terminal}
            time.sleep(0.2)
        return sorted(pending)

    def _duplicated(self, images: dict[str, Image], jobs: dict[str, Job]) -> list[str]:
        files = Counter(p.name.split(".")[0] for p in self.settings.image_dir.glob("img-*"))
        twice = [image_id for image_id, count in files.items() if count > 1]
        captures = Counter(
            job.resource_ids[0]
            for job in jobs.values()
            if job.action == JobAction.CAPTURE_INSTANCE.value
        )
        return twice + [image_id for image_id, count in captures.items() if count > 1]

    def _wait_no_orphans(self) -> list[str]:
        """Files no non-ceased row owns; the sweep gets a grace period to remove them."""
        deadline = time.monotonic() + self.settings.orphan_grace + 20
        while True:
            orphans = self._orphans()
            if not orphans or time.monotonic() > deadline:
                return orphans
            time.sleep(0.5)

    def _orphans(self) -> list[str]:
        with self.database.reading() as session:
            owned = Counter(
                session.scalars(
                    select(Image.file_name).where(
                        Image.file_name.is_not(None), Image.status != "ceased"
                    )
                )
            )
        image_dir = self.settings.image_dir
        files = [p.name for p in image_dir.iterdir() if p.is_file()]
        partials = image_dir / ".partial"
        leftovers = [p.name for p in partials.iterdir()] if partials.is_dir() else []
        return [name for name in files if owned[name] != 1] + leftovers


def _jobs_of(account_id: str) -> Any:
    return select(Job).where(Job.owner == account_id)


def _images_of(account_id: str) -> Any:
    return select(Image).where(Image.owner == account_id)


def _disagreements(jobs: dict[str, Job], images: dict[str, Image], image_dir: Path) -> list[str]:
    problems = []
    for job in jobs.values():
        if job.status == JobStatus.FAILED.value and not (job.error_code and job.error_message):
            problems.append(f"job {job.job_id} failed without a reason")
        if job.action != JobAction.CAPTURE_INSTANCE.value:
            continue
        image = images[job.resource_ids[0]]
        problems += _capture_disagreement(job, image, image_dir)
    return problems


def _capture_disagreement(job: Job, image: Image, image_dir: Path) -> list[str]:
    if job.status == JobStatus.SUCCESSFUL.value:
        if image.status in ("pending", "ceased") or image.transition_status == "creating":
            return [f"job {job.job_id} successful but image {image.image_id} is {image.status}"]
        if not image.file_name or not (image_dir / image.file_name).is_file():
            return [f"image {image.image_id} is {image.status} without its file"]
    if job.status == JobStatus.FAILED.value and image.status != "ceased":
        return [f"job {job.job_id} failed but image {image.image_id} is {image.status}"]
    return []


def show_summaries(capsys: pytest.CaptureFixture[str]) -> None:
    """Print the scenario's summary lines past pytest's capture, so CI logs show them."""
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("chaos ")]
    with capsys.disabled():
        for line in lines:
            print(f"\n{line}")
