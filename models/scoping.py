"""The one place that decides which rows a caller may see or change.

Every query for a user's resources starts from one of these functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ARRAY,
    ColumnElement,
    Select,
    SQLColumnExpression,
    String,
    any_,
    bindparam,
    literal_column,
    or_,
    select,
)

from models.states import Provider, Visibility
from models.tables import Image, Instance, Job


@dataclass(frozen=True)
class Caller:
    """An authenticated account acting in one zone, in the request ``request_id``."""

    account_id: str
    zone: str
    request_id: str | None = None


def visible_images(caller: Caller) -> Select[Image]:
    """Images the caller may read: public ones and their own."""
    return select(Image).where(
        Image.zone == caller.zone,
        or_(Image.owner == caller.account_id, Image.visibility == Visibility.PUBLIC.value),
    )


def changeable_images(caller: Caller) -> tuple[ColumnElement[bool], ...]:
    """Images the caller may change: visible, their own, and captured (``provider`` self).

    The conditions of :func:`visible_images` joined with ownership, for a
    compare-and-set update that needs no read first.
    """
    return changeable_image_range(caller.zone, caller.account_id)


def changeable_image_range(
    zone: str | ColumnElement[str], account_id: str | ColumnElement[str]
) -> tuple[ColumnElement[bool], ...]:
    """The rule of :func:`changeable_images` for ``account_id`` in ``zone``, values or
    bound parameters (a statement built once)."""
    return (
        Image.zone == zone,
        Image.owner == account_id,
        Image.provider == Provider.SELF.value,
    )


def visible_image_ranges(
    zone: str | ColumnElement[str], account_id: str | ColumnElement[str]
) -> tuple[ColumnElement[bool], ColumnElement[bool]]:
    """The rule of :func:`visible_images` for the caller ``account_id`` in ``zone``
    (values or bound parameters) as two disjoint ranges: the caller's own
    images, and other owners' public ones.

    Listings read each range from its own index, so a page and its count cost
    the caller's rows and the public rows, never the whole table. ``'public'``
    is a literal, not a parameter: only then can PostgreSQL match the partial
    index on public images in a prepared (generic) plan.
    """
    return (
        (Image.zone == zone) & (Image.owner == account_id),
        (Image.zone == zone) & is_public() & (Image.owner != account_id),
    )


def public_images_in(zone: str | ColumnElement[str]) -> ColumnElement[bool]:
    """Every public image of ``zone``, whoever owns it: with the caller's own images
    that are not public, the visibility rule again, split where a part of a total
    is worth remembering (models/images.py, searches)."""
    return (Image.zone == zone) & is_public()


def is_public() -> ColumnElement[bool]:
    """An image anyone in its zone may see (``'public'`` literal: see above)."""
    public: ColumnElement[str] = literal_column(f"'{Visibility.PUBLIC.value}'")
    return Image.visibility == public


def owned_jobs(caller: Caller) -> Select[Job]:
    return select(Job).where(owned_job_range(caller.zone, caller.account_id))


def owned_job_range(
    zone: str | ColumnElement[str], account_id: str | ColumnElement[str]
) -> ColumnElement[bool]:
    """The jobs of ``account_id`` in ``zone`` (values or bound parameters)."""
    return (Job.zone == zone) & (Job.owner == account_id)


def owned_instances(caller: Caller) -> Select[Instance]:
    return select(Instance).where(Instance.zone == caller.zone, Instance.owner == caller.account_id)


def one_of(column: SQLColumnExpression[Any], name: str, postgresql: bool) -> ColumnElement[bool]:
    """``column`` is one of the list bound as ``name``: ``= ANY(array)`` on PostgreSQL,
    so that a statement compiles once whatever the list's length (models/reads.py);
    an expanding ``IN`` elsewhere."""
    if postgresql:
        return column == any_(bindparam(name, type_=ARRAY(String)))
    return column.in_(bindparam(name, type_=String, expanding=True))
