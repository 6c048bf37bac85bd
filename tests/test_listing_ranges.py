"""The listing's two visibility ranges (own images, others' public ones) add up to the rule.

models.images.list_images reads the caller's own images and other owners'
public images separately, merges the pages and sums the counts; these tests
hold that to the plain rule of models.scoping.visible_images.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from models.db import Database
from models.images import ImageFilters, list_images
from models.scoping import Caller, visible_images
from models.states import ImageStatus, ProcessorType, Provider, Visibility
from models.tables import Image

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _image(zone: str, owner: str, name: str, minutes: int, **attrs: str) -> Image:
    values = {
        "visibility": Visibility.PRIVATE.value,
        "provider": "self",
        "status": ImageStatus.AVAILABLE.value,
        **attrs,
    }
    return Image(
        image_id=f"img-{secrets.token_hex(4)}",
        zone=zone,
        owner=owner,
        image_name=name,
        processor_type="64bit",
        platform="linux",
        os_family="ubuntu",
        create_time=T0 + timedelta(minutes=minutes),
        **values,
    )


@pytest.fixture
def zone_with_images(database: Database) -> tuple[Caller, dict[str, str]]:
    """A fresh zone: the caller's private and public images, another tenant's, the system's."""
    zone = f"z{secrets.token_hex(6)}"
    public = {"visibility": Visibility.PUBLIC.value}
    rows = {
        "mine": _image(zone, "me", "mine", 1),
        "mine_public": _image(zone, "me", "mine public", 2, **public),
        "theirs": _image(zone, "them", "theirs", 3),
        "theirs_public": _image(zone, "them", "50%_off", 4, **public),
        "system": _image(zone, "system", "ubuntu", 4, provider="system", **public),
        "ceased_public": _image(zone, "them", "gone", 5, status="ceased", **public),
        "elsewhere": _image("ac1", "me", "other zone", 6),
    }
    with database.transaction() as session:
        session.add_all(rows.values())
    return Caller("me", zone), {name: row.image_id for name, row in rows.items()}


def _by_the_rule(database: Database, caller: Caller) -> list[str]:
    """Visible, not ceased, newest first: the rule applied to the whole table."""
    stmt = (
        visible_images(caller)
        .where(Image.status != ImageStatus.CEASED.value)
        .order_by(Image.create_time.desc(), Image.image_id.desc())
    )
    with database.reading() as session:
        return [image.image_id for image in session.scalars(stmt)]


def test_every_page_and_the_total_match_the_visibility_rule(
    database: Database, zone_with_images: tuple[Caller, dict[str, str]]
) -> None:
    caller, ids = zone_with_images
    expected = _by_the_rule(database, caller)
    wanted = {ids[name] for name in ("mine", "mine_public", "theirs_public", "system")}
    assert set(expected) == wanted
    for offset in range(6):
        for limit in range(4):
            with database.reading() as session:
                rows, total = list_images(session, caller, ImageFilters(offset=offset, limit=limit))
            assert total == len(expected), (offset, limit)
            page = [row.image_id for row in rows]
            assert page == expected[offset : offset + limit], (offset, limit)


def test_the_callers_own_public_image_is_listed_and_counted_once(
    database: Database, zone_with_images: tuple[Caller, dict[str, str]]
) -> None:
    caller, ids = zone_with_images
    with database.reading() as session:
        rows, total = list_images(
            session, caller, ImageFilters(visibility=Visibility.PUBLIC, limit=100)
        )
    assert [row.image_id for row in rows].count(ids["mine_public"]) == 1
    assert total == len(rows) == 3


FILTERS: list[dict[str, Any]] = [
    {},
    {"status": [ImageStatus.AVAILABLE, ImageStatus.CEASED]},
    {"os_family": "UBUNTU"},
    {"processor_type": ProcessorType.BIT64},
    {"visibility": Visibility.PUBLIC},
    {"visibility": Visibility.PRIVATE},
    {"provider": Provider.SYSTEM},
    {"search_word": "o"},
]


def _matches(image: Image, caller: Caller, filters: dict[str, Any]) -> bool:
    """The filters of GET /images applied to one row, in Python."""
    checks = [
        image.zone == caller.zone,
        image.owner == caller.account_id or image.visibility == Visibility.PUBLIC.value,
        image.status in filters.get("status", ["available", "deleted", "pending"]),
        image.os_family.lower() == filters.get("os_family", image.os_family).lower(),
        image.processor_type == filters.get("processor_type", image.processor_type),
        image.visibility == filters.get("visibility", image.visibility),
        image.provider == filters.get("provider", image.provider),
        filters.get("search_word", "") in image.image_name.lower() + " " + image.image_id,
    ]
    return all(checks)


def test_totals_stay_exact_while_public_images_change(
    database: Database, zone_with_images: tuple[Caller, dict[str, str]]
) -> None:
    """On PostgreSQL public images are counted by triggers: every change must reach them."""
    caller, ids = zone_with_images
    changes: list[dict[str, Any]] = [
        {},
        {ids["system"]: {"status": ImageStatus.CEASED.value}},
        {ids["theirs_public"]: {"visibility": Visibility.PRIVATE.value}},
        {ids["mine"]: {"visibility": Visibility.PUBLIC.value, "os_family": "CentOS"}},
        {ids["ceased_public"]: {"status": ImageStatus.AVAILABLE.value}},
        {ids["mine_public"]: None},
    ]
    for change in changes:
        with database.transaction() as session:
            for image_id, values in change.items():
                image = session.get(Image, image_id)
                assert image is not None
                if values is None:
                    session.delete(image)
                else:
                    for name, value in values.items():
                        setattr(image, name, value)
        with database.reading() as session:
            rows = session.scalars(select(Image).where(Image.zone == caller.zone)).all()
            for filters in FILTERS:
                _, total = list_images(session, caller, ImageFilters(**filters))
                expected = sum(_matches(row, caller, filters) for row in rows)
                assert total == expected, (change, filters)


def test_search_word_takes_percent_and_underscore_literally(
    database: Database, zone_with_images: tuple[Caller, dict[str, str]]
) -> None:
    caller, ids = zone_with_images
    with database.reading() as session:
        rows, total = list_images(session, caller, ImageFilters(search_word="0%_O"))
    assert [row.image_id for row in rows] == [ids["theirs_public"]] and total == 1
