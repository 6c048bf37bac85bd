"""Unfiltered listings on PostgreSQL, and those filtered by attributes, take their
public entries from the zone's public catalogue (models.catalogue.PublicCatalogues):
the same bytes as the page statement's, at any offset, and every change to a
public image seen by the very next request."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from api import pages
from models import images
from models.accounts import token_digest
from models.catalogue import PublicCatalogues
from models.db import Database
from models.images import ImageFilters
from models.reads import Reads, reads_for
from models.states import ImageStatus, ProcessorType, Provider, Visibility
from models.tables import Image
from tests.support.tenants import Tenant, TenantFactory
from tests.test_list_images import delete_images, ids_of, insert_images, listed, set_image

# It publishes images: every tenant of the deployment would see them.
pytestmark = pytest.mark.own_deployment

ZONE = "ac1"
UNFILTERED = ImageFilters()


@pytest.fixture
async def reads(database: Database) -> AsyncIterator[Reads]:
    """A read path of its own: a catalogue no request of the app has built."""
    reads = reads_for(database)
    await reads.open()
    yield reads
    await reads.close()


def postgresql(database: Database) -> bool:
    return database.engine.dialect.name == "postgresql"


def require_catalogue(database: Database) -> None:
    """The catalogue is PostgreSQL's: on SQLite both sides of these comparisons would be
    the same page statement, and the test could not fail."""
    if not postgresql(database):
        pytest.skip("the public catalogue is PostgreSQL's; SQLite has one listing path")


@pytest.fixture
async def mixed(
    database: Database, tenant: Tenant, new_tenant: TenantFactory
) -> AsyncIterator[int]:
    """Own and public images interleaved, with ties in create_time inside and across
    both parts and times a microsecond apart, an own public image, hidden ones and
    a stranger's; how many the tenant sees."""
    now = datetime.now(UTC).replace(microsecond=0)
    stranger = await new_tenant()
    made = [
        *insert_images(database, "system", 6, now, name="pub-tied", public=True),
        *insert_images(database, tenant.account_id, 4, now, name="own-tied"),
        *insert_images(database, tenant.account_id, 1, now, name="own-public", public=True),
        *insert_images(database, stranger.account_id, 2, now, name="theirs"),
    ]
    for step in range(1, 8):
        at = now - timedelta(seconds=step)
        made += insert_images(database, "system", step % 3, at, name="pub", public=True)
        made += insert_images(database, tenant.account_id, step % 2, at, name="own")
    # A microsecond apart, across both parts: the listing keys' time is in microseconds.
    near = now - timedelta(seconds=8)
    made += insert_images(database, "system", 1, near + timedelta(microseconds=1), public=True)
    made += insert_images(database, tenant.account_id, 1, near, name="own-micro")
    made += insert_images(database, tenant.account_id, 1, near + timedelta(microseconds=2))
    hidden = insert_images(database, "system", 1, now, public=True)
    hidden += insert_images(database, tenant.account_id, 1, now)
    for image_id in hidden:
        set_image(database, image_id, status="ceased")
    yield 6 + 4 + 1 + sum(step % 3 + step % 2 for step in range(1, 8)) + 3
    delete_images(database, *made, *hidden)


async def page_bytes(
    reads: Reads,
    tenant: Tenant,
    offset: int,
    limit: int,
    *,
    remembered: bool,
    filters: ImageFilters = UNFILTERED,
) -> bytes:
    render = pages.image_json if remembered else None
    filters = dataclasses.replace(filters, offset=offset, limit=limit)
    digest = token_digest(tenant.token)
    listed_ = await images.list_images_as_bearer(reads, digest, ZONE, filters, render)
    on_catalogue = remembered and reads.dialect_name == "postgresql" and offset < listed_.total
    assert (listed_.rendered is not None) == on_catalogue, (filters, offset, limit)
    return pages.listed_images_page(listed_)


