"""Client idempotency: a caller repeating a ``request_id`` within 24 h gets the same job back.

POST /images and DELETE /images/{ids} take an optional ``request_id`` (in the body, or
as the ``X-Request-Id`` header). The key belongs to the caller, lives 24 h, and is only
kept when the request it came with was accepted.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
from datetime import timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import select, update

from imagesvc.settings import Settings
from models.db import Database
from models.instances import set_instance_status
from models.states import InstanceStatus
from models.tables import ClientRequest, Instance, Job, utcnow
from tests.support.contract import Reply
from tests.support.disks import stored_file
from tests.support.tenants import Tenant, TenantFactory


def new_request_id() -> str:
    return f"req-{secrets.token_hex(8)}"


async def capture(
    tenant: Tenant,
    instance_id: str,
    request_id: str | None = None,
    *,
    header: str | None = None,
) -> Reply:
    """POST /images with the key in the body (``request_id``) and/or the header."""
    body: dict[str, Any] = {"instance": instance_id, "image_name": "idem"}
    if request_id is not None:
        body["request_id"] = request_id
    headers = {"X-Request-Id": header} if header is not None else {}
    return await tenant.call("POST", "/images", json=body, headers=headers)


async def delete(
    tenant: Tenant, image_id: str, request_id: str | None = None, *, header: str | None = None
) -> Reply:
    """DELETE /images/{id}, with the key as a JSON body and/or as the header."""
    kwargs: dict[str, Any] = {}
    if request_id is not None:
        kwargs["json"] = {"request_id": request_id}
    if header is not None:
        kwargs["headers"] = {"X-Request-Id": header}
    return await tenant.call("DELETE", f"/images/{image_id}", **kwargs)


async def own_images(tenant: Tenant) -> list[str]:
    reply = await tenant.call("GET", "/images", params={"provider": "self", "limit": 100})
    assert reply.status == 200, reply
    assert reply.body["total_count"] == len(reply.body["images"]), reply
    return [image["image_id"] for image in reply.body["images"]]


async def own_jobs(tenant: Tenant) -> list[str]:
    reply = await tenant.call("GET", "/jobs", params={"limit": 100})
    assert reply.status == 200, reply
    return [job["job_id"] for job in reply.body["jobs"]]


def attempts_of(database: Database, job_id: str) -> int:
    with database.reading() as session:
        attempts = session.scalar(select(Job.attempts).where(Job.job_id == job_id))
    assert attempts is not None, job_id
    return attempts


def assert_invalid_request_id(reply: Reply) -> None:
    assert (reply.status, reply.body["ret_code"]) == (400, 1100), reply
    assert "request_id" in reply.body["message"], reply


async def test_a_repeated_capture_with_a_body_request_id_gets_the_same_job(
    tenant: Tenant, raw_disk: Path, database: Database, service_settings: Settings
) -> None:
    instance_id = tenant.add_instance(raw_disk)
    request_id = new_request_id()
    first = await capture(tenant, instance_id, request_id)
    assert first.status == 202, first
    second = await capture(tenant, instance_id, request_id)
    assert second.status == 202, second
    job_id, image_id = first.body["job_id"], first.body["image_id"]
    assert (second.body["job_id"], second.body["image_id"]) == (job_id, image_id)
    assert second.body["action"] == "CaptureInstance"
    assert await own_images(tenant) == [image_id]
    assert await own_jobs(tenant) == [job_id]

    job = await tenant.wait_job(job_id)
    assert job["status"] == "successful", job
    assert attempts_of(database, job_id) == 1, "the job ran more than once"
    assert stored_file(service_settings.image_dir, image_id).read_bytes() == raw_disk.read_bytes()

    # Once the job is done, a repeat still answers with it (now finished), creating nothing.
    third = await capture(tenant, instance_id, request_id)
    assert third.status == 202, third
    assert (third.body["job_id"], third.body["image_id"]) == (job_id, image_id)
    assert third.body["status"] == "successful"
    assert await own_images(tenant) == [image_id]
    assert (await tenant.image(image_id))["status"] == "available"


async def test_a_repeated_capture_with_the_header_gets_the_same_job(
    tenant: Tenant, raw_disk: Path, database: Database
) -> None:
    instance_id = tenant.add_instance(raw_disk)
    request_id = new_request_id()
    first = await capture(tenant, instance_id, header=request_id)
    assert first.status == 202, first
    second = await capture(tenant, instance_id, header=request_id)
    assert second.status == 202, second
    job_id, image_id = first.body["job_id"], first.body["image_id"]
    assert (second.body["job_id"], second.body["image_id"]) == (job_id, image_id)
    # The header and the body parameter are one key.
    in_body = await capture(tenant, instance_id, request_id)
    assert (in_body.status, in_body.body["job_id"]) == (202, job_id), in_body
    assert await own_images(tenant) == [image_id]
    assert (await tenant.wait_job(job_id))["status"] == "successful"
    assert attempts_of(database, job_id) == 1


async def test_concurrent_captures_with_one_request_id_make_one_job(
    tenant: Tenant, raw_disk: Path, database: Database, service_settings: Settings
) -> None:
    instance_id = tenant.add_instance(raw_disk)
    request_id = new_request_id()
    replies = await asyncio.gather(*(capture(tenant, instance_id, request_id) for _ in range(10)))
    assert all(reply.status == 202 for reply in replies), replies
    assert len({reply.body["job_id"] for reply in replies}) == 1, replies
    assert len({reply.body["image_id"] for reply in replies}) == 1, replies
    job_id, image_id = replies[0].body["job_id"], replies[0].body["image_id"]
    assert await own_images(tenant) == [image_id]
    assert await own_jobs(tenant) == [job_id]
    assert (await tenant.wait_job(job_id))["status"] == "successful"
    assert attempts_of(database, job_id) == 1
    stored_file(service_settings.image_dir, image_id)


async def test_request_ids_are_per_caller(
    tenant: Tenant, new_tenant: TenantFactory, disk_factory: Any
) -> None:
    other = await new_tenant()
    request_id = new_request_id()
    mine = await capture(tenant, tenant.add_instance(disk_factory()), request_id)
    theirs = await capture(other, other.add_instance(disk_factory()), request_id)
    assert (mine.status, theirs.status) == (202, 202), (mine, theirs)
    assert mine.body["job_id"] != theirs.body["job_id"]
    assert mine.body["image_id"] != theirs.body["image_id"]
    assert theirs.body["owner"] == other.account_id
    assert await own_images(tenant) == [mine.body["image_id"]]
    assert await own_images(other) == [theirs.body["image_id"]]
    assert (await tenant.wait_job(mine.body["job_id"]))["status"] == "successful"
    assert (await other.wait_job(theirs.body["job_id"]))["status"] == "successful"
    # Neither caller can reach the other's job through the shared key.
    again = await capture(other, other.add_instance(disk_factory()), request_id)
    assert (again.status, again.body["job_id"]) == (202, theirs.body["job_id"]), again


async def test_a_request_id_older_than_24_hours_makes_a_new_job(
    tenant: Tenant, raw_disk: Path, database: Database
) -> None:
    instance_id = tenant.add_instance(raw_disk)
    request_id = new_request_id()
    first = await capture(tenant, instance_id, request_id)
    assert first.status == 202, first
    assert (await tenant.wait_job(first.body["job_id"]))["status"] == "successful"

    with database.transaction() as session:
        aged = session.execute(
            update(ClientRequest)
            .where(
                ClientRequest.owner == tenant.account_id,
                ClientRequest.request_id == request_id,
            )
            .values(created_at=utcnow() - timedelta(hours=25))
        )
        assert aged.rowcount == 1  # type: ignore[attr-defined]

    second = await capture(tenant, instance_id, request_id)
    assert second.status == 202, second
    assert second.body["job_id"] != first.body["job_id"]
    assert second.body["image_id"] != first.body["image_id"]
    assert sorted(await own_images(tenant)) == sorted(
        [first.body["image_id"], second.body["image_id"]]
    )
    assert (await tenant.wait_job(second.body["job_id"]))["status"] == "successful"
    # The key now names the new job, for another 24 h.
    third = await capture(tenant, instance_id, request_id)
    assert (third.status, third.body["job_id"]) == (202, second.body["job_id"]), third
    assert len(await own_images(tenant)) == 2


async def test_a_capture_request_id_cannot_be_reused_for_a_delete(
    tenant: Tenant, raw_disk: Path
) -> None:
    instance_id = tenant.add_instance(raw_disk)
    request_id = new_request_id()
    captured = await capture(tenant, instance_id, request_id)
    assert captured.status == 202, captured
    image_id = captured.body["image_id"]
    assert (await tenant.wait_job(captured.body["job_id"]))["status"] == "successful"

    refused = await delete(tenant, image_id, request_id)
    assert_invalid_request_id(refused)
    assert request_id in refused.body["message"]
    by_header = await delete(tenant, image_id, header=request_id)
    assert_invalid_request_id(by_header)
    image = await tenant.image(image_id)
    assert (image["status"], image["transition_status"]) == ("available", "")
    assert await own_jobs(tenant) == [captured.body["job_id"]], "a refusal starts nothing"


async def test_a_repeated_delete_with_a_request_id_gets_the_same_job(
    tenant: Tenant, raw_disk: Path, database: Database
) -> None:
    image_id = await tenant.captured_image(raw_disk)
    request_id = new_request_id()
    first = await delete(tenant, image_id, request_id)
    assert first.status == 202, first
    job_id = first.body["job_id"]
    assert (first.body["action"], first.body["resource_ids"]) == ("DeleteImages", [image_id])

    # The image is deleting or deleted now; only the repeated request_id gets a 202.
    second = await delete(tenant, image_id, request_id)
    assert (second.status, second.body["job_id"]) == (202, job_id), second
    without_key = await delete(tenant, image_id)
    assert (without_key.status, without_key.body["ret_code"]) == (409, 1400), without_key
    assert image_id in without_key.body["message"]

    job = await tenant.wait_job(job_id)
    assert job["status"] == "successful", job
    assert attempts_of(database, job_id) == 1
    after = await delete(tenant, image_id, header=request_id)
    assert (after.status, after.body["job_id"], after.body["status"]) == (
        202,
        job_id,
        "successful",
    ), after
    image = await tenant.image(image_id)
    assert (image["status"], image["transition_status"]) == ("deleted", "")
    delete_jobs = await tenant.call("GET", "/jobs", params={"action": "DeleteImages"})
    assert [j["job_id"] for j in delete_jobs.body["jobs"]] == [job_id]


async def test_an_invalid_request_id_is_refused_naming_it(tenant: Tenant, raw_disk: Path) -> None:
    instance_id = tenant.add_instance(raw_disk)
    for bad in ("r" * 65, "has space", "", "semi;colon", "ünïcode"):
        assert_invalid_request_id(await capture(tenant, instance_id, bad))
    for bad in ("r" * 65, "has space", "a/b"):
        assert_invalid_request_id(await capture(tenant, instance_id, header=bad))
    wrong_type = await tenant.call(
        "POST", "/images", json={"instance": instance_id, "request_id": 42}
    )
    assert_invalid_request_id(wrong_type)
    assert await own_images(tenant) == [], "a refused request creates nothing"
    assert await own_jobs(tenant) == []

    longest = "r" * 64
    accepted = await capture(tenant, instance_id, longest)
    assert accepted.status == 202, accepted
    image_id = accepted.body["image_id"]
    assert (await tenant.wait_job(accepted.body["job_id"]))["status"] == "successful"
    assert_invalid_request_id(await delete(tenant, image_id, "r" * 65))
    assert_invalid_request_id(await delete(tenant, image_id, header="has space"))
    assert (await tenant.image(image_id))["status"] == "available"


async def test_a_refused_request_leaves_no_key_behind(
    tenant: Tenant, raw_disk: Path, database: Database
) -> None:
    instance_id = tenant.add_instance(raw_disk, status="running")
    request_id = new_request_id()
    refused = await capture(tenant, instance_id, request_id)
    assert (refused.status, refused.body["ret_code"]) == (409, 1400), refused
    assert instance_id in refused.body["message"]
    again = await capture(tenant, instance_id, request_id)
    assert again.status == 409, "the refusal must be repeated, not replayed as a job"
    with database.reading() as session:
        kept = session.get(ClientRequest, (tenant.account_id, request_id))
    assert kept is None, "a refused request's key was kept"
    assert await own_jobs(tenant) == []

    with database.transaction() as session:
        set_instance_status(session, instance_id, InstanceStatus.STOPPED)
    accepted = await capture(tenant, instance_id, request_id)
    assert accepted.status == 202, accepted
    assert (await tenant.wait_job(accepted.body["job_id"]))["status"] == "successful"
    assert await own_images(tenant) == [accepted.body["image_id"]]


async def test_a_key_from_a_refused_delete_is_free_for_a_capture(
    tenant: Tenant, raw_disk: Path
) -> None:
    request_id = new_request_id()
    missing = await delete(tenant, "img-nothere", request_id)
    assert (missing.status, missing.body["ret_code"]) == (404, 2100), missing
    accepted = await capture(tenant, tenant.add_instance(raw_disk), request_id)
    assert accepted.status == 202, accepted
    assert (await tenant.wait_job(accepted.body["job_id"]))["status"] == "successful"


async def test_a_request_id_is_not_replayed_into_another_zone(
    tenant: Tenant, disk_factory: Any
) -> None:
    request_id = new_request_id()
    first = await capture(tenant, tenant.add_instance(disk_factory()), request_id)
    assert first.status == 202, first
    elsewhere = dataclasses.replace(tenant, zone="ac2")
    reply = await capture(elsewhere, elsewhere.add_instance(disk_factory()), request_id)
    assert (reply.status, reply.body["ret_code"]) == (400, 1100), reply
    assert "request_id" in reply.body["message"] and "ac1" in reply.body["message"]
    await tenant.wait_job(first.body["job_id"])


async def test_a_repeat_after_the_instance_is_gone_still_gets_the_first_job(
    tenant: Tenant, raw_disk: Path, database: Database
) -> None:
    request_id = new_request_id()
    instance_id = tenant.add_instance(raw_disk)
    first = await capture(tenant, instance_id, request_id)
    assert first.status == 202, first
    await tenant.wait_job(first.body["job_id"])
    with database.transaction() as session:
        session.execute(sa.delete(Instance).where(Instance.instance_id == instance_id))
    again = await capture(tenant, instance_id, request_id)
    assert (again.status, again.body["job_id"]) == (202, first.body["job_id"]), again
    assert again.body["image_id"] == first.body["image_id"]
    fresh = await capture(tenant, instance_id, new_request_id())
    assert (fresh.status, fresh.body["ret_code"]) == (404, 2100), fresh
    assert instance_id in fresh.body["message"]
