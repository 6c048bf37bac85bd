"""Captures into an S3 store, against a real S3-compatible server (``rclone serve s3``).

A capture stores a compact qcow2 of the instance's raw disk (only its data is uploaded),
``imagesvc image verify`` reads the object back, a ceased image's object is removed, the
orphan sweep removes objects no image owns and uploads never finished, and restarting the
server in the middle of an upload loses nothing and leaves nothing half-written.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagesvc.bootstrap import services_for
from models.tables import Image, Job
from tests.chaos import ChaosEnv, chaos_deployment, scenario_timeout
from tests.support.backends import require_qemu_img
from tests.support.disks import GiB, MiB, make_raw_disk
from tests.support.processes import ServiceProcess, run_imagesvc
from tests.support.s3_server import S3Server
from workers.image_store import S3ImageStore
from workers.image_sweep import remove_orphans, sweep_images


@pytest.fixture
def env(bucket: str, tmp_path: Path) -> Iterator[ChaosEnv]:
    """A deployment of its own on the S3 store, in the module's bucket under a prefix of its
    own."""
    require_qemu_img()
    store_url = f"s3://{bucket}/{tmp_path.name}"
    with chaos_deployment(tmp_path, store_url=store_url) as deployment:
        yield deployment


def s3_store(env: ChaosEnv) -> S3ImageStore:
    store = env.services.store
    assert isinstance(store, S3ImageStore)
    return store


def start(env: ChaosEnv) -> ServiceProcess:
    worker = env.start_worker()
    env.start_api()
    env.sign_up()
    return worker


def capture(env: ChaosEnv, disk: Path) -> tuple[str, str]:
    [instance_id] = env.add_instances(disk, 1)
    reply = env.client().call("POST", "/v2/zone/ac1/images", {"instance": instance_id})
    assert reply.status == 202, reply
    return str(reply.body["job_id"]), str(reply.body["image_id"])


def started_and_captured(env: ChaosEnv, disk: Path) -> tuple[str, str]:
    """Start the deployment, capture ``disk``; the job and image, once it succeeded."""
    start(env)
    job_id, image_id = capture(env, disk)
    assert env.wait_for_status(job_id, {"successful", "failed"}) == "successful"
    return job_id, image_id


def image_row(env: ChaosEnv, image_id: str) -> Image:
    with env.database.reading() as session:
        image = session.get(Image, image_id)
        assert image is not None
        return image


def download(store: S3ImageStore, name: str, path: Path) -> Path:
    with store.reader(name) as stream, open(path, "wb") as out:
        while data := stream.read(8 * MiB):
            out.write(data)
    return path


def verify(env: ChaosEnv, image_id: str) -> tuple[int, dict[str, object]]:
    result = run_imagesvc(env.settings, "image", "verify", image_id, "--json")
    assert result.stdout, result.stderr
    return result.returncode, dict(json.loads(result.stdout))


@scenario_timeout(180)
def test_a_capture_on_s3_is_a_compact_qcow2_verified_ceased_and_swept(
    env: ChaosEnv, tmp_path: Path
) -> None:
    disk = make_raw_disk(tmp_path / "vm.raw", size=1 * GiB, data=16 * MiB)
    _, image_id = started_and_captured(env, disk)

    image, store = image_row(env, image_id), s3_store(env)
    name = f"{image_id}.1.qcow2"
    assert (image.disk_format, image.file_name) == ("qcow2", name)
    assert image.virtual_size == 1 * GiB
    assert image.byte_size < 32 * MiB, "the upload costs the data, not the virtual size"
    assert [o.name for o in store.listing()] == [name]
    stored = download(store, name, tmp_path / "stored.qcow2")
    assert stored.stat().st_size == image.byte_size
    compared = subprocess.run(
        [require_qemu_img(), "compare", "-f", "raw", "-F", "qcow2", str(disk), str(stored)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert compared.returncode == 0, compared.stdout + compared.stderr
    assert env.objects_unlike_their_checksums() == []

    code, verified = verify(env, image_id)
    assert (code, verified["matches"], verified["recomputed"]) == (0, True, image.checksum)
    corrupt = bytearray(stored.read_bytes())
    corrupt[-1] ^= 0xFF
    key = store.prefix + name
    store.client.put_object(Bucket=store.bucket, Key=key, Body=bytes(corrupt))
    code, verified = verify(env, image_id)
    assert (code, verified["matches"]) == (1, False), verified
    store.client.put_object(Bucket=store.bucket, Key=key, Body=stored.read_bytes())

    reply = env.client().call("DELETE", f"/v2/zone/ac1/images/{image_id}")
    assert reply.status == 202, reply
    assert env.wait_for_status(str(reply.body["job_id"]), {"successful"}) == "successful"
    expired = {"deleted_retention": 0.0, "orphan_grace": 0.0}
    with services_for(env.settings.model_copy(update=expired)) as services:
        report = sweep_images(services)
    assert report is not None and (report.ceased, report.freed) == (1, 1), report
    ceased = image_row(env, image_id)
    assert (ceased.status, ceased.file_name) == ("ceased", None)
    assert list(store.listing()) == [], "the ceased image's object is still in the store"
    assert not [p for p in store.staging_dir().rglob("*") if p.is_file()]


def test_the_orphan_sweep_removes_unowned_objects_and_unfinished_uploads_only(
    env: ChaosEnv, tmp_path: Path
) -> None:
    disk = make_raw_disk(tmp_path / "vm.raw", size=64 * MiB, data=8 * MiB)
    job_id, image_id = started_and_captured(env, disk)
    store = s3_store(env)
    stray = f"img-stray{secrets.token_hex(4)}.1.qcow2"
    store.client.put_object(Bucket=store.bucket, Key=store.prefix + stray, Body=b"left by a crash")
    crashed = f"img-crash{secrets.token_hex(4)}.1.qcow2"
    store.client.create_multipart_upload(Bucket=store.bucket, Key=store.prefix + crashed)

    with services_for(env.settings.model_copy(update={"orphan_grace": 3600.0})) as services:
        assert remove_orphans(services) == [], "young objects and uploads must stay"
    with services_for(env.settings.model_copy(update={"orphan_grace": 0.0})) as services:
        removed = remove_orphans(services)
    assert sorted(removed) == sorted([stray, crashed]), removed
    assert [o.name for o in store.listing()] == [image_row(env, image_id).file_name]
    assert env.objects_unlike_their_checksums() == []
    outcome = env.settle("s3-orphans", [job_id])
    outcome.assert_clean()


def wait_for_upload(env: ChaosEnv, job_id: str, image_id: str) -> None:
    """Poll the server until the job's upload is under way there."""
    store = s3_store(env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert env.job_status(job_id) in ("pending", "working"), env.job_status(job_id)
        uploads = store.client.list_multipart_uploads(
            Bucket=store.bucket, Prefix=f"{store.prefix}{image_id}."
        ).get("Uploads", [])
        if uploads:
            return
        time.sleep(0.01)
    raise AssertionError(f"the upload of {image_id} never started")


def phases_until_settled(env: ChaosEnv, job_id: str, timeout: float = 180) -> list[str]:
    """The phases the job row shows until it settles, in order, and its final status last."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with env.database.reading() as session:
            job = session.get(Job, job_id)
            assert job is not None
            status, phase = job.status, job.phase
        if status not in ("pending", "working"):
            return [*seen, status]
        if not seen or seen[-1] != phase:
            seen.append(phase)
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} never settled; phases {seen}")


@scenario_timeout(240)
def test_restarting_the_s3_server_mid_upload_loses_nothing(
    env: ChaosEnv, s3_server: S3Server, tmp_path: Path
) -> None:
    worker = start(env)
    # 256 MiB of data: four 64 MiB parts, so the restart lands between parts.
    disk = make_raw_disk(tmp_path / "big.raw", size=2 * GiB, data=256 * MiB)
    job_id, image_id = capture(env, disk)
    wait_for_upload(env, job_id, image_id)
    s3_server.restart()  # the server's unfinished uploads are gone with its process (.ci/run's too)

    seen = phases_until_settled(env, job_id)
    assert seen[-2:] == ["uploading", "successful"], seen
    worker.wait_for_output(f"upload of {image_id}.")
    assert "starting it again" in worker.log(), "the restart never interrupted the upload"
    image = image_row(env, image_id)
    assert [o.name for o in s3_store(env).listing()] == [image.file_name]
    assert env.objects_unlike_their_checksums() == []
    outcome = env.settle("s3-restart", [job_id])
    outcome.assert_clean()
    assert outcome.succeeded == 1
