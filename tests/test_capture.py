"""POST /images: a stopped instance's disk becomes an image, for real."""

from __future__ import annotations

import asyncio
import math
import subprocess
from pathlib import Path
from typing import Any

from imagesvc.settings import Settings
from tests.support.backends import qemu_img_info, require_qemu_img
from tests.support.disks import MiB, chunked_checksum_of, stored_file, stored_files
from tests.support.tenants import Tenant, TenantFactory


async def test_capture_makes_an_available_image_with_its_disk_in_the_store(
    tenant: Tenant, raw_disk: Path, service_settings: Settings
) -> None:
    instance_id = tenant.add_instance(
        raw_disk, os_family="ubuntu", default_user="ubuntu", recommended_type="c1m1"
    )
    reply = await tenant.capture(instance_id, "TEST")
    assert reply.status == 202, reply
    job_id, image_id = reply.body["job_id"], reply.body["image_id"]
    assert job_id.startswith("j-") and image_id.startswith("img-")
    assert reply.body["status"] == "pending"
    assert reply.body["action"] == "CaptureInstance"
    assert set(reply.body["resource_ids"]) == {image_id, instance_id}

    job = await tenant.wait_job(job_id)
    assert job["status"] == "successful", job
    assert job["error"] is None and job["progress"] == 100
    assert job["begin_time"] and job["finished_time"]

    image = await tenant.image(image_id)
    assert image["status"] == "available" and image["transition_status"] == ""
    assert image["image_name"] == "TEST"
    assert (image["provider"], image["visibility"]) == ("self", "private")
    assert (image["os_family"], image["default_user"]) == ("ubuntu", "ubuntu")
    assert image["recommended_type"] == "c1m1" and image["owner"] == tenant.account_id
    assert image["size"] == math.ceil(raw_disk.stat().st_size / 1024**3)
    stored = stored_file(service_settings.image_dir, image_id)
    assert stored.read_bytes() == raw_disk.read_bytes()
    assert image["checksum"] == chunked_checksum_of(raw_disk)
    assert image["checksum_algorithm"] == "blake3-chunks-4MiB"
    assert stored.stat().st_blocks < raw_disk.stat().st_size // 512, "holes were filled"


async def test_capture_of_a_qcow2_disk_goes_through_qemu_img(
    tenant: Tenant, tmp_path: Path, service_settings: Settings
) -> None:
    qemu_img = require_qemu_img()
    disk = tmp_path / "disk.qcow2"
    subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", str(disk), "3G"], check=True)
    reply = await tenant.capture(tenant.add_instance(disk))
    assert reply.status == 202, reply
    job = await tenant.wait_job(reply.body["job_id"])
    assert job["status"] == "successful", job
    image = await tenant.image(reply.body["image_id"])
    stored = stored_file(service_settings.image_dir, reply.body["image_id"])
    info = qemu_img_info(stored, "qcow2")
    assert info["format"] == "qcow2"
    assert image["size"] == math.ceil(info["virtual-size"] / 1024**3) == 3
    assert image["disk_format"] == "qcow2"
    assert image["checksum"] == chunked_checksum_of(stored)
    assert image["checksum_algorithm"] == "blake3-chunks-4MiB"


async def test_a_running_instance_is_refused_and_nothing_is_created(
    tenant: Tenant, raw_disk: Path
) -> None:
    instance_id = tenant.add_instance(raw_disk, status="running")
    reply = await tenant.capture(instance_id)
    assert reply.status == 409, reply
    assert reply.body["ret_code"] == 1400
    assert instance_id in reply.body["message"] and "running" in reply.body["message"]
    images = await tenant.call("GET", "/images", params={"provider": "self"})
    assert images.body["total_count"] == 0
    jobs = await tenant.call("GET", "/jobs")
    assert jobs.body["total_count"] == 0


async def test_another_tenants_instance_is_not_found(
    tenant: Tenant, new_tenant: TenantFactory, raw_disk: Path
) -> None:
    other = await new_tenant()
    instance_id = other.add_instance(raw_disk)
    reply = await tenant.capture(instance_id)
    assert reply.status == 404, reply
    assert reply.body == {"ret_code": 2100, "message": f"instance {instance_id} not found"}


async def test_capture_parameters_are_validated(tenant: Tenant) -> None:
    missing = await tenant.call("POST", "/images", json={"image_name": "x"})
    assert (missing.status, missing.body["ret_code"]) == (400, 1100)
    assert "instance" in missing.body["message"]
    wrong_type = await tenant.call("POST", "/images", json={"instance": 42})
    assert wrong_type.status == 400 and "instance" in wrong_type.body["message"]
    too_long = await tenant.call(
        "POST", "/images", json={"instance": "i-x", "image_name": "n" * 129}
    )
    assert too_long.status == 400 and "image_name" in too_long.body["message"]
    not_json = await tenant.curl("POST", "/images", "{ not json")
    assert not_json.status == 400 and "JSON" in not_json.body["message"]
    array = await tenant.curl("POST", "/images", '["i-x"]')
    assert array.status == 400 and "object" in array.body["message"]


async def test_curl_as_the_seed_writes_it(tenant: Tenant, raw_disk: Path) -> None:
    instance_id = tenant.add_instance(raw_disk)
    body = f'\n{{ \n    "instance":"{instance_id}",\n    "image_name":"TEST"\n}}'
    reply = await tenant.curl("POST", "/images", body)
    assert reply.status == 202, reply
    assert (await tenant.wait_job(reply.body["job_id"]))["status"] == "successful"


async def test_one_capture_of_an_instance_at_a_time(tenant: Tenant, disk_factory: Any) -> None:
    instance_id = tenant.add_instance(disk_factory(size=256 * MiB, regions=16))
    replies = await asyncio.gather(*(tenant.capture(instance_id) for _ in range(8)))
    accepted = [reply for reply in replies if reply.status == 202]
    refused = [reply for reply in replies if reply.status != 202]
    assert len(accepted) == 1, replies
    for reply in refused:
        assert (reply.status, reply.body["ret_code"]) == (409, 1400), reply
        assert instance_id in reply.body["message"]
    job = await tenant.wait_job(accepted[0].body["job_id"])
    assert job["status"] == "successful"
    again = await tenant.capture(instance_id)
    assert again.status == 202, "a finished capture must not block the next one"
    assert (await tenant.wait_job(again.body["job_id"]))["status"] == "successful"


async def test_a_vanished_disk_fails_the_job_and_ceases_the_image(
    tenant: Tenant, raw_disk: Path, service_settings: Settings
) -> None:
    instance_id = tenant.add_instance(raw_disk)
    raw_disk.unlink()
    reply = await tenant.capture(instance_id)
    assert reply.status == 202, reply
    job = await tenant.wait_job(reply.body["job_id"])
    assert job["status"] == "failed"
    assert job["error"]["code"] == "DiskNotFound"
    assert instance_id in job["error"]["message"]
    assert str(raw_disk) not in job["error"]["message"], "server paths must not leak"
    image_id = reply.body["image_id"]
    image = await tenant.image(image_id)
    assert (image["status"], image["transition_status"]) == ("ceased", "")
    partials = service_settings.image_dir / ".partial"
    assert not any(job["job_id"] in p.name for p in partials.rglob("*"))
    assert stored_files(service_settings.image_dir, image_id) == []
