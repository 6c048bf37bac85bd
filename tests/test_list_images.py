"""GET /images: who sees what, the nine filters, paging and order, the three list forms."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from imagesvc.bootstrap import Services
from models import ids
from models.db import Database
from models.images import SystemImageSpec
from models.reads import APPLICATION_NAME
from models.states import ProcessorType
from models.tables import Image
from tests.support.contract import Reply, parse_time
from tests.support.disks import MiB, make_raw_disk
from tests.support.processes import ServiceProcess
from tests.support.tenants import Tenant, TenantFactory
from workers.system_images import import_system_image

# Its system images are public: every tenant of the deployment would see them.
pytestmark = pytest.mark.own_deployment

IMAGE_FIELDS = {
    "image_id",
    "image_name",
    "description",
    "size",
    "processor_type",
    "platform",
    "os_family",
    "visibility",
    "provider",
    "owner",
    "recommended_type",
    "status",
    "transition_status",
    "create_time",
    "status_time",
    "default_user",
    "default_passwd",
}


@dataclass(frozen=True)
class SystemImages:
    """Two public images the platform ships, named with a word no other test uses."""

    word: str
    ubuntu64: str
    centos32: str


@pytest.fixture(scope="module")
def system_images(
    services: Services, worker: ServiceProcess, tmp_path_factory: pytest.TempPathFactory
) -> SystemImages:
    word = f"sys{secrets.token_hex(4)}"
    disk = make_raw_disk(tmp_path_factory.mktemp("system") / "base.raw", size=MiB, regions=1)

    def make(name: str, os_family: str, processor_type: str) -> str:
        spec = SystemImageSpec(
            zone="ac1",
            image_name=f"{name}-{word}",
            os_family=os_family,
            processor_type=processor_type,
        )
        return import_system_image(services, disk, spec)

    return SystemImages(word, make("Ubuntu", "ubuntu", "64bit"), make("CentOS", "centos", "32bit"))


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    """A small real raw disk; captures of it are quick. Many instances may share it."""
    return make_raw_disk(tmp_path / f"small-{secrets.token_hex(3)}.raw", size=MiB, regions=1)


def word() -> str:
    return f"w{secrets.token_hex(4)}"


async def start_capture(tenant: Tenant, disk: Path, name: str, **attrs: Any) -> tuple[str, str]:
    """POST /images for a new instance of ``disk``; (image_id, job_id)."""
    reply = await tenant.capture(tenant.add_instance(disk, **attrs), name)
    assert reply.status == 202, reply
    return str(reply.body["image_id"]), str(reply.body["job_id"])


async def captured(tenant: Tenant, disk: Path, *names: str, **attrs: Any) -> list[str]:
    """Capture one image per name, in that order, and wait until all are available."""
    started = [await start_capture(tenant, disk, name, **attrs) for name in names]
    jobs = await asyncio.gather(*(tenant.wait_job(job_id) for _, job_id in started))
    assert all(job["status"] == "successful" for job in jobs), jobs
    return [image_id for image_id, _ in started]


async def ceased_image(tenant: Tenant, tmp_path: Path) -> str:
    """An image whose capture failed because the instance's disk vanished."""
    vanished = make_raw_disk(tmp_path / f"gone-{secrets.token_hex(3)}.raw", MiB, 1)
    instance_id = tenant.add_instance(vanished)
    vanished.unlink()
    reply = await tenant.capture(instance_id, "doomed")
    assert reply.status == 202, reply
    job = await tenant.wait_job(reply.body["job_id"])
    assert job["status"] == "failed", job
    return str(reply.body["image_id"])