@pytest.fixture
async def varied(database: Database, tenant: Tenant, mixed: int) -> AsyncIterator[int]:
    """``mixed``, its images given other attributes here and there, own and public
    alike: 32-bit, Ubuntu (in mixed case), deprecated, suspended, and an image of
    the Debian family; how many the tenant sees."""
    with database.reading() as session:
        rows = session.execute(
            select(Image.image_id).where(Image.zone == ZONE).order_by(Image.image_id)
        ).all()
    for index, (image_id,) in enumerate(rows):
        changes = {}
        if index % 2:
            changes["processor_type"] = "32bit"
        if index % 3 == 0:
            changes["os_family"] = "Ubuntu" if index % 2 else "ubuntu"
        if index % 5 == 1:
            changes["status"] = "deprecated" if index % 2 else "suspended"
        if index == 7:
            changes["os_family"] = "DEBIAN"
        if changes:
            set_image(database, image_id, **changes)
    yield mixed


# Every filter the catalogue answers, alone and together (catalogue.entry_filter).
CATALOGUED_FILTERS = (
    ImageFilters(provider=Provider.SYSTEM),
    ImageFilters(provider=Provider.SELF),
    ImageFilters(processor_type=ProcessorType.BIT32),
    ImageFilters(os_family="UBUNTU"),
    ImageFilters(os_family="debian"),
    ImageFilters(visibility=Visibility.PUBLIC),
    ImageFilters(visibility=Visibility.PRIVATE),
    ImageFilters(status=[ImageStatus.AVAILABLE]),
    ImageFilters(status=[ImageStatus.DEPRECATED, ImageStatus.SUSPENDED]),
    ImageFilters(
        processor_type=ProcessorType.BIT64, os_family="ubuntu", status=[ImageStatus.AVAILABLE]
    ),
)


