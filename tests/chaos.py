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

import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from models.states import JobAction, JobStatus
from models.tables import Image, Job
from tests.support.contract import TERMINAL
from tests.support.deployment import Deployment, scratch_deployment
from workers.checksum import checksum_stream
from workers.image_store import S3ImageStore

SETTLE_TIMEOUT_S = 240.0
# After the jobs settle, how long past orphan_grace the sweep gets to remove orphans.
ORPHAN_WAIT_S = 20.0
# Stopping a deployment's processes after a scenario (a worker takes seconds to stop).
CLOSE_ALLOWANCE_S = 120.0

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
    reasons: list[str] = field(default_factory=list)
    # When jobs were lost: the last lines of each process of the deployment, which
    # say whether a worker stopped consuming (a broker restart) or never got the job.
    logs: str = ""

    def line(self) -> str:
        return (
            f"chaos {self.scenario}: accepted={self.accepted} succeeded={self.succeeded} "
            f"failed={self.failed} lost={len(self.lost)} duplicated={len(self.duplicated)} "
            f"orphans={len(self.orphans)}"
        )

    def assert_clean(self) -> None:
        assert not self.lost, f"jobs never settled: {self.lost}\n{self.logs}"
        assert not self.duplicated, f"captured twice: {self.duplicated}"
        assert not self.orphans, f"files nobody owns: {self.orphans}"
        assert not self.disagreements, "\n".join(self.disagreements)


def scenario_timeout(scenario_s: float) -> pytest.MarkDecorator:
    """A per-test timeout above everything the scenario and :meth:`ChaosEnv.settle` wait for.

    ``scenario_s`` bounds the scenario's own run before it settles. A hang then
    ends in settle's outcome line and its assertion, not in pytest-timeout's
    stack dump.
    """
    settle_s = SETTLE_TIMEOUT_S + float(CHAOS_SETTINGS["orphan_grace"]) + ORPHAN_WAIT_S
    timeout: pytest.MarkDecorator = pytest.mark.timeout(scenario_s + settle_s + CLOSE_ALLOWANCE_S)
    return timeout


@contextmanager
def chaos_deployment(tmp_path: Path, **overrides: Any) -> Iterator[ChaosEnv]:
    """A scratch deployment with fast failure detection; no process yet."""
    with scratch_deployment(tmp_path, ChaosEnv, **(CHAOS_SETTINGS | overrides)) as env:
        yield env


class ChaosEnv(Deployment):
    """A scratch deployment that can check the invariants once its jobs have settled."""

    # the invariants ----------------------------------------------------------------

    def settle(self, scenario: str, accepted: list[str]) -> Outcome:
        """Wait for every accepted job to end, then check the invariants."""
        unsettled = self.unsettled(accepted, TERMINAL, SETTLE_TIMEOUT_S)
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
            disagreements=_disagreements(jobs, images, set(self.stored_names())),
            reasons=[
                f"{job.job_id}: {job.error_code}: {job.error_message}"
                for job in jobs.values()
                if job.status == JobStatus.FAILED.value
            ],
        )
        print(outcome.line(), flush=True)
        if unsettled:
            outcome.logs = self._process_logs()
        return outcome

    def _process_logs(self) -> str:
        return "\n".join(
            f"--- imagesvc {' '.join(process.argv)}, last lines:\n{process.log()}"
            for process in self.processes
        )

    def _duplicated(self, images: dict[str, Image], jobs: dict[str, Job]) -> list[str]:
        files = Counter(
            name.split(".")[0] for name in self.stored_names() if name.startswith("img-")
        )
        twice = [image_id for image_id, count in files.items() if count > 1]
        captures = Counter(
            job.resource_ids[0]
            for job in jobs.values()
            if job.action == JobAction.CAPTURE_INSTANCE.value
        )
        return twice + [image_id for image_id, count in captures.items() if count > 1]

    def _wait_no_orphans(self) -> list[str]:
        """Files no non-ceased row owns; the sweep gets a grace period to remove them."""
        deadline = time.monotonic() + self.settings.orphan_grace + ORPHAN_WAIT_S
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
        store = self.services.store
        staged = store.staging_dir()
        leftovers = [str(p) for p in staged.rglob("*") if p.is_file()] if staged.is_dir() else []
        if isinstance(store, S3ImageStore):  # and uploads never completed nor aborted
            reply = store.client.list_multipart_uploads(Bucket=store.bucket, Prefix=store.prefix)
            leftovers += [f"upload of {upload['Key']}" for upload in reply.get("Uploads", [])]
        return [name for name in self.stored_names() if owned[name] != 1] + leftovers

    def objects_unlike_their_checksums(self) -> list[str]:
        """The available images of the tenant whose object in the store, read back whole,
        does not have the image's checksum (or is missing)."""
        with self.database.reading() as session:
            images = list(session.scalars(_images_of(self.account_id)))
        wrong = []
        for image in images:
            if image.status != "available":
                continue
            try:
                with self.services.store.reader(image.file_name or "") as stream:
                    recomputed = checksum_stream(stream, image.checksum_algorithm)
            except Exception as exc:
                wrong.append(f"{image.image_id}: {exc}")
                continue
            if recomputed != image.checksum:
                wrong.append(f"{image.image_id}: {recomputed} != {image.checksum}")
        return wrong

    def stored_names(self) -> list[str]:
        """The objects in the deployment's image store (files, or S3 objects)."""
        return [item.name for item in self.services.store.listing()]


def _jobs_of(account_id: str) -> Any:
    return select(Job).where(Job.owner == account_id)


def _images_of(account_id: str) -> Any:
    return select(Image).where(Image.owner == account_id)


def _disagreements(jobs: dict[str, Job], images: dict[str, Image], stored: set[str]) -> list[str]:
    problems = []
    for job in jobs.values():
        if job.status == JobStatus.FAILED.value and not (job.error_code and job.error_message):
            problems.append(f"job {job.job_id} failed without a reason")
        if job.action != JobAction.CAPTURE_INSTANCE.value:
            continue
        image = images[job.resource_ids[0]]
        problems += _capture_disagreement(job, image, stored)
    return problems


def _capture_disagreement(job: Job, image: Image, stored: set[str]) -> list[str]:
    if job.status == JobStatus.SUCCESSFUL.value:
        if image.status in ("pending", "ceased") or image.transition_status == "creating":
            return [f"job {job.job_id} successful but image {image.image_id} is {image.status}"]
        if not image.file_name or image.file_name not in stored:
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