def insert_images(
    database: Database,
    owner: str,
    count: int,
    create_time: datetime | None = None,
    *,
    name: str = "row",
    public: bool = False,
) -> list[str]:
    """Image rows written straight into the table: for paging and ordering edge cases,
    and public images other than the system images a worker imports."""
    times = {"create_time": create_time, "status_time": create_time} if create_time else {}
    rows = [
        Image(
            image_id=ids.image_id(),
            zone="ac1",
            owner=owner,
            image_name=f"{name}-{index}",
            processor_type="64bit",
            platform="linux",
            os_family="linux",
            visibility="public" if public else "private",
            provider="system" if public else "self",
            status="available",
            **times,
        )
        for index in range(count)
    ]
    with database.transaction() as session:
        session.add_all(rows)
    return [row.image_id for row in rows]


async def listed(tenant: Tenant, params: Any = None) -> Reply:
    reply = await tenant.call("GET", "/images", params=params)
    assert reply.status == 200, reply
    return reply


def ids_of(reply: Reply) -> list[str]:
    return [image["image_id"] for image in reply.body["images"]]


async def test_a_tenant_sees_its_own_and_public_images_but_not_another_tenants(
    tenant: Tenant, new_tenant: TenantFactory, disk: Path, system_images: SystemImages
) -> None:
    other = await new_tenant()
    token = word()
    (mine,) = await captured(tenant, disk, f"mine-{token}")
    (theirs,) = await captured(other, disk, f"theirs-{token}")
    public = system_images.ubuntu64
    everything = {"images": f"{mine},{theirs},{public}", "limit": "100"}

    seen = await listed(tenant, everything)
    assert set(ids_of(seen)) == {mine, public} and seen.body["total_count"] == 2, seen
    seen_by_other = await listed(other, everything)
    assert set(ids_of(seen_by_other)) == {theirs, public}, seen_by_other

    by_word = await listed(tenant, {"search_word": token})
    assert ids_of(by_word) == [mine] and by_word.body["total_count"] == 1, by_word
    by_their_id = await listed(tenant, {"search_word": theirs})
    assert by_their_id.body == {"images": [], "total_count": 0}
    own = await listed(tenant, {"provider": "self", "limit": "100"})
    assert ids_of(own) == [mine], own

    everyone = await listed(tenant, {"limit": "100"})
    assert mine in ids_of(everyone) and theirs not in ids_of(everyone)
    public_ones = await listed(tenant, {"search_word": system_images.word})
    assert set(ids_of(public_ones)) == {system_images.ubuntu64, system_images.centos32}
    for image in public_ones.body["images"]:
        assert (image["provider"], image["visibility"]) == ("system", "public")
        assert image["status"] == "available"


async def test_processor_type_os_family_visibility_and_provider_filters(
    tenant: Tenant, disk: Path, system_images: SystemImages
) -> None:
    (centos32,) = await captured(
        tenant, disk, "c32", os_family="centos", processor_type=ProcessorType.BIT32
    )
    (ubuntu64,) = await captured(tenant, disk, "u64", os_family="ubuntu")
    sys64, sys32 = system_images.ubuntu64, system_images.centos32
    scope = {"images": ",".join([centos32, ubuntu64, sys64, sys32]), "limit": "100"}
    cases: list[tuple[dict[str, str], set[str]]] = [
        ({}, {centos32, ubuntu64, sys64, sys32}),
        ({"processor_type": "32bit"}, {centos32, sys32}),
        ({"processor_type": "64bit"}, {ubuntu64, sys64}),
        ({"os_family": "centos"}, {centos32, sys32}),
        ({"os_family": "ubuntu"}, {ubuntu64, sys64}),
        ({"os_family": "windows"}, set()),
        ({"visibility": "public"}, {sys64, sys32}),
        ({"visibility": "private"}, {centos32, ubuntu64}),
        ({"provider": "system"}, {sys64, sys32}),
        ({"provider": "self"}, {centos32, ubuntu64}),
        ({"provider": "self", "os_family": "centos"}, {centos32}),
        ({"provider": "system", "processor_type": "64bit"}, {sys64}),
        ({"visibility": "public", "provider": "self"}, set()),
    ]
    for filters, expected in cases:
        reply = await listed(tenant, {**scope, **filters})
        assert set(ids_of(reply)) == expected, (filters, reply)
        assert reply.body["total_count"] == len(expected), (filters, reply)
        for image in reply.body["images"]:
            for name, value in filters.items():
                assert image[name] == value, (filters, image)


