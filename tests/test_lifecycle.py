"""Recovery, retention and cease, operator moves and quotas (QingCloud's image lifecycle)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from imagesvc.settings import Settings
from models.db import Database
from tests.support.disks import MiB, stored_file, stored_files
from tests.support.processes import ServiceProcess, run_imagesvc
from tests.support.records import age_image
from tests.support.tenants import Tenant, TenantFactory
from tests.support.waiting import wait_for_async

# Its scheduler sweeps (ceases, purges, frees files) across the whole deployment.
pytestmark = pytest.mark.own_deployment


async def deleted_image(tenant: Tenant, disk: Path) -> str:
    image_id = await tenant.captured_image(disk)
    reply = await tenant.call("DELETE", f"/images/{image_id}")
    assert reply.status == 202, reply
    assert (await tenant.wait_job(reply.body["job_id"]))["status"] == "successful"
    return image_id


async def test_a_deleted_image_is_recovered_within_the_window(
    tenant: Tenant, raw_disk: Path, service_settings: Settings
) -> None:
    image_id = await deleted_image(tenant, raw_disk)
    deleted_at = (await tenant.image(image_id))["status_time"]
    reply = await tenant.curl("POST", "/images/recover", f'{{"images": ["{image_id}"]}}')
    assert reply.status == 202, reply
    assert (reply.body["action"], reply.body["resource_ids"]) == ("RecoverImages", [image_id])
    job = await tenant.wait_job(reply.body["job_id"])
    assert job["status"] == "successful", job
    image = await tenant.image(image_id)
    assert (image["status"], image["transition_status"]) == ("available", "")
    assert image["status_time"] >= deleted_at
    assert stored_file(service_settings.image_dir, image_id).read_bytes() == raw_disk.read_bytes()


async def test_recover_refuses_images_that_are_not_deleted_or_are_ceased(
    tenant: Tenant, disk_factory: Any, database: Database, service_settings: Settings
) -> None:
    available = await tenant.captured_image(disk_factory())
    reply = await tenant.call("POST", "/images/recover", json={"images": [available]})
    assert (reply.status, reply.body["ret_code"]) == (409, 1400), reply
    message = reply.body["message"]
    assert available in message and "available" in message and "recover" in message

    expired = await deleted_image(tenant, disk_factory())
    age_image(database, expired, service_settings.deleted_retention + 1)
    reply = await tenant.call("POST", "/images/recover", json={"images": [expired]})
    assert (reply.status, reply.body["ret_code"]) == (409, 1400), reply
    assert expired in reply.body["message"] and "ceased" in reply.body["message"]
    assert (await tenant.image(expired))["status"] == "deleted", "a refusal changes nothing"

    missing = await tenant.call("POST", "/images/recover", json={"images": ["img-nothere"]})
    assert (missing.status, missing.body["ret_code"]) == (404, 2100), missing
    empty = await tenant.call("POST", "/images/recover", json={})
    assert (empty.status, empty.body["ret_code"]) == (400, 1100), empty


async def test_the_sweep_ceases_expired_images_frees_their_files_and_purges_old_rows(
    tenant: Tenant, disk_factory: Any, database: Database, service_settings: Settings
) -> None:
    expired = await deleted_image(tenant, disk_factory())
    recent = await deleted_image(tenant, disk_factory())
    purged = await deleted_image(tenant, disk_factory())
    age_image(database, expired, service_settings.deleted_retention + 60)
    before = await tenant.call("GET", "/images", params={"status": "deleted"})
    assert before.body["total_count"] == 3

    scheduler = ServiceProcess(service_settings, "scheduler")
    try:
        await _wait_for_status(tenant, expired, "ceased")
        age_image(database, purged, service_settings.deleted_retention + 60)
        await _wait_for_status(tenant, purged, "ceased")
        age_image(database, purged, service_settings.ceased_retention + 60)
        await _wait_until_gone(tenant, purged)
    finally:
        scheduler.stop()

    image = await tenant.image(expired)
    assert (image["status"], image["transition_status"]) == ("ceased", "")
    assert not stored_files(service_settings.image_dir, expired), "storage not freed"
    assert stored_file(service_settings.image_dir, recent).exists()
    assert (await tenant.image(recent))["status"] == "deleted"
    listed = await tenant.call("GET", "/images", params={"provider": "self"})
    assert {i["image_id"] for i in listed.body["images"]} == {recent}, "ceased are hidden"
    audit = await tenant.call("GET", "/images", params={"status": "ceased"})
    assert [i["image_id"] for i in audit.body["images"]] == [expired]


async def _wait_for_status(tenant: Tenant, image_id: str, status: str) -> None:
    await wait_for_async(
        lambda: tenant.image(image_id),
        lambda image: image["status"] == status,
        f"{image_id} becomes {status}",
        timeout=30,
        interval=0.1,
    )


async def _wait_until_gone(tenant: Tenant, image_id: str) -> None:
    await wait_for_async(
        lambda: tenant.call("GET", "/images", params={"images": image_id}),
        lambda reply: reply.body["total_count"] == 0,
        f"{image_id} is purged",
        timeout=30,
        interval=0.1,
    )


async def test_operator_moves_deprecate_suspend_and_resume(
    tenant: Tenant, raw_disk: Path, service_settings: Settings
) -> None:
    image_id = await tenant.captured_image(raw_disk)
    captured_at = (await tenant.image(image_id))["status_time"]
    await asyncio.sleep(1.1)  # status_time has one-second resolution on the wire

    deprecated = _operator(service_settings, "deprecate", image_id)
    assert deprecated["status"] == "deprecated" and deprecated["status_time"] > captured_at
    listed = await tenant.call("GET", "/images", params={"status": "deprecated"})
    assert [i["image_id"] for i in listed.body["images"]] == [image_id]

    again = run_imagesvc(service_settings, "image", "deprecate", image_id)
    assert again.returncode != 0 and "Traceback" not in again.stderr
    assert image_id in again.stderr and "deprecated" in again.stderr

    assert _operator(service_settings, "suspend", image_id)["status"] == "suspended"
    refused = await tenant.call("DELETE", f"/images/{image_id}")
    assert (refused.status, refused.body["ret_code"]) == (409, 1400), refused
    assert "suspended" in refused.body["message"] and image_id in refused.body["message"]
    # It was deprecated before it was suspended, and goes back to that.
    assert _operator(service_settings, "resume", image_id)["status"] == "deprecated"
    delete = await tenant.call("DELETE", f"/images/{image_id}")
    assert delete.status == 202, "a deprecated image is the owner's to delete"
    await tenant.wait_job(delete.body["job_id"])


async def test_resume_of_a_never_deprecated_image_makes_it_available(
    tenant: Tenant, raw_disk: Path, service_settings: Settings
) -> None:
    image_id = await tenant.captured_image(raw_disk)
    assert _operator(service_settings, "suspend", image_id)["status"] == "suspended"
    assert _operator(service_settings, "resume", image_id)["status"] == "available"
    unknown = run_imagesvc(service_settings, "image", "suspend", "img-nothere")
    assert unknown.returncode != 0 and "img-nothere" in unknown.stderr


async def test_a_recovered_image_is_no_longer_deprecated(
    tenant: Tenant, raw_disk: Path, service_settings: Settings
) -> None:
    image_id = await tenant.captured_image(raw_disk)
    _operator(service_settings, "deprecate", image_id)
    delete = await tenant.call("DELETE", f"/images/{image_id}")
    await tenant.wait_job(delete.body["job_id"])
    recover = await tenant.call("POST", "/images/recover", json={"images": image_id})
    assert (await tenant.wait_job(recover.body["job_id"]))["status"] == "successful"
    assert (await tenant.image(image_id))["status"] == "available"
    _operator(service_settings, "suspend", image_id)
    assert _operator(service_settings, "resume", image_id)["status"] == "available"


def _operator(settings: Settings, action: str, image_id: str) -> dict[str, Any]:
    result = run_imagesvc(settings, "image", action, image_id, "--json")
    assert result.returncode == 0, result.stderr
    image: dict[str, Any] = json.loads(result.stdout)
    assert image["image_id"] == image_id and image["transition_status"] == ""
    return image


def _set_quota(settings: Settings, account_id: str, *limits: str) -> dict[str, Any]:
    result = run_imagesvc(settings, "account", "set-quota", account_id, *limits, "--json")
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


async def test_the_image_quota_refuses_captures_past_it_and_ceased_images_free_it(
    tenant: Tenant, disk_factory: Any, database: Database, service_settings: Settings
) -> None:
    quota = _set_quota(service_settings, tenant.account_id, "--images", "2")
    assert (quota["quota_images"], quota["images"]) == (2, 0)
    first = await tenant.captured_image(disk_factory())
    await deleted_image(tenant, disk_factory())  # deleted images still count
    refused = await tenant.capture(tenant.add_instance(disk_factory()))
    assert (refused.status, refused.body["ret_code"]) == (429, 2500), refused
    assert "2 of 2 images" in refused.body["message"]
    assert (await tenant.call("GET", "/images", params={"provider": "self"})).body[
        "total_count"
    ] == 2, "a refused capture creates nothing"
    age_image(database, first, 0)
    delete = await tenant.call("DELETE", f"/images/{first}")
    await tenant.wait_job(delete.body["job_id"])
    age_image(database, first, service_settings.deleted_retention + 60)
    scheduler = ServiceProcess(service_settings, "scheduler")
    try:
        await _wait_for_status(tenant, first, "ceased")
    finally:
        scheduler.stop()
    assert (await tenant.capture(tenant.add_instance(disk_factory()))).status == 202


async def test_the_size_quota_counts_whole_gb_reserved_at_capture(
    tenant: Tenant, disk_factory: Any, service_settings: Settings
) -> None:
    _set_quota(service_settings, tenant.account_id, "--gb", "3")
    two_gb = disk_factory(size=2048 * MiB, regions=2)
    accepted = await tenant.capture(tenant.add_instance(two_gb))
    assert accepted.status == 202, accepted
    refused = await tenant.capture(tenant.add_instance(disk_factory(size=1100 * MiB)))
    assert (refused.status, refused.body["ret_code"]) == (429, 2500), refused
    assert "needs 2 GB" in refused.body["message"] and "2 of 3 GB" in refused.body["message"]
    await tenant.wait_job(accepted.body["job_id"])
    fits = await tenant.capture(tenant.add_instance(disk_factory(size=1024 * MiB)))
    assert fits.status == 202, fits


async def test_concurrent_captures_cannot_race_past_the_quota(
    new_tenant: TenantFactory, disk_factory: Any, service_settings: Settings
) -> None:
    tenant = await new_tenant()
    _set_quota(service_settings, tenant.account_id, "--images", "3")
    instances = [tenant.add_instance(disk_factory(size=4 * MiB, regions=1)) for _ in range(12)]
    replies = await asyncio.gather(*(tenant.capture(i) for i in instances))
    statuses = sorted(reply.status for reply in replies)
    assert statuses == [202] * 3 + [429] * 9, replies
    for reply in replies:
        if reply.status == 202:
            assert (await tenant.wait_job(reply.body["job_id"]))["status"] == "successful"
    listed = await tenant.call("GET", "/images", params={"provider": "self"})
    assert listed.body["total_count"] == 3


def test_set_quota_refuses_unknown_accounts(service_settings: Settings) -> None:
    result = run_imagesvc(service_settings, "account", "set-quota", "usr-nobody", "--images", "1")
    assert result.returncode != 0 and "usr-nobody" in result.stderr
