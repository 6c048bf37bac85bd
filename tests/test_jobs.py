"""GET /job/{id} and GET /jobs: the caller's jobs only, in the contract's Job shape."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.support.contract import Reply, parse_time
from tests.support.disks import MiB, make_raw_disk
from tests.support.tenants import Tenant, TenantFactory

JOB_FIELDS = {
    "job_id",
    "action",
    "status",
    "create_time",
    "begin_time",
    "finished_time",
    "status_time",
    "zone",
    "resource_ids",
    "owner",
    "error",
}


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    return make_raw_disk(tmp_path / f"small-{secrets.token_hex(3)}.raw", size=MiB, regions=1)


async def failed_capture(tenant: Tenant, tmp_path: Path) -> tuple[str, str, str]:
    """Capture an instance whose disk vanished; (job_id, image_id, instance_id)."""
    vanished = make_raw_disk(tmp_path / f"gone-{secrets.token_hex(3)}.raw", MiB, 1)
    instance_id = tenant.add_instance(vanished)
    vanished.unlink()
    reply = await tenant.capture(instance_id, "doomed")
    assert reply.status == 202, reply
    return str(reply.body["job_id"]), str(reply.body["image_id"]), instance_id


async def jobs_listed(tenant: Tenant, params: Any = None) -> Reply:
    reply = await tenant.call("GET", "/jobs", params=params)
    assert reply.status == 200, reply
    return reply


def ids_of(reply: Reply) -> list[str]:
    return [job["job_id"] for job in reply.body["jobs"]]


async def test_a_job_has_every_field_of_the_contract_and_stays_put_once_terminal(
    tenant: Tenant, disk: Path
) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    instance_id = tenant.add_instance(disk)
    reply = await tenant.capture(instance_id)
    assert reply.status == 202, reply
    job_id, image_id = reply.body["job_id"], reply.body["image_id"]
    await tenant.wait_job(job_id)
    after = datetime.now(UTC)

    first = await tenant.call("GET", f"/job/{job_id}")
    assert first.status == 200, first
    job = first.body
    assert set(job) >= JOB_FIELDS, JOB_FIELDS - set(job)
    assert re.fullmatch(r"j-[a-z0-9]+", job["job_id"]) and job["job_id"] == job_id
    assert (job["action"], job["status"], job["error"]) == ("CaptureInstance", "successful", None)
    assert (job["zone"], job["owner"]) == ("ac1", tenant.account_id)
    assert job["resource_ids"] == [image_id, instance_id]
    created, begun = parse_time(job["create_time"]), parse_time(job["begin_time"])
    finished, moved = parse_time(job["finished_time"]), parse_time(job["status_time"])
    assert before <= created <= begun <= finished <= after, job
    assert moved == finished, "the last status change of a finished job is its finish"

    await asyncio.sleep(0.05)
    second = await tenant.call("GET", f"/job/{job_id}")
    assert second == first
    listed = await jobs_listed(tenant, {"jobs": job_id})
    assert listed.body == {"jobs": [first.body], "total_count": 1}


async def test_a_fresh_job_is_pending_or_later_with_no_finish_time(
    tenant: Tenant, disk: Path
) -> None:
    reply = await tenant.capture(tenant.add_instance(disk))
    assert reply.status == 202, reply
    assert reply.body["status"] == "pending" and reply.body["finished_time"] is None
    assert reply.body["begin_time"] is None and reply.body["error"] is None
    job = await tenant.wait_job(reply.body["job_id"])
    assert job["seen"][-1] == "successful"
    assert set(job["seen"]) <= {"pending", "working", "successful"}, job["seen"]


async def test_another_tenants_job_is_not_found_and_not_listed(
    tenant: Tenant, new_tenant: TenantFactory, disk: Path
) -> None:
    other = await new_tenant()
    reply = await other.capture(other.add_instance(disk))
    assert reply.status == 202, reply
    theirs = reply.body["job_id"]
    await other.wait_job(theirs)

    peek = await tenant.call("GET", f"/job/{theirs}")
    assert peek.status == 404, peek
    assert peek.body == {"ret_code": 2100, "message": f"job {theirs} not found"}
    unknown = await tenant.call("GET", "/job/j-zzzzzzzz")
    assert unknown.body == {"ret_code": 2100, "message": "job j-zzzzzzzz not found"}

    assert (await jobs_listed(tenant)).body == {"jobs": [], "total_count": 0}
    by_id = await jobs_listed(tenant, {"jobs": theirs})
    assert by_id.body == {"jobs": [], "total_count": 0}
    assert ids_of(await jobs_listed(other)) == [theirs]
    assert (await other.call("GET", f"/job/{theirs}")).status == 200


async def test_a_job_belongs_to_its_zone(tenant: Tenant, disk: Path) -> None:
    reply = await tenant.capture(tenant.add_instance(disk))
    job_id = reply.body["job_id"]
    await tenant.wait_job(job_id)
    in_ac2 = dataclasses.replace(tenant, zone="ac2")
    assert (await in_ac2.call("GET", f"/job/{job_id}")).status == 404
    assert (await jobs_listed(in_ac2)).body == {"jobs": [], "total_count": 0}
    nowhere = await dataclasses.replace(tenant, zone="zz9").call("GET", f"/job/{job_id}")
    assert nowhere.status == 404 and nowhere.body["ret_code"] == 2100, nowhere
    assert "zz9" in nowhere.body["message"]
    no_jobs_there = await dataclasses.replace(tenant, zone="zz9").call("GET", "/jobs")
    assert no_jobs_there.status == 404 and "zz9" in no_jobs_there.body["message"]


@dataclass(frozen=True)
class ThreeJobs:
    """A successful capture, then a modify, then a failed capture: oldest first."""

    captured: str
    modified: str
    failed: str

    @property
    def newest_first(self) -> list[str]:
        return [self.failed, self.modified, self.captured]


async def three_jobs(tenant: Tenant, disk: Path, tmp_path: Path) -> ThreeJobs:
    reply = await tenant.capture(tenant.add_instance(disk))
    assert reply.status == 202, reply
    captured, image_id = reply.body["job_id"], reply.body["image_id"]
    assert (await tenant.wait_job(captured))["status"] == "successful"
    modify = await tenant.call("PUT", "/images", json={"image": image_id, "image_name": "new"})
    assert modify.status == 200, modify
    assert (modify.body["action"], modify.body["status"]) == ("ModifyImageAttributes", "successful")
    failed, _, _ = await failed_capture(tenant, tmp_path)
    assert (await tenant.wait_job(failed))["status"] == "failed"
    return ThreeJobs(captured, modify.body["job_id"], failed)


async def test_list_jobs_is_newest_first_and_filters_by_status_and_action(
    tenant: Tenant, disk: Path, tmp_path: Path
) -> None:
    jobs = await three_jobs(tenant, disk, tmp_path)

    everything = await jobs_listed(tenant)
    assert ids_of(everything) == jobs.newest_first and everything.body["total_count"] == 3
    cases: list[tuple[Any, list[str]]] = [
        ({"action": "ModifyImageAttributes"}, [jobs.modified]),
        ({"action": "CaptureInstance"}, [jobs.failed, jobs.captured]),
        ({"action": "DeleteImages"}, []),
        ({"status": "failed"}, [jobs.failed]),
        ({"status": "successful"}, [jobs.modified, jobs.captured]),
        ({"status": "done with failure"}, []),
        ({"status": "pending,working"}, []),
        ([("status", "successful"), ("status", "failed")], jobs.newest_first),
        ({"action": "CaptureInstance", "status": "successful"}, [jobs.captured]),
        ({"action": "CaptureInstance,ModifyImageAttributes"}, jobs.newest_first),
    ]
    for params, expected in cases:
        reply = await jobs_listed(tenant, params)
        assert ids_of(reply) == expected, (params, reply)
        assert reply.body["total_count"] == len(expected), (params, reply)

    in_body = await tenant.curl(
        "GET", "/jobs", json.dumps({"status": ["successful"], "action": ["CaptureInstance"]})
    )
    assert ids_of(in_body) == [jobs.captured], in_body


async def test_list_jobs_by_ids_in_all_three_list_forms_and_paged(
    tenant: Tenant, disk: Path, tmp_path: Path
) -> None:
    jobs = await three_jobs(tenant, disk, tmp_path)

    array = await tenant.curl("GET", "/jobs", json.dumps({"jobs": [jobs.captured, jobs.modified]}))
    assert array.status == 200, array
    assert ids_of(array) == [jobs.modified, jobs.captured] and array.body["total_count"] == 2
    joined = await jobs_listed(tenant, {"jobs": f"{jobs.captured},{jobs.failed}"})
    assert ids_of(joined) == [jobs.failed, jobs.captured], joined
    repeated = await jobs_listed(tenant, [("jobs", jobs.modified), ("jobs", jobs.failed)])
    assert ids_of(repeated) == [jobs.failed, jobs.modified], repeated

    pages = []
    for offset in range(3):
        page = await jobs_listed(tenant, {"offset": str(offset), "limit": "1"})
        assert page.body["total_count"] == 3, page
        pages.extend(ids_of(page))
    assert pages == jobs.newest_first
    beyond = await jobs_listed(tenant, {"offset": "3"})
    assert beyond.body == {"jobs": [], "total_count": 3}
    capped = await jobs_listed(tenant, {"limit": "500"})
    assert ids_of(capped) == jobs.newest_first
    filtered_page = await jobs_listed(tenant, {"action": "CaptureInstance", "offset": "1"})
    assert ids_of(filtered_page) == [jobs.captured] and filtered_page.body["total_count"] == 2


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"status": "bogus"}, "status"),
        ({"status": "successful,bogus"}, "status"),
        ({"action": "RunInstances"}, "action"),
        ({"limit": "-1"}, "limit"),
        ({"offset": "abc"}, "offset"),
        ({"jobs": "j-ok,not a job!"}, "jobs"),
    ],
)
async def test_a_bad_job_filter_is_a_400_naming_it(
    tenant: Tenant, params: dict[str, str], name: str
) -> None:
    as_query = await tenant.call("GET", "/jobs", params=params)
    assert (as_query.status, as_query.body["ret_code"]) == (400, 1100), as_query
    assert name in as_query.body["message"], as_query
    as_body = await tenant.curl("GET", "/jobs", json.dumps(params))
    assert (as_body.status, as_body.body["ret_code"]) == (400, 1100), as_body
    assert name in as_body.body["message"], as_body


async def test_a_failed_job_carries_its_error(tenant: Tenant, tmp_path: Path) -> None:
    job_id, image_id, instance_id = await failed_capture(tenant, tmp_path)
    job = await tenant.wait_job(job_id)
    assert job["status"] == "failed", job
    assert "successful" not in job["seen"]
    error = job["error"]
    assert isinstance(error, dict) and set(error) == {"code", "message"}, error
    assert isinstance(error["code"], str) and error["code"], error
    assert isinstance(error["message"], str) and instance_id in error["message"], error
    assert job["finished_time"] is not None and job["resource_ids"] == [image_id, instance_id]

    again = await tenant.call("GET", f"/job/{job_id}")
    assert again.body["error"] == error and again.body["status"] == "failed"
    listed = await jobs_listed(tenant, {"status": "failed"})
    assert ids_of(listed) == [job_id] and listed.body["jobs"][0]["error"] == error


async def test_an_offset_past_the_largest_database_integer_is_a_400_naming_it(
    tenant: Tenant,
) -> None:
    """Out of range is a 400 (contract); the largest offset a database can take is served."""
    reply = await tenant.call("GET", "/jobs", params={"offset": "99999999999999999999"})
    assert (reply.status, reply.body["ret_code"]) == (400, 1100), reply
    assert "offset" in reply.body["message"], reply
    largest = await tenant.call("GET", "/jobs", params={"offset": str(2**31 - 1)})
    assert (largest.status, largest.body["jobs"]) == (200, []), largest