async def test_ceased_images_are_hidden_unless_asked_for_by_status_or_id(
    tenant: Tenant, disk: Path, tmp_path: Path
) -> None:
    (available,) = await captured(tenant, disk, "ok")
    ceased = await ceased_image(tenant, tmp_path)

    default = await listed(tenant, {"provider": "self"})
    assert ids_of(default) == [available] and default.body["total_count"] == 1, default
    asked = await listed(tenant, {"provider": "self", "status": "ceased"})
    assert ids_of(asked) == [ceased], asked
    assert asked.body["images"][0]["status"] == "ceased"
    by_id = await listed(tenant, {"images": ceased})
    assert ids_of(by_id) == [ceased], by_id
    both = await listed(tenant, {"images": f"{ceased},{available}"})
    assert set(ids_of(both)) == {ceased, available}, both
    narrowed = await listed(tenant, {"images": f"{ceased},{available}", "status": "available"})
    assert ids_of(narrowed) == [available], narrowed
    assert (await listed(tenant, {"search_word": ceased})).body["total_count"] == 0


async def test_status_filter_in_all_three_list_forms(
    tenant: Tenant, disk: Path, tmp_path: Path
) -> None:
    available, deleted = await captured(tenant, disk, "kept", "dropped")
    reply = await tenant.curl("DELETE", f"/images/{deleted}", "\n")
    assert reply.status == 202, reply
    assert (await tenant.wait_job(reply.body["job_id"]))["status"] == "successful"
    ceased = await ceased_image(tenant, tmp_path)

    only_deleted = await listed(tenant, {"provider": "self", "status": "deleted"})
    assert ids_of(only_deleted) == [deleted], only_deleted
    assert only_deleted.body["images"][0]["status"] == "deleted"

    repeated = await listed(
        tenant, [("provider", "self"), ("status", "available"), ("status", "deleted")]
    )
    assert set(ids_of(repeated)) == {available, deleted}, repeated
    assert repeated.body["total_count"] == 2

    joined = await listed(tenant, {"provider": "self", "status": "available,ceased"})
    assert set(ids_of(joined)) == {available, ceased}, joined

    array = await tenant.curl(
        "GET", "/images", json.dumps({"provider": "self", "status": ["deleted", "ceased"]})
    )
    assert array.status == 200, array
    assert set(ids_of(array)) == {deleted, ceased} and array.body["total_count"] == 2, array

    all_three = await listed(tenant, {"provider": "self", "status": "available,deleted,ceased"})
    assert all_three.body["total_count"] == 3
    pending = await listed(tenant, {"provider": "self", "status": "pending"})
    assert pending.body == {"images": [], "total_count": 0}


async def test_images_ids_in_all_three_list_forms(tenant: Tenant, disk: Path) -> None:
    a, b, c = await captured(tenant, disk, "a", "b", "c")

    array = await tenant.curl("GET", "/images", json.dumps({"images": [a, b]}))
    assert array.status == 200, array
    assert set(ids_of(array)) == {a, b} and array.body["total_count"] == 2, array

    joined = await listed(tenant, {"images": f"{a},{b}"})
    assert set(ids_of(joined)) == {a, b}, joined

    repeated = await listed(tenant, [("images", a), ("images", c)])
    assert set(ids_of(repeated)) == {a, c}, repeated

    joined_in_body = await tenant.curl("GET", "/images", json.dumps({"images": f"{b},{c}"}))
    assert set(ids_of(joined_in_body)) == {b, c}, joined_in_body

    as_sdk_json = await tenant.call("GET", "/images", json={"images": [c]})
    assert ids_of(as_sdk_json) == [c], as_sdk_json

    unknown = await listed(tenant, {"images": f"{a},img-zzzzzzzz"})
    assert ids_of(unknown) == [a], unknown