async def test_pages_on_the_catalogue_are_byte_for_byte_the_page_statements(
    reads: Reads, tenant: Tenant, mixed: int, database: Database
) -> None:
    require_catalogue(database)
    for limit in (1, 3, 10, 100):
        for offset in range(0, mixed + 2, max(1, limit // 2)):
            expected = await page_bytes(reads, tenant, offset, limit, remembered=False)
            got = await page_bytes(reads, tenant, offset, limit, remembered=True)
            assert got == expected, (offset, limit)
    assert reads.public_catalogues.get(ZONE) is not None
    whole = await listed(tenant, {"limit": 100})
    assert whole.body["total_count"] == mixed and len(ids_of(whole)) == mixed


async def test_filtered_pages_on_the_catalogue_are_byte_for_byte_the_page_statements(
    reads: Reads, tenant: Tenant, varied: int, database: Database
) -> None:
    require_catalogue(database)
    for filters in CATALOGUED_FILTERS:
        for limit in (1, 3, 100):
            for offset in range(0, varied + 2, max(1, limit // 2)):
                expected = await page_bytes(
                    reads, tenant, offset, limit, remembered=False, filters=filters
                )
                got = await page_bytes(
                    reads, tenant, offset, limit, remembered=True, filters=filters
                )
                assert got == expected, (filters, offset, limit)
    assert reads.public_catalogues.get(ZONE) is not None


async def test_an_os_family_python_may_lower_otherwise_keeps_the_page_statement(
    reads: Reads, tenant: Tenant, mixed: int, database: Database
) -> None:
    require_catalogue(database)
    (odd,) = insert_images(database, "system", 1, name="odd", public=True)
    set_image(database, odd, os_family="\u00dcNIX")
    try:
        for offset in (0, 1):
            filters = ImageFilters(os_family="\u00fcnix", offset=offset, limit=10)
            expected = await page_bytes(
                reads, tenant, offset, 10, remembered=False, filters=filters
            )
            digest = token_digest(tenant.token)
            got = await images.list_images_as_bearer(reads, digest, ZONE, filters, pages.image_json)
            # Python lowers it as PostgreSQL may not: the view is never trusted with it.
            assert got.rendered is None and pages.listed_images_page(got) == expected
            assert got.total == 1
    finally:
        delete_images(database, odd)


async def test_ids_searches_and_hidden_statuses_do_not_use_the_catalogue(
    reads: Reads, tenant: Tenant, mixed: int
) -> None:
    for filters in (
        ImageFilters(search_word="pub", limit=100),
        ImageFilters(status=[ImageStatus.CEASED], limit=100),
        ImageFilters(status=[ImageStatus.AVAILABLE, ImageStatus.CEASED], limit=100),
    ):
        digest = token_digest(tenant.token)
        got = await images.list_images_as_bearer(reads, digest, ZONE, filters, pages.image_json)
        assert got.rendered is None and got.rows, filters
    assert reads.public_catalogues.get(ZONE) is None


async def test_every_change_to_a_public_image_shows_in_the_next_page(
    tenant: Tenant, database: Database, mixed: int
) -> None:
    async def page() -> tuple[dict[str, str], int]:
        return await _names_and_total(tenant, {"limit": 100})

    before, total = await page()
    assert (await page()) == (before, total)  # the same, remembered or not
    (public,) = insert_images(database, "system", 1, name="later", public=True)
    try:
        names, total_now = await page()
        assert names.get(public) == "later-0" and total_now == total + 1
        set_image(database, public, image_name="renamed")
        assert (await page())[0].get(public) == "renamed"
        set_image(database, public, status="ceased")
        assert public not in (await page())[0]
        set_image(database, public, status="available", visibility="private")
        names, total_now = await page()
        assert public not in names and total_now == total
        set_image(database, public, visibility="public")
        assert public in (await page())[0]
    finally:
        delete_images(database, public)
    names, total_now = await page()
    assert public not in names and total_now == total


async def test_every_change_to_a_public_image_shows_in_the_next_filtered_page(
    tenant: Tenant, database: Database, mixed: int
) -> None:
    params = {"limit": 100, "processor_type": "32bit", "os_family": "ubuntu"}

    async def page() -> tuple[dict[str, str], int]:
        return await _names_and_total(tenant, params)

    before, total = await page()
    assert (await page()) == (before, total)  # the same, remembered or not
    (public,) = insert_images(database, "system", 1, name="later", public=True)
    try:
        assert (await page()) == (before, total)  # 64-bit, linux: not this listing's
        set_image(database, public, processor_type="32bit", os_family="Ubuntu")
        names, total_now = await page()
        assert names.get(public) == "later-0" and total_now == total + 1
        set_image(database, public, image_name="renamed")
        assert (await page())[0].get(public) == "renamed"
        set_image(database, public, os_family="debian")
        names, total_now = await page()
        assert public not in names and total_now == total
        set_image(database, public, os_family="ubuntu", status="ceased")
        assert (await page()) == (before, total)
        set_image(database, public, status="deprecated")
        assert public in (await page())[0]
        set_image(database, public, visibility="private")
        assert (await page()) == (before, total)
    finally:
        delete_images(database, public)
    assert (await page()) == (before, total)


async def test_a_zone_over_the_cap_keeps_the_page_statement(
    reads: Reads, tenant: Tenant, mixed: int, database: Database
) -> None:
    require_catalogue(database)
    reads.public_catalogues = PublicCatalogues(cap=1)  # the zone has more public images
    for offset in (0, 5):
        expected = await page_bytes(reads, tenant, offset, 10, remembered=False)
        filters = ImageFilters(offset=offset, limit=10)
        digest = token_digest(tenant.token)
        got = await images.list_images_as_bearer(reads, digest, ZONE, filters, pages.image_json)
        assert got.rendered is None and pages.listed_images_page(got) == expected
    assert reads.public_catalogues.get(ZONE) is None


async def _names_and_total(tenant: Tenant, params: dict[str, Any]) -> tuple[dict[str, str], int]:
    """A listing's page as image id to name, with its total_count."""
    reply = await listed(tenant, params)
    names = {image["image_id"]: image["image_name"] for image in reply.body["images"]}
    return names, reply.body["total_count"]
