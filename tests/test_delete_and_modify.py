"""DELETE /images/{ids} and PUT /images: all or nothing, own images only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text, update

from imagesvc.bootstrap import Services
from imagesvc.settings import Settings
from models.db import Database
from models.images import SystemImageSpec
from models.tables import Image
from tests.support.disks import stored_file
from tests.support.tenants import Tenant, TenantFactory
from workers.system_images import import_system_image

# It publishes images and imports a public one: every tenant would see them.
pytestmark = pytest.mark.own_deployment


def system_image(services: Services, disk: Path) -> str:
    spec = SystemImageSpec(zone="ac1", image_name="centos-base", os_family="centos")
    return import_system_image(services, disk, spec)


async def test_delete_moves_images_to_deleted_and_keeps_their_files(
    tenant: Tenant, disk_factory: Any, service_settings: Settings
) -> None:
    first = await tenant.captured_image(disk_factory())
    second = await tenant.captured_image(disk_factory())
    reply = await tenant.curl("DELETE", f"/images/{first},{second}", "\n")
    assert reply.status == 202, reply
    assert reply.body["action"] == "DeleteImages"
    assert reply.body["resource_ids"] == [first, second]
    job = await tenant.wait_job(reply.body["job_id"])
    assert job["status"] == "successful", job
    for image_id in (first, second):
        image = await tenant.image(image_id)
        assert (image["status"], image["transition_status"]) == ("deleted", "")
        assert stored_file(service_settings.image_dir, image_id).exists()


async def test_delete_is_all_or_nothing_and_names_the_missing_ids(
    tenant: Tenant, raw_disk: Path
) -> None:
    image_id = await tenant.captured_image(raw_disk)
    reply = await tenant.call("DELETE", f"/images/{image_id},img-992iiii")
    assert (reply.status, reply.body["ret_code"]) == (404, 2100), reply
    assert "img-992iiii" in reply.body["message"] and image_id not in reply.body["message"]
    assert (await tenant.image(image_id))["status"] == "available"
    assert (await tenant.call("GET", "/jobs", params={"action": "DeleteImages"})).body[
        "total_count"
    ] == 0


async def test_another_tenants_image_cannot_be_deleted_and_is_not_revealed(
    tenant: Tenant, new_tenant: TenantFactory, raw_disk: Path
) -> None:
    other = await new_tenant()
    theirs = await other.captured_image(raw_disk)
    reply = await tenant.call("DELETE", f"/images/{theirs}")
    assert (reply.status, reply.body["ret_code"]) == (404, 2100), reply
    assert (await other.image(theirs))["status"] == "available"


async def test_system_images_are_read_only_to_users(
    tenant: Tenant, raw_disk: Path, services: Services
) -> None:
    system = system_image(services, raw_disk)
    own = await tenant.captured_image(raw_disk)
    delete = await tenant.call("DELETE", f"/images/{own},{system}")
    assert (delete.status, delete.body["ret_code"]) == (403, 1400), delete
    assert system in delete.body["message"] and "system" in delete.body["message"]
    assert (await tenant.image(own))["status"] == "available", "nothing may change"
    modify = await tenant.call("PUT", "/images", json={"image": system, "image_name": "mine"})
    assert (modify.status, modify.body["ret_code"]) == (403, 1400), modify
    image = await tenant.image(system)
    assert (image["image_name"], image["status"]) == ("centos-base", "available")


async def test_images_in_a_state_that_forbids_deletion_are_refused_by_name(
    tenant: Tenant, raw_disk: Path
) -> None:
    image_id = await tenant.captured_image(raw_disk)
    first = await tenant.call("DELETE", f"/images/{image_id}")
    assert first.status == 202, first
    await tenant.wait_job(first.body["job_id"])
    again = await tenant.call("DELETE", f"/images/{image_id}")
    assert (again.status, again.body["ret_code"]) == (409, 1400), again
    assert image_id in again.body["message"] and "deleted" in again.body["message"]


async def test_a_pending_image_cannot_be_deleted(
    tenant: Tenant, raw_disk: Path, database: Database
) -> None:
    # Recorded but never dispatched, so it stays pending for as long as the test needs.
    _, image_id = tenant.record_capture(raw_disk)
    reply = await tenant.call("DELETE", f"/images/{image_id}")
    assert (reply.status, reply.body["ret_code"]) == (409, 1400), reply
    assert image_id in reply.body["message"]
    assert "pending" in reply.body["message"] and "creating" in reply.body["message"]
    assert (await tenant.image(image_id))["transition_status"] == "creating"


async def test_delete_ids_are_validated(tenant: Tenant) -> None:
    reply = await tenant.call("DELETE", "/images/img-ok,bad$id")
    assert (reply.status, reply.body["ret_code"]) == (400, 1100), reply
    assert "images" in reply.body["message"]
    empty = await tenant.call("DELETE", "/images/,")
    assert (empty.status, empty.body["ret_code"]) == (400, 1100), empty


async def test_modify_changes_name_and_description_with_a_successful_job(
    tenant: Tenant, raw_disk: Path
) -> None:
    image_id = await tenant.captured_image(raw_disk, "before")
    body = (
        f'\n{{\n       "image":"{image_id}",\n\t   "image_name":"TEST",'
        '\n\t   "description":"note"\n}\n'
    )
    reply = await tenant.curl("PUT", "/images", body)
    assert reply.status == 200, reply
    assert reply.body["action"] == "ModifyImageAttributes"
    assert reply.body["status"] == "successful" and reply.body["resource_ids"] == [image_id]
    image = await tenant.image(image_id)
    assert (image["image_name"], image["description"]) == ("TEST", "note")
    only_description = await tenant.call(
        "PUT", "/images", json={"image": image_id, "description": ""}
    )
    assert only_description.status == 200, only_description
    image = await tenant.image(image_id)
    assert (image["image_name"], image["description"]) == ("TEST", "")


async def test_modify_is_validated_and_changes_nothing_on_error(
    tenant: Tenant, new_tenant: TenantFactory, raw_disk: Path
) -> None:
    image_id = await tenant.captured_image(raw_disk, "keep")
    cases: list[tuple[dict[str, Any], int, int, str]] = [
        ({"image": image_id}, 400, 1100, "image_name"),
        ({"image_name": "x"}, 400, 1100, "image"),
        ({"image": image_id, "image_name": "n" * 129}, 400, 1100, "image_name"),
        ({"image": image_id, "description": "d" * 1025}, 400, 1100, "description"),
        ({"image": "img-nothere", "image_name": "x"}, 404, 2100, "img-nothere"),
    ]
    for body, status, ret_code, named in cases:
        reply = await tenant.call("PUT", "/images", json=body)
        assert (reply.status, reply.body["ret_code"]) == (status, ret_code), (body, reply)
        assert named in reply.body["message"], (body, reply)
    other = await new_tenant()
    foreign = await other.call("PUT", "/images", json={"image": image_id, "image_name": "x"})
    assert (foreign.status, foreign.body["ret_code"]) == (404, 2100), foreign
    assert (await tenant.image(image_id))["image_name"] == "keep"
    jobs = await tenant.call("GET", "/jobs", params={"action": "ModifyImageAttributes"})
    assert jobs.body["total_count"] == 0


async def test_a_public_image_of_another_tenant_is_visible_but_not_theirs_to_change(
    tenant: Tenant, new_tenant: TenantFactory, raw_disk: Path, database: Database
) -> None:
    other = await new_tenant()
    theirs = await other.captured_image(raw_disk, "shared")
    publish(database, theirs, "public")  # as if the operator had published it
    try:
        assert (await tenant.image(theirs))["owner"] == other.account_id
        delete = await tenant.call("DELETE", f"/images/{theirs}")
        assert (delete.status, delete.body["ret_code"]) == (403, 1400), delete
        modify = await tenant.call("PUT", "/images", json={"image": theirs, "image_name": "mine"})
        assert (modify.status, modify.body["ret_code"]) == (403, 1400), modify
    finally:
        # Public images are every tenant's to see: leave none behind for this module's other tests.
        publish(database, theirs, "private")
    image = await other.image(theirs)
    assert (image["status"], image["image_name"]) == ("available", "shared")


def publish(database: Database, image_id: str, visibility: str) -> None:
    with database.transaction() as session:
        session.execute(
            update(Image).where(Image.image_id == image_id).values(visibility=visibility)
        )


async def test_writes_survive_their_database_connections_being_killed(
    tenant: Tenant, disk_factory: Any, database: Database
) -> None:
    """As after a PostgreSQL restart: the API's pooled connections are dead, it pings
    none of them under load, and each write runs its unit once more on a new one."""
    if database.engine.dialect.name != "postgresql":
        pytest.skip("SQLite has no connection to lose")
    first = await tenant.captured_image(disk_factory())
    second = await tenant.captured_image(disk_factory())
    for image_id in (first, second):
        assert terminate_other_connections(database) > 0, "the captures left pooled connections"
        reply = await tenant.call("DELETE", f"/images/{image_id}")
        assert reply.status == 202, reply
        assert (await tenant.wait_job(reply.body["job_id"]))["status"] == "successful"


def terminate_other_connections(database: Database) -> int:
    """Terminate every other session on this test database; how many there were."""
    statement = text(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    with database.engine.connect() as connection:
        return int(connection.execute(statement).scalar_one())