async def test_search_word_matches_id_or_name_case_insensitively(
    tenant: Tenant, disk: Path
) -> None:
    token = word()
    upper, lower, plain, underscore, percent = await captured(
        tenant,
        disk,
        f"Web-{token.upper()}",
        f"db-{token}-x",
        "plain",
        f"{token}-a_b",
        f"{token}-50%",
    )
    by_name = await listed(tenant, {"search_word": token})
    assert set(ids_of(by_name)) == {upper, lower, underscore, percent}, by_name
    by_upper = await listed(tenant, {"search_word": token.upper()})
    assert set(ids_of(by_upper)) == set(ids_of(by_name)), by_upper
    by_id_part = await listed(tenant, {"search_word": plain[4:].upper()})
    assert ids_of(by_id_part) == [plain], by_id_part
    by_whole_id = await listed(tenant, {"search_word": plain})
    assert ids_of(by_whole_id) == [plain], by_whole_id
    by_name_part = await listed(tenant, {"provider": "self", "search_word": "LAI"})
    assert ids_of(by_name_part) == [plain], by_name_part

    # LIKE's wildcards are ordinary characters in a search word.
    literal_underscore = await listed(tenant, {"provider": "self", "search_word": "a_b"})
    assert ids_of(literal_underscore) == [underscore], literal_underscore
    literal_percent = await listed(tenant, {"provider": "self", "search_word": "0%"})
    assert ids_of(literal_percent) == [percent], literal_percent
    nothing = await listed(tenant, {"search_word": f"no-such-{token}"})
    assert nothing.body == {"images": [], "total_count": 0}


async def test_a_search_total_follows_every_change_to_public_images_at_once(
    tenant: Tenant, database: Database, new_tenant: TenantFactory
) -> None:
    """PostgreSQL remembers the public part of a search's total per generation of the
    zone's public images (migration 0012): each change below must show in the very
    next listing, as on SQLite, which counts every time."""
    token = word()
    first, second = insert_images(database, "system", 2, name=f"pub-{token}", public=True)
    (own,) = insert_images(database, tenant.account_id, 1, name=f"own-{token}")

    async def search() -> tuple[set[str], int]:
        reply = await listed(tenant, {"search_word": token.upper(), "limit": 100})
        return set(ids_of(reply)), reply.body["total_count"]

    stranger = await new_tenant()
    (theirs,) = insert_images(database, stranger.account_id, 1, name=f"theirs-{token}")
    try:
        assert await search() == ({first, second, own}, 3)
        assert await search() == ({first, second, own}, 3)  # the same, remembered or not
        set_image(database, first, status="ceased")
        assert await search() == ({second, own}, 2)
        set_image(database, second, image_name="renamed")
        assert await search() == ({own}, 1)
        set_image(database, own, visibility="public")
        assert await search() == ({own}, 1)
        (third,) = insert_images(database, "system", 1, name=f"new-{token}", public=True)
        assert await search() == ({own, third}, 2)
        delete_images(database, third)
        assert await search() == ({own}, 1)
    finally:  # the other tests of this deployment see only its system images as public
        delete_images(database, first, second, own, theirs)


async def test_search_pages_cover_every_match_once_at_any_offset(
    tenant: Tenant, database: Database
) -> None:
    """Pages of a search near the start take their public keys from what PostgreSQL
    remembers with the generation; pages further on read them from the index: both
    must join up, each match once, in order."""
    token = word()
    own = insert_images(database, tenant.account_id, 205, name=f"many-{token}")
    public = insert_images(database, "system", 3, name=f"many-{token}", public=True)
    try:
        pages = []
        for offset in (0, 100, 200):
            params = {"search_word": token, "limit": 100, "offset": offset}
            reply = await listed(tenant, params)
            assert reply.body["total_count"] == 208, reply
            pages += ids_of(reply)
        assert sorted(pages) == sorted(own + public), pages
        whole = ids_of(await listed(tenant, {"search_word": token, "limit": 100}))
        assert pages[:100] == whole
    finally:
        delete_images(database, *own, *public)


def delete_images(database: Database, *image_ids: str) -> None:
    with database.transaction() as session:
        for image_id in image_ids:
            session.execute(text("DELETE FROM images WHERE image_id = :id"), {"id": image_id})


def set_image(database: Database, image_id: str, **values: str) -> None:
    """Change an image's row in place, as an operator's or a worker's update would."""
    with database.transaction() as session:
        image = session.get(Image, image_id)
        assert image is not None
        for name, value in values.items():
            setattr(image, name, value)


async def test_newest_first_and_total_count_is_the_whole_filtered_set(
    tenant: Tenant, disk: Path
) -> None:
    token = word()
    made = await captured(tenant, disk, *(f"{token}-{index}" for index in range(5)))
    newest_first = made[::-1]

    whole = await listed(tenant, {"provider": "self", "limit": "100"})
    assert ids_of(whole) == newest_first, whole
    times = [image["create_time"] for image in whole.body["images"]]
    assert times == sorted(times, reverse=True)

    pages = []
    for offset in (0, 2, 4):
        page = await listed(tenant, {"provider": "self", "offset": str(offset), "limit": "2"})
        assert page.body["total_count"] == 5, page
        pages.extend(ids_of(page))
    assert pages == newest_first

    past_the_end = await listed(tenant, {"provider": "self", "offset": "5"})
    assert past_the_end.body == {"images": [], "total_count": 5}
    filtered = await listed(tenant, {"search_word": f"{token}-", "limit": "1", "offset": "1"})
    assert ids_of(filtered) == [newest_first[1]] and filtered.body["total_count"] == 5
    # The seed's GET sends offset and limit as strings in the body.
    body = json.dumps({"provider": "self", "offset": "1", "limit": "2"})
    from_body = await tenant.curl("GET", "/images", body)
    assert ids_of(from_body) == newest_first[1:3] and from_body.body["total_count"] == 5


async def test_images_created_at_the_same_time_are_ordered_by_id_descending(
    tenant: Tenant, database: Database
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    older = insert_images(database, tenant.account_id, 1, now - timedelta(seconds=1))
    tied = insert_images(database, tenant.account_id, 6, now)
    reply = await listed(tenant, {"provider": "self", "limit": "100"})
    assert ids_of(reply) == [*sorted(tied, reverse=True), *older], reply
    second_page = await listed(tenant, {"provider": "self", "offset": "3", "limit": "3"})
    assert ids_of(second_page) == sorted(tied, reverse=True)[3:], second_page


async def test_limit_above_100_is_served_as_100(
    tenant: Tenant, disk: Path, database: Database
) -> None:
    made = await captured(tenant, disk, "one", "two", "three")
    small = await listed(tenant, {"provider": "self", "limit": "500"})
    assert ids_of(small) == made[::-1] and small.body["total_count"] == 3, small

    insert_images(database, tenant.account_id, 102)
    capped = await listed(tenant, {"provider": "self", "limit": "500"})
    assert len(capped.body["images"]) == 100 and capped.body["total_count"] == 105
    huge = await listed(tenant, {"provider": "self", "limit": "99999999999999999999"})
    assert len(huge.body["images"]) == 100
    in_body = await tenant.curl("GET", "/images", '{"provider": "self", "limit": 1000}')
    assert len(in_body.body["images"]) == 100, in_body.status
    default = await listed(tenant, {"provider": "self"})
    assert len(default.body["images"]) == 10 and default.body["total_count"] == 105
    rest = await listed(tenant, {"provider": "self", "offset": "100", "limit": "100"})
    assert len(rest.body["images"]) == 5


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"limit": "-1"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"offset": "abc"}, "offset"),
        ({"offset": "-1"}, "offset"),
        ({"status": "bogus"}, "status"),
        ({"status": "available,bogus"}, "status"),
        ({"processor_type": "16bit"}, "processor_type"),
        ({"visibility": "everyone"}, "visibility"),
        ({"provider": "nobody"}, "provider"),
        ({"images": "img-ok,not an id!"}, "images"),
    ],
)
async def test_a_bad_parameter_is_a_400_naming_it(
    tenant: Tenant, params: dict[str, str], name: str
) -> None:
    as_query = await tenant.call("GET", "/images", params=params)
    assert (as_query.status, as_query.body["ret_code"]) == (400, 1100), as_query
    assert name in as_query.body["message"], as_query
    as_body = await tenant.curl("GET", "/images", json.dumps(params))
    assert (as_body.status, as_body.body["ret_code"]) == (400, 1100), as_body
    assert name in as_body.body["message"], as_body


async def test_an_offset_past_the_largest_database_integer_is_a_400_naming_it(
    tenant: Tenant,
) -> None:
    """Out of range is a 400 (contract); the largest offset a database can take is served."""
    reply = await tenant.call("GET", "/images", params={"offset": "99999999999999999999"})
    assert (reply.status, reply.body["ret_code"]) == (400, 1100), reply
    assert "offset" in reply.body["message"], reply
    largest = await tenant.call("GET", "/images", params={"offset": str(2**31 - 1)})
    assert (largest.status, largest.body["images"]) == (200, []), largest


async def test_filters_in_a_json_body_on_get_work_like_query_parameters(
    tenant: Tenant, disk: Path
) -> None:
    (centos,) = await captured(tenant, disk, "c", os_family="centos")
    (ubuntu,) = await captured(tenant, disk, "u", os_family="ubuntu")
    filters = {"provider": "self", "os_family": "centos"}

    query = await listed(tenant, filters)
    form_body = await tenant.curl("GET", "/images", json.dumps(filters, indent=4))
    json_body = await tenant.call("GET", "/images", json=filters)
    assert ids_of(query) == [centos], query
    assert form_body == query and json_body == query

    empty = await tenant.curl("GET", "/images", "\n")
    plain = await listed(tenant)
    assert empty.status == 200, empty
    assert empty.body == plain.body
    assert ids_of(plain)[:2] == [ubuntu, centos], "the newest images come first"
    self_only = await tenant.curl("GET", "/images", '\n{\n  "provider": "self"\n}\n')
    assert ids_of(self_only) == [ubuntu, centos], self_only


async def test_an_unknown_zone_is_404_naming_it(tenant: Tenant) -> None:
    elsewhere = dataclasses.replace(tenant, zone="zz9")
    reply = await elsewhere.call("GET", "/images")
    assert reply.status == 404, reply
    assert reply.body == {"ret_code": 2100, "message": "zone zz9 not found"}


async def test_a_bad_token_is_a_401_before_a_bad_parameter_or_an_unknown_zone(
    tenant: Tenant,
) -> None:
    """The listings check the token in their own statement; what is refused before it
    still answers 401 first, as every other route does."""
    forged = dataclasses.replace(tenant, token=secrets.token_urlsafe(32))
    for caller, path, params in (
        (forged, "/images", {"limit": "x"}),
        (dataclasses.replace(forged, zone="zz9"), "/images", None),
        (forged, "/jobs", {"offset": "-1"}),
        (forged, "/job/not_an_id!", None),
        (forged, "/job/j-nothere", None),
    ):
        reply = await caller.call("GET", path, params=params)
        assert reply.status == 401, (path, params, reply)
        assert reply.body == {"ret_code": 1200, "message": "invalid access token"}, reply
    assert (await tenant.call("GET", "/images", params={"limit": "x"})).status == 400


async def test_listings_survive_their_database_connections_being_killed(
    tenant: Tenant, database: Database, disk: Path
) -> None:
    """As after a PostgreSQL restart: the read path's pooled connections are dead, and
    the next listing runs once more on a new one instead of failing."""
    if database.engine.dialect.name != "postgresql":
        pytest.skip("the asyncpg read path is PostgreSQL's")
    (image_id,) = await captured(tenant, disk, "survivor")
    job_id = (await tenant.call("GET", "/jobs")).body["jobs"][0]["job_id"]
    for _ in range(2):
        killed = terminate_read_connections(database)
        assert killed > 0, "the listings above left pooled connections"
        assert ids_of(await listed(tenant, {"provider": "self"})) == [image_id]
        assert (await tenant.call("GET", "/jobs")).status == 200
        assert (await tenant.call("GET", f"/job/{job_id}")).status == 200
        assert ids_of(await listed(tenant, {"search_word": "survivor"})) == [image_id]


def terminate_read_connections(database: Database) -> int:
    """Terminate this database's sessions of the API's read path; how many there were."""
    statement = text(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE datname = current_database() AND application_name = :name"
    )
    with database.engine.connect() as connection:
        return int(connection.execute(statement, {"name": APPLICATION_NAME}).scalar_one())


async def test_a_second_zone_is_served_and_kept_apart(
    tenant: Tenant, disk: Path, system_images: SystemImages
) -> None:
    in_ac2 = dataclasses.replace(tenant, zone="ac2")
    (first,) = await captured(tenant, disk, "in-ac1")
    (second,) = await captured(in_ac2, disk, "in-ac2")

    ac1 = await listed(tenant, {"provider": "self"})
    assert ids_of(ac1) == [first], ac1
    ac2 = await listed(in_ac2, {"provider": "self"})
    assert ids_of(ac2) == [second], ac2
    crossed = await listed(in_ac2, {"images": f"{first},{system_images.ubuntu64}"})
    assert crossed.body == {"images": [], "total_count": 0}, crossed
    assert (await listed(tenant, {"images": second})).body["total_count"] == 0
    system_in_ac2 = await listed(in_ac2, {"search_word": system_images.word})
    assert system_in_ac2.body["total_count"] == 0, system_in_ac2


async def test_an_image_has_every_field_of_the_contract_with_utc_times(
    tenant: Tenant, disk: Path, system_images: SystemImages
) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    (image_id,) = await captured(
        tenant, disk, "fields", os_family="debian", default_user="admin", recommended_type="c2m4"
    )
    after = datetime.now(UTC)
    reply = await listed(tenant, {"images": f"{image_id},{system_images.centos32}"})
    images = {image["image_id"]: image for image in reply.body["images"]}
    mine, system = images[image_id], images[system_images.centos32]

    for image in (mine, system):
        assert set(image) >= IMAGE_FIELDS, IMAGE_FIELDS - set(image)
        assert image["image_id"].startswith("img-")
        assert isinstance(image["size"], int) and image["size"] >= 1
        for name in IMAGE_FIELDS - {"size"}:
            assert isinstance(image[name], str), (name, image[name])
        assert parse_time(image["status_time"]) >= parse_time(image["create_time"])

    assert before <= parse_time(mine["create_time"]) <= after, (before, mine, after)
    assert before <= parse_time(mine["status_time"]) <= after + timedelta(seconds=1)
    expected = {
        "image_name": "fields",
        "description": "",
        "processor_type": "64bit",
        "platform": "linux",
        "os_family": "debian",
        "visibility": "private",
        "provider": "self",
        "owner": tenant.account_id,
        "recommended_type": "c2m4",
        "status": "available",
        "transition_status": "",
        "default_user": "admin",
    }
    assert {name: mine[name] for name in expected} == expected
    assert (system["provider"], system["visibility"]) == ("system", "public")
    assert (system["processor_type"], system["os_family"]) == ("32bit", "centos")
    assert system["image_name"] == f"CentOS-{system_images.word}"
